"""A noise-conditioned classifier energy: ``E(x, sigma | c) = -log p(c | x + sigma * eps)``.

Why: a concept learned on top of frozen ones only has to say what they do not (paper 3.3). Since an
image fixes every attribute, ``p(x | c_1..c_k) = p(x | c_1..c_{k-1}) * p(c_k | x) / p(c_k)``: the new
factor is a classifier of the new attribute, which learns in minutes where the same ratio learned through
denoising score matching stayed near chance (docs/design.md). Its energy is already a ratio
(``E(x | null) = 0``), so it composes with the prior counted once.

Categorical conditions get a softmax over their names, and the energy is ``-log sum_j c_j p_j``: for a
one-hot ``c`` the plain ``-log p(c | x)``, for several names the probability that the image shows one of
them, so NOT is the classifier of the complement ``1 - c``, computed from the logits (``1 - p`` rounds to 0
and loses its gradient exactly where the image shows the forbidden name). Continuous conditions get a
Gaussian with a predicted mean and spread. Max pooling keeps small objects visible (average pooling alone
lost them). No batch norm: the energy of one image must not depend on the rest of the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from conceptlib.schema import ConditionSchema
from conceptlib_nets.layers import FiLMConv, NoiseEmbedding, noise_frequencies, shared_rows


class NoisyClassifierEnergy(nn.Module):
    """Call ``model(x, c, sigma)`` -> ``(B,)`` = ``-log p(c | x)`` at noise ``sigma``.

    ``temperature`` (categorical conditions only; a continuous condition ignores it) softens the softmax:
    training and inference read it at 1, the sampler may read it warmer (see :mod:`conceptlib.scores`).
    """

    noise_conditioned = True
    ratio_only = True
    membership = True
    """A categorical condition may name several values: the energy is ``-log p(one of them | x)``."""
    tempered = True
    """A categorical classifier takes ``temperature``: ``-log softmax(logits / T)[c]`` (the sampler's
    ``--classifier-temperature``)."""

    def __init__(self, schema: ConditionSchema, image_size: int, config: Mapping[str, Any]) -> None:
        super().__init__()
        channels = [int(c) for c in config["channels"]]
        embed = int(config["embed"])
        self.categorical = schema.kind == "categorical"
        self.dim = schema.dim
        self.sigma_data = float(config["sigma_data"])
        self.register_buffer("frequencies", noise_frequencies(embed))
        self.noise_embed = NoiseEmbedding(embed)
        blocks, c_in = [], 3
        for i, width in enumerate(channels):
            blocks.append(FiLMConv(c_in, width, embed, stride=1 if i == 0 else 2))
            blocks.append(FiLMConv(width, width, embed))
            c_in = width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(nn.Linear(2 * c_in, embed), nn.SiLU(),
                                  nn.Linear(embed, self.dim if self.categorical else 2 * self.dim))

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        sigma: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        if sigma is None:
            sigma = torch.full((x.shape[0],), 0.01, device=x.device, dtype=x.dtype)
        e = self.embedding(sigma)
        h = (x - 0.5) / torch.sqrt(sigma**2 + self.sigma_data**2)[:, None, None, None]
        for block in self.blocks:
            h = block(h, e)
        out = self.head(torch.cat([h.amax((2, 3)), h.mean((2, 3))], dim=1))
        if self.categorical:
            logits = out if temperature == 1.0 else out / temperature
            energy = _membership_energy(F.log_softmax(logits, dim=1), c)
        else:
            mean, log_std = out.chunk(2, dim=1)
            log_std = log_std.clamp(-6, 2)
            energy = (0.5 * ((c - mean) / log_std.exp()).pow(2) + log_std).sum(1)
        if keep is not None:
            energy = energy * keep
        return energy

    def embedding(self, sigma: torch.Tensor) -> torch.Tensor:
        """The noise level's embedding; computed once and broadcast when the batch shares one level."""
        if sigma.shape[0] > 1 and shared_rows(sigma):
            return self.embedding(sigma[:1]).expand(sigma.shape[0], -1)
        return self.noise_embed(sigma, self.frequencies)


def _membership_energy(log_p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``-log sum_j c_j p_j`` from log-probabilities, exact for a one-hot ``c``; 0 for an all-zero (null) row.

    Zero weights are masked to ``-inf`` (no ``log 0`` in the graph); a null row is summed over a harmless
    stand-in and then zeroed, so neither its value nor its gradient is NaN.
    """
    named = c > 0
    null = ~named.any(1, keepdim=True)
    weights = torch.where(named, c, torch.ones_like(c))
    terms = torch.where(named | null, log_p + torch.log(weights), torch.full_like(log_p, -torch.inf))
    return torch.where(null[:, 0], torch.zeros_like(log_p[:, 0]), -torch.logsumexp(terms, dim=1))
