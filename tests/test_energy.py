"""Composition semantics (paper eq. 4-10) and the Langevin sampler, on hand-made energies."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conceptlib import expr
from conceptlib.concepts import LoadedConcept
from conceptlib.energy import Term, compose
from conceptlib.errors import ConceptError
from conceptlib.sampling import LangevinConfig, ReplayBuffer, langevin


class Constant(nn.Module):
    """E(x | c) = c[0] + mean(x): easy to reason about."""

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return c[:, 0] + x.flatten(1).mean(1)


def terms_for(node: expr.Node) -> dict[expr.Leaf, Term]:
    concept = LoadedConcept(version=None, model=Constant())  # type: ignore[arg-type]
    return {leaf: Term(concept, torch.tensor([[float(leaf.value)]])) for leaf in expr.leaves(node)}


def energy_of(text: str, temperature: float = 1.0) -> float:
    node = expr.parse(text)
    return float(compose(node, terms_for(node), temperature)(torch.zeros(1, 3, 4, 4))[0])


def test_and_is_the_sum_of_energies():
    assert energy_of("a=1 & b=2 & c=4") == pytest.approx(7.0)


def test_or_is_minus_logsumexp_of_minus_energies():
    assert energy_of("a=1 | b=2") == pytest.approx(-math.log(math.exp(-1) + math.exp(-2)))


def test_or_temperature_scales_the_mixture():
    expected = -0.1 * math.log(math.exp(-1 / 0.1) + math.exp(-2 / 0.1))
    assert energy_of("a=1 | b=2", temperature=0.1) == pytest.approx(expected)


def test_not_negates_and_weights_scale_inside_an_and():
    assert energy_of("a=3 & 0.5*!b=2") == pytest.approx(3 - 1.0)


def test_nested_composition_follows_the_tree():
    inner = -math.log(math.exp(-1) + math.exp(-2))
    assert energy_of("(a=1 | b=2) & 2*c=3") == pytest.approx(inner + 6)


def test_langevin_descends_the_energy_and_stays_in_pixel_range():
    generator = torch.Generator().manual_seed(0)
    target = torch.full((1, 3, 4, 4), 0.25)

    def energy(x: torch.Tensor) -> torch.Tensor:
        return ((x - target) ** 2).flatten(1).sum(1)

    x0 = torch.rand(8, 3, 4, 4, generator=generator)
    x = langevin(energy, x0, LangevinConfig(steps=50, step_size=0.1, noise=0.001), generator)
    assert float(energy(x).mean()) < 0.01 * float(energy(x0).mean())
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_langevin_is_reproducible_with_a_seed():
    def energy(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).sum(1)

    runs = [langevin(energy, torch.full((2, 3, 4, 4), 0.5), LangevinConfig(steps=3, step_size=0.01, noise=0.1),
                     torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_langevin_config_rejects_bad_settings():
    with pytest.raises(ConceptError, match="steps"):
        LangevinConfig(steps=0)
    with pytest.raises(ConceptError, match="init"):
        LangevinConfig(init="buffer?")


def test_replay_buffer_wraps_around_at_capacity():
    buffer = ReplayBuffer(4, (3, 2, 2), torch.device("cpu"))
    buffer.push(torch.zeros(3, 3, 2, 2))
    buffer.push(torch.ones(3, 3, 2, 2))
    assert len(buffer) == 4
    assert int(buffer.images.flatten(1).mean(1).sum()) == 3
    assert buffer.sample(5, torch.Generator().manual_seed(0)).shape == (5, 3, 2, 2)
