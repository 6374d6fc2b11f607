"""The paper's energy networks (A.4, Fig. 17): residual nets with spectral norm, Swish and FiLM.

``paper64`` is Fig. 17a for 64x64 MuJoCo scenes (3x3 conv 64; ResBlock down 64, 128, 128, 256; global
mean pool; dense -> 1); ``paper128`` is Fig. 17c for 128x128 CelebA (3x3 conv 64; ResBlock down 64,
128, 256, 512, 1024; ResBlock 1024; global sum pool; dense -> 1). Both follow Du & Mordatch (2019), the
architecture the paper names: spectral norm on every convolution and the output layer, which bounds how
fast the energy can change with the image and so keeps Langevin steps of size 100 stable (A.5), and
Swish, which the paper found "greatly stabilizes and speeds up training". The condition enters every
residual block as a per-channel scale and shift (FiLM) from an embedding of ``c``.

One addition of this project: a spatial condition (a point on the image plane) is also drawn as a
Gaussian bump map and fed as a fourth input channel, as in the ``small`` net, where position fed only
as a vector did not learn on a 2-core CPU (docs/design.md); ``bump_sigma=0`` turns it off.

These are GPU-sized networks (paper64 holds 1.8 million parameters, paper128 42 million); on a CPU, ``small`` is the
practical choice. Use them with ``--objective cd``: the energy is ``E(x | c)`` with no noise level.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from conceptlib.errors import ConceptError
from conceptlib.schema import ConditionSchema, is_image_point
from conceptlib_nets.configs import POOLS
from conceptlib_nets.layers import bump_map, modulate


class FiLMResBlock(nn.Module):
    """conv -> FiLM -> Swish -> conv -> FiLM, plus a (1x1 conv) skip, Swish, then 2x2 average pooling if ``down``."""

    def __init__(self, c_in: int, c_out: int, embed: int, down: bool) -> None:
        super().__init__()
        self.conv1 = spectral_norm(nn.Conv2d(c_in, c_out, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = spectral_norm(nn.Conv2d(c_in, c_out, 1)) if c_in != c_out else nn.Identity()
        self.film = nn.Linear(embed, 4 * c_out)
        nn.init.zeros_(self.film.weight)  # FiLM starts as the identity: the condition's effect is learned
        nn.init.zeros_(self.film.bias)
        self.down = down

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        scale1, shift1, scale2, shift2 = self.film(e).chunk(4, dim=1)
        out = F.silu(modulate(self.conv1(h), scale1, shift1))
        out = F.silu(modulate(self.conv2(out), scale2, shift2) + self.skip(h))
        return F.avg_pool2d(out, 2) if self.down else out


class PaperEnergyNet(nn.Module):
    """Call ``model(x, c)`` -> energies ``(B,)`` for images ``(B, 3, H, W)`` in [0, 1]."""

    def __init__(self, schema: ConditionSchema, image_size: int, config: Mapping[str, Any]) -> None:
        super().__init__()
        channels = [int(c) for c in config["channels"]]
        embed = int(config["embed"])
        extra = int(config["extra_blocks"])
        downsamplings = len(channels) - 1
        if image_size < 2**downsamplings:
            raise ConceptError(
                f"this network halves the image {downsamplings} times, so image_size must be at least "
                f"{2**downsamplings}; got {image_size} (pass fewer --arch-config channels or a larger image)"
            )
        if config["pool"] not in POOLS:
            raise ConceptError(f"--arch-config pool must be one of {', '.join(POOLS)}; got {config['pool']!r}")
        self.pool = config["pool"]
        self.image_size = image_size
        self.bump_sigma = float(config["bump_sigma"])
        self.spatial = is_image_point(schema) and self.bump_sigma > 0
        self.embed = nn.Sequential(nn.Linear(schema.dim, embed), nn.SiLU(), nn.Linear(embed, embed))
        self.stem = spectral_norm(nn.Conv2d(3 + int(self.spatial), channels[0], 3, padding=1))
        blocks = [FiLMResBlock(c_in, c_out, embed, down=True) for c_in, c_out in pairwise(channels)]
        blocks += [FiLMResBlock(channels[-1], channels[-1], embed, down=False) for _ in range(extra)]
        self.blocks = nn.ModuleList(blocks)
        self.out = spectral_norm(nn.Linear(channels[-1], 1))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = x * 2 - 1
        if self.spatial:
            h = torch.cat([h, bump_map(c, self.image_size, self.bump_sigma) * 2 - 1], dim=1)
        e = self.embed(c)
        h = self.stem(h)
        for block in self.blocks:
            h = block(h, e)
        h = h.sum((2, 3)) if self.pool == "sum" else h.mean((2, 3))
        return self.out(h).squeeze(1)
