"""Composition semantics (paper eq. 4-10) and the Langevin sampler, on hand-made energies."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conceptlib import expr
from conceptlib.concepts import LoadedConcept
from conceptlib.energy import Term, compose, compose_noisy
from conceptlib.errors import ConceptError
from conceptlib.expr import And, Leaf, Not
from conceptlib.langevin import langevin
from conceptlib.sampling import draw_prior_conditions, names_prior
from conceptlib.settings import LangevinConfig
from conceptlib.training.replay import ReplayBuffer


class Constant(nn.Module):
    """E(x | c) = c[0] + mean(x): easy to reason about."""

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return c[:, 0] + x.flatten(1).mean(1)


def terms_for(node: expr.Node) -> dict[expr.Leaf, Term]:
    version = SimpleNamespace(hyperparameters={"objective": "cd"})
    concept = LoadedConcept(version=version, model=Constant())  # type: ignore[arg-type]
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


class NoisyToy(torch.nn.Module):
    """A noise-conditioned toy energy with a null condition: E = |x - c|^2 (conditioned) or |x|^2 (null)."""

    noise_conditioned = True

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x, c, sigma, keep=None):
        keep = torch.ones(x.shape[0]) if keep is None else keep
        target = c[:, :1, None, None] * keep[:, None, None, None]
        return (x - target).pow(2).flatten(1).sum(1) / sigma + self.offset


def noisy_concept(name: str, offset: float) -> LoadedConcept:
    from conceptlib.registry import VersionInfo
    from conceptlib.schema import Continuous

    version = VersionInfo(
        concept=name, number=1, created_at=None, schema=Continuous(("v",)), architecture="toy",
        architecture_config={}, source="s", source_params={}, attribute=name, dataset_hash="",
        hyperparameters={"image_size": 2}, seed=0, metrics={}, weights_sha256="", status="ready", lineage=(),
        aliases=(), is_current=True,
    )
    return LoadedConcept(version, NoisyToy(offset))


def test_noisy_and_counts_the_prior_once():
    a, b = noisy_concept("a", 1.0), noisy_concept("b", 5.0)
    la, lb = Leaf("a", 0.5), Leaf("b", 0.2)
    terms = {la: Term(a, torch.tensor([[0.5]])), lb: Term(b, torch.tensor([[0.2]]))}
    x, sigma = torch.rand(3, 1, 2, 2), torch.full((3,), 0.5)
    energy = compose_noisy(And((la, lb)), terms, prior=a)(x, sigma)
    null_a = a.model(x, torch.zeros(3, 1), sigma, torch.zeros(3))
    ratio = lambda c, leaf: c.model(x, terms[leaf].condition.expand(3, -1), sigma) - c.model(  # noqa: E731
        x, terms[leaf].condition.expand(3, -1), sigma, torch.zeros(3))
    assert torch.allclose(energy, null_a + ratio(a, la) + ratio(b, lb))


def test_noisy_guidance_scales_each_ratio_and_not_applies_to_the_ratio():
    a, b = noisy_concept("a", 1.0), noisy_concept("b", 5.0)
    la, lb = Leaf("a", 0.5), Leaf("b", 0.2)
    terms = {la: Term(a, torch.tensor([[0.5]])), lb: Term(b, torch.tensor([[0.2]]))}
    x, sigma = torch.rand(3, 1, 2, 2), torch.full((3,), 0.5)
    null_a = a.model(x, torch.zeros(3, 1), sigma, torch.zeros(3))

    def ratio(c, leaf):
        cond = terms[leaf].condition.expand(3, -1)
        return c.model(x, cond, sigma) - c.model(x, cond, sigma, torch.zeros(3))

    guided = compose_noisy(And((la, Not(lb))), terms, prior=a, guidance=2.0)(x, sigma)
    assert torch.allclose(guided, null_a + 2 * ratio(a, la) - 2 * ratio(b, lb))


def test_the_prior_is_named_only_by_positive_leaves():
    a, b = noisy_concept("a", 1.0), noisy_concept("b", 5.0)
    la, lb = Leaf("a", 0.5), Leaf("b", 0.2)
    terms = {la: Term(a, torch.tensor([[0.5]])), lb: Term(b, torch.tensor([[0.2]]))}
    assert names_prior(And((la, lb)), terms, a)
    assert not names_prior(And((Not(la), lb)), terms, a)
    assert not names_prior(lb, terms, a)


def test_a_drawn_prior_condition_replaces_the_null_energy():
    a, b = noisy_concept("a", 1.0), noisy_concept("b", 5.0)
    lb = Leaf("b", 0.2)
    terms = {lb: Term(b, torch.tensor([[0.2]]))}
    drawn = draw_prior_conditions(a, 3, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert drawn.shape == (3, 1) and bool(((drawn >= 0) & (drawn <= 1)).all())
    x, sigma = torch.rand(3, 1, 2, 2), torch.full((3,), 0.5)
    energy = compose_noisy(lb, terms, prior=a, prior_condition=drawn)(x, sigma)
    cond = terms[lb].condition.expand(3, -1)
    expected = a.model(x, drawn, sigma) + b.model(x, cond, sigma) - b.model(x, cond, sigma, torch.zeros(3))
    assert torch.allclose(energy, expected)
