"""Layers the first-party networks share: a FiLM-conditioned convolution, the noise-level embedding, and
the EDM preconditioning of a denoiser.

Parameter names are part of every stored version's weights, so these layers keep the names the networks
had when they were written inline.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from conceptlib.schema import ConditionSchema, Continuous, is_image_point


def bump_map(points: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """A point condition drawn as an image: Gaussian bumps ``(B, 1, size, size)`` centred at ``points``
    ((x, y) in [0, 1]). Fed as a channel, position learned in ~150 iterations; as constant planes it never did."""
    axis = (torch.arange(size, device=points.device, dtype=points.dtype) + 0.5) / size
    dx = (axis[None, None, :] - points[:, 0, None, None]) ** 2
    dy = (axis[None, :, None] - points[:, 1, None, None]) ** 2
    return torch.exp(-(dx + dy) / (2 * sigma**2)).unsqueeze(1)


def modulate(h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """FiLM: ``h * (1 + scale) + shift`` per channel, ``scale`` and ``shift`` ``(B, C)`` (identity at zero)."""
    return h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class FiLMConv(nn.Module):
    """conv -> FiLM(embedding) -> SiLU; ``stride`` 2 halves the resolution.

    Plain blocks: on a CPU the cost of a training step is the convolutions run three times (forward, input
    gradient, its parameter gradient), so every layer counts. ``kaiming`` initialises the convolution for
    ReLU-like activations (``small``: with PyTorch's default, image differences shrank ~800x through the
    layers and the input gradient started near 1e-4 per pixel). FiLM starts as the identity.
    """

    def __init__(self, c_in: int, c_out: int, embed: int, stride: int = 1, kaiming: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.film = nn.Linear(embed, 2 * c_out)
        if kaiming:
            nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")
            nn.init.zeros_(self.conv.bias)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        if e.stride(0) == 0 and not self.conv.weight.requires_grad:  # one embedding for the batch: fold FiLM
            scale, shift = self.film(e[:1]).chunk(2, dim=1)
            gain = 1 + scale[0]
            weight = (self.conv.weight * gain[:, None, None, None]).contiguous(memory_format=_layout(self.conv.weight))
            return F.silu(F.conv2d(h, weight, self.conv.bias * gain + shift[0], self.conv.stride, self.conv.padding))
        scale, shift = self.film(e).chunk(2, dim=1)
        return F.silu(modulate(self.conv(h), scale, shift))


def _layout(weight: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def shared_rows(*tensors: torch.Tensor) -> bool:
    """True when every tensor has the same value in every row (sampling: one noise level, one condition).

    Networks then compute their embedding once and broadcast it (stride 0), which lets frozen
    :class:`FiLMConv` blocks fold FiLM into their convolutions instead of two passes over activations.
    """
    return all(t.shape[0] == 1 or torch.equal(t, t[:1].expand_as(t)) for t in tensors)


def noise_frequencies(embed: int) -> torch.Tensor:
    """The fixed random frequencies of :class:`NoiseEmbedding` (a buffer named ``frequencies`` in the network
    that owns it, so it travels with the weights)."""
    return torch.randn(embed // 2, generator=torch.Generator().manual_seed(0)) * 4


class NoiseEmbedding(nn.Sequential):
    """The noise level ``sigma`` ``(B,)`` as random Fourier features of ``log sigma``, through a small MLP."""

    def __init__(self, embed: int) -> None:
        super().__init__(nn.Linear(embed, embed), nn.SiLU(), nn.Linear(embed, embed))

    def forward(self, sigma: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        angles = (torch.log(sigma) / 4)[:, None] * frequencies[None, :] * 2 * math.pi
        return super().forward(torch.cat([angles.cos(), angles.sin()], dim=1))


class ConditionFeatures(nn.Module):
    """What a condition vector looks like to the embedding MLP: Fourier features of its scalar axes.

    A scalar such as ``size`` spans a few hundredths of its schema and, fed raw into a linear layer, moves
    the embedding too little to be learned (a residual size concept so trained ignored size; docs/design.md).
    Each scalar axis is scaled from its schema range to ``u`` in [0, 1] and sent as ``2u - 1, sin(2^k pi u),
    cos(2^k pi u)``, k < ``frequencies``. Axes of an image point (drawn as a bump map) and categorical one-hots
    pass through unchanged, as does everything when ``frequencies`` is 0 (networks stored before this existed).
    """

    def __init__(self, schema: ConditionSchema, frequencies: int) -> None:
        super().__init__()
        self.low, self.span = 0.0, 1.0
        if not isinstance(schema, Continuous) or frequencies == 0:
            self.passed = schema.dim
        else:
            self.passed = 2 if is_image_point(schema, more_axes=True) else 0
            self.low, self.span = schema.low, (schema.high - schema.low) or 1.0
        self.register_buffer("octaves", (2.0 ** torch.arange(frequencies)) * math.pi, persistent=False)
        self.dim = self.passed + (schema.dim - self.passed) * (1 + 2 * frequencies)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        if self.passed == c.shape[1]:
            return c
        u = (c[:, self.passed:] - self.low) / self.span
        angles = (u[:, :, None] * self.octaves).flatten(1)
        return torch.cat([c[:, : self.passed], u * 2 - 1, angles.sin(), angles.cos()], dim=1)


def edm_denoise(x: torch.Tensor, sigma: torch.Tensor, sigma_data: float,
                network: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``D(x) = 0.5 + c_skip (x - 0.5) + c_out F(c_in (x - 0.5))`` (Karras et al. 2022, EDM preconditioning):
    every noise level gives the ``network`` F inputs and targets of unit scale."""
    s = sigma[:, None, None, None]
    total = s**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = s * sigma_data / total.sqrt()
    c_in = 1 / total.sqrt()
    out = network((x - 0.5) * c_in)  # before the skip term: autograd then sums the gradients in the same order
    return 0.5 + c_skip * (x - 0.5) + c_out * out
