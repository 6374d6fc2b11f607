"""A noise-conditioned energy network: ``E(x, sigma, c) = ||x - D(x, sigma, c)||^2 / (2 sigma^2)``.

The energy is parameterised by a small U-Net denoiser ``D`` (Salimans & Ho 2021; Du et al. 2023), so
its input gradient is a score that denoising score matching can train, and the scalar energy itself is
still there for OR (logsumexp), MALA acceptance and inference. ``D`` uses the EDM preconditioning
(Karras et al. 2022) so every noise level sees inputs and targets of unit scale.

Every condition can be dropped per sample (``keep = 0``): a learned null embedding replaces it and a
spatial bump map is zeroed. The null energy is the concept's image prior ``p(x)``, which lets
composition count the prior once: ``E_prior + sum_i w_i (E_i(x | c_i) - E_i(x | null))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from conceptlib.schema import ConditionSchema, is_image_point
from conceptlib_nets.layers import (
    ConditionFeatures,
    FiLMConv,
    NoiseEmbedding,
    bump_map,
    edm_denoise,
    noise_frequencies,
    shared_rows,
)


class DenoisingEnergyNet(nn.Module):
    """U-Net denoiser wrapped as an energy; call ``model(x, c, sigma, keep)`` -> ``(B,)``.

    The U-Net works on 2x2 pixel patches (space-to-depth): a 32x32 scene is a 16x16 grid of 12 channels,
    which nearly halved a training step with more capacity. ``refine`` channels (config; 0 = none) add one
    FiLM convolution at full resolution over the trunk's estimate and the input: the patch trunk left noise
    inside objects that the sampling chain kept as speckle, and ragged outlines decide shape
    (docs/design.md has both measurements).
    """

    noise_conditioned = True

    def __init__(self, schema: ConditionSchema, image_size: int, config: Mapping[str, Any]) -> None:
        super().__init__()
        c0, c1, c2 = (int(c) for c in config["channels"])
        embed = int(config["embed"])
        self.patch = int(config["patch"])
        if image_size % (4 * self.patch):
            raise ValueError(f"image size {image_size} must be a multiple of {4 * self.patch} for this U-Net")
        self.image_size = image_size
        self.sigma_data = float(config["sigma_data"])
        self.bump_sigma = float(config["bump_sigma"])
        self.spatial = is_image_point(schema, more_axes=True)
        self.context = int(config.get("context", 0))
        """Channels read beside ``x``: a residual concept reads its frozen concepts' estimate of ``x`` and their
        template (see conceptlib.residual), so it sees what and where they draw even at high noise."""
        self.residual = bool(config.get("residual", False))
        """Return the correction to the frozen estimate (the first 3 context channels) that makes this network's
        own estimate: ``D - context``. The frozen concepts enter as inputs, not as a term of ``D``: asked about
        data they never saw (a magenta-only prior on a green circle) they err by ~0.03 RMS even at the lowest
        noise, which a correction added to them would have to cancel exactly (measured: stripes and speckle)."""
        self.register_buffer("frequencies", noise_frequencies(embed))
        self.noise_embed = NoiseEmbedding(embed)
        self.condition_features = ConditionFeatures(schema, int(config.get("condition_frequencies", 0)))
        self.condition_embed = nn.Sequential(nn.Linear(self.condition_features.dim, embed), nn.SiLU(),
                                             nn.Linear(embed, embed))
        self.null = nn.Parameter(torch.zeros(embed))
        c_in = (3 + self.context + int(self.spatial)) * self.patch**2
        self.down0 = nn.ModuleList([FiLMConv(c_in, c0, embed), FiLMConv(c0, c0, embed)])
        self.down1 = nn.ModuleList([FiLMConv(c0, c1, embed, stride=2), FiLMConv(c1, c1, embed)])
        self.down2 = nn.ModuleList([FiLMConv(c1, c2, embed, stride=2), FiLMConv(c2, c2, embed)])
        self.up1 = FiLMConv(c2 + c1, c1, embed)
        self.up0 = FiLMConv(c1 + c0, c0, embed)
        self.head = nn.Conv2d(c0, 3 * self.patch**2, 3, padding=1)
        refine = int(config["refine"])
        self.refine = None
        if refine:
            # zero-initialised output: a new network starts as the trunk alone
            self.refine = nn.ModuleList([FiLMConv(3 + 3 + self.context + int(self.spatial), refine, embed),
                                         nn.Conv2d(refine, 3, 3, padding=1)])
            nn.init.zeros_(self.refine[1].weight)
            nn.init.zeros_(self.refine[1].bias)

    def embedding(self, c: torch.Tensor, sigma: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        if sigma.shape[0] > 1 and shared_rows(c, sigma, keep):
            return self.embedding(c[:1], sigma[:1], keep[:1]).expand(sigma.shape[0], -1)
        noise = self.noise_embed(sigma, self.frequencies)
        k = keep[:, None]
        return noise + k * self.condition_embed(self.condition_features(c)) + (1 - k) * self.null[None, :]

    def denoise(self, x: torch.Tensor, c: torch.Tensor, sigma: torch.Tensor, keep: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """``D(x, sigma, c)``: the network's estimate of the clean image.

        A residual network (config ``residual``) reads ``context`` (the frozen concepts' estimate and template)
        and returns the correction ``D - context[:, :3]`` its estimate makes to theirs.
        """
        if self.context and (context is None or context.shape[1] != self.context):
            raise ValueError(f"this network reads a context of {self.context} channels beside x")
        estimate = edm_denoise(x, sigma, self.sigma_data, lambda h: self._trunk(h, c, sigma, keep, context))
        return estimate - context[:, :3] if self.residual else estimate  # type: ignore[index]

    def _trunk(self, h: torch.Tensor, c: torch.Tensor, sigma: torch.Tensor, keep: torch.Tensor,
               context: torch.Tensor | None) -> torch.Tensor:
        """The U-Net on the preconditioned input ``h``: what :func:`edm_denoise` scales into the estimate."""
        if self.context:
            h = torch.cat([h, (context - 0.5) / self.sigma_data], dim=1)  # type: ignore[operator]
        if self.spatial:
            bumps = bump_map(c, self.image_size, self.bump_sigma) * keep[:, None, None, None]
            h = torch.cat([h, bumps * 2 - 1], dim=1)
        pixels = h
        e = self.embedding(c, sigma, keep)
        h = F.pixel_unshuffle(h, self.patch)
        for block in self.down0:
            h = block(h, e)
        h0 = h
        for block in self.down1:
            h = block(h, e)
        h1 = h
        for block in self.down2:
            h = block(h, e)
        h = self.up1(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h1], dim=1), e)
        h = self.up0(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h0], dim=1), e)
        out = F.pixel_shuffle(self.head(h), self.patch)
        if self.refine is not None:
            out = out + self.refine[1](self.refine[0](torch.cat([out, pixels], dim=1), e))
        return out

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, sigma: torch.Tensor | None = None, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        if sigma is None:
            sigma = torch.full((x.shape[0],), 0.01, device=x.device, dtype=x.dtype)
        if keep is None:
            keep = torch.ones(x.shape[0], device=x.device, dtype=x.dtype)
        residual = x - self.denoise(x, c, sigma, keep)
        return residual.pow(2).flatten(1).sum(1) / (2 * sigma**2)
