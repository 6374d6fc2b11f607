"""Score-space composition for a denoiser prior, checked against hand-written formulas on toy networks."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from conceptlib.annealed import energy_scores
from conceptlib.concepts import LoadedConcept
from conceptlib.energy import Term, compose_noisy
from conceptlib.errors import ConceptError
from conceptlib.expr import And, Leaf, Not, Or, Weighted
from conceptlib.registry import VersionInfo
from conceptlib.schema import Continuous
from conceptlib.scores import CLASSIFIER_SIGMA, composed_score
from conceptlib.settings import PLAIN, AnnealedConfig, ClassifierBoost, SamplerSettings


class ToyDenoiser(nn.Module):
    """``D = 0.5 tanh(x) + keep * scale * c``: nonlinear in x, so a gradient through D is not trivial."""

    noise_conditioned = True

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def denoise(self, x, c, sigma, keep):
        return 0.5 * torch.tanh(x) + (keep * self.scale * c[:, 0])[:, None, None, None]

    def forward(self, x, c, sigma=None, keep=None):
        keep = torch.ones(x.shape[0]) if keep is None else keep
        sigma = torch.full((x.shape[0],), 0.1) if sigma is None else sigma
        return (x - self.denoise(x, c, sigma, keep)).pow(2).flatten(1).sum(1) / (2 * sigma**2)


class ToyClassifier(nn.Module):
    """``-log p(c | x)`` stand-in: squared distance of the image's mean to c, scaled by the noise level."""

    noise_conditioned = True
    ratio_only = True

    def forward(self, x, c, sigma=None, keep=None):
        return (x.flatten(1).mean(1) - c[:, 0]).pow(2) * (1 + sigma)


def concept(name: str, model: nn.Module, objective: str) -> LoadedConcept:
    version = VersionInfo(
        concept=name, number=1, created_at=None, schema=Continuous(("v",)), architecture="toy",
        architecture_config={}, source="s", source_params={}, attribute=name, dataset_hash="",
        hyperparameters={"image_size": 2, "objective": objective}, seed=0, metrics={}, weights_sha256="",
        status="ready", lineage=(), aliases=(), is_current=True,
    )
    return LoadedConcept(version, model)


def options(or_temperature: float = 1.0, corrector: str = "ula", **guidance: object) -> SamplerSettings:
    """The plain product (guidance 1, no boost, classifier temperature 1) with ``guidance`` fields changed."""
    return SamplerSettings(annealed=AnnealedConfig(corrector=corrector), guidance=replace(PLAIN, **guidance),
                           or_temperature=or_temperature)


N = 3
X = torch.randn(N, 1, 2, 2, generator=torch.Generator().manual_seed(0))
SIGMA = torch.full((N,), 0.3)
S2 = 0.3**2
ZEROS, ONES = torch.zeros(N), torch.ones(N)


@pytest.fixture
def toys():
    prior = concept("pos", ToyDenoiser(1.0), "denoiser")
    other = concept("size", ToyDenoiser(-0.7), "denoiser")
    color = concept("color", ToyClassifier(), "classifier")
    leaves = {"pos": Leaf("pos", 0.4), "pos2": Leaf("pos", 0.9), "size": Leaf("size", 0.2), "color": Leaf("color", 0.6)}
    terms = {leaves["pos"]: Term(prior, torch.tensor([[0.4]])), leaves["pos2"]: Term(prior, torch.tensor([[0.9]])),
             leaves["size"]: Term(other, torch.tensor([[0.2]])), leaves["color"]: Term(color, torch.tensor([[0.6]]))}
    return prior, other, color, leaves, terms


def d(toy: LoadedConcept, value: float | None) -> torch.Tensor:
    c = torch.full((N, 1), 0.0 if value is None else value)
    return toy.model.denoise(X, c, SIGMA, ZEROS if value is None else ONES)


def classifier_grad(color: LoadedConcept, prior: LoadedConcept, reading: float | None, value: float) -> torch.Tensor:
    """``grad_x E_cls(D_prior(x))``, computed here independently of the module under test."""
    x = X.clone().requires_grad_(True)
    c = torch.full((N, 1), 0.0 if reading is None else reading)
    estimate = prior.model.denoise(x, c, SIGMA, ZEROS if reading is None else ONES)
    energy = color.model(estimate, torch.full((N, 1), value), torch.full((N,), CLASSIFIER_SIGMA))
    (grad,) = torch.autograd.grad(energy.sum(), x)
    return grad


def test_a_named_prior_is_classifier_free_guidance(toys):
    prior, _, _, leaves, terms = toys
    score, energy = composed_score(leaves["pos"], terms, prior, options(scale=2.0))(X, SIGMA)
    expected = (d(prior, None) + 2.0 * (d(prior, 0.4) - d(prior, None)) - X) / S2
    assert energy is None
    assert torch.allclose(score, expected, atol=1e-5)


def test_a_classifier_reads_the_prior_estimate_at_the_named_condition(toys):
    prior, _, color, leaves, terms = toys
    node = And((leaves["pos"], leaves["color"]))
    score, _ = composed_score(node, terms, prior, options(scale=2.0, classifier=3.0))(X, SIGMA)
    guided = (d(prior, None) + 2.0 * (d(prior, 0.4) - d(prior, None)) - X) / S2
    assert torch.allclose(score, guided - 3.0 * classifier_grad(color, prior, 0.4, 0.6), atol=1e-5)


@pytest.mark.parametrize("prior_guidance", [1.0, 2.0])
def test_a_drawn_prior_condition_is_followed_at_its_own_guidance_and_read_by_the_classifier(toys, prior_guidance):
    """The drawn condition is not asked for: ``guidance`` (2 here) must not sharpen it, ``prior_guidance`` does."""
    prior, _, color, leaves, terms = toys
    drawn = torch.tensor([[0.1], [0.5], [0.8]])
    settings = options(scale=2.0, classifier=3.0, prior=prior_guidance)
    score, _ = composed_score(leaves["color"], terms, prior, settings, prior_condition=drawn)(X, SIGMA)
    at_drawn = prior.model.denoise(X, drawn, SIGMA, ONES)
    base = d(prior, None) + prior_guidance * (at_drawn - d(prior, None))
    x = X.clone().requires_grad_(True)
    energy = color.model(prior.model.denoise(x, drawn, SIGMA, ONES), torch.full((N, 1), 0.6),
                         torch.full((N,), CLASSIFIER_SIGMA))
    (grad,) = torch.autograd.grad(energy.sum(), x)
    assert torch.allclose(score, (base - X) / S2 - 3.0 * grad, atol=1e-5)


def test_beside_a_not_of_the_prior_the_drawn_condition_follows_the_guidance_of_the_not(toys):
    """``!pos & color``: the drawn leaf is guided like the negated one, so their null scores cancel."""
    prior, _, color, leaves, terms = toys
    drawn = torch.tensor([[0.1], [0.5], [0.8]])
    node = And((Not(leaves["pos2"]), leaves["color"]))
    settings = options(scale=2.0, classifier=3.0, prior=1.0)
    score, _ = composed_score(node, terms, prior, settings, prior_condition=drawn)(X, SIGMA)
    at_drawn, null = prior.model.denoise(X, drawn, SIGMA, ONES), d(prior, None)
    drawn_leaf = null + 2.0 * (at_drawn - null)
    negated = -2.0 * (d(prior, 0.9) - null)  # NOT of the guided ratio w (s(x | c) - s(x | null))
    x = X.clone().requires_grad_(True)
    energy = color.model(prior.model.denoise(x, drawn, SIGMA, ONES), torch.full((N, 1), 0.6),
                         torch.full((N,), CLASSIFIER_SIGMA))
    (grad,) = torch.autograd.grad(energy.sum(), x)
    assert torch.allclose(score, (drawn_leaf + negated - X) / S2 - 3.0 * grad, atol=1e-5)


def test_without_a_prior_condition_the_classifier_reads_the_null_estimate(toys):
    prior, _, color, leaves, terms = toys
    score, _ = composed_score(leaves["color"], terms, prior, options(classifier=2.0))(X, SIGMA)
    expected = (d(prior, None) - X) / S2 - 2.0 * classifier_grad(color, prior, None, 0.6)
    assert torch.allclose(score, expected, atol=1e-5)


@pytest.mark.parametrize(("sigma", "factor"), [(0.6, 1.0), (0.3, 1.0), (0.1, 3.0), (0.01, 8.0)])
def test_a_classifier_boost_scales_classifier_guidance_by_below_over_sigma_up_to_its_max(toys, sigma, factor):
    """``w(sigma) = w clamp(0.3 / sigma, 1, 8)`` on classifier leaves only; the prior's score is untouched."""
    prior, _, color, leaves, terms = toys
    node = And((leaves["pos"], leaves["color"]))
    level = torch.full((N,), sigma)
    boosted, _ = composed_score(node, terms, prior, options(classifier=2.0, boost=ClassifierBoost(0.3, 8.0)))(X, level)
    plain, _ = composed_score(node, terms, prior, options(classifier=2.0))(X, level)
    x = X.clone().requires_grad_(True)
    estimate = prior.model.denoise(x, torch.full((N, 1), 0.4), level, ONES)
    (grad,) = torch.autograd.grad(color.model(estimate, torch.full((N, 1), 0.6), torch.full((N,), CLASSIFIER_SIGMA))
                                  .sum(), x)
    prior_only = (prior.model.denoise(X, torch.full((N, 1), 0.4), level, ONES) - X) / sigma**2
    assert grad.abs().max() > 1e-3
    assert torch.allclose(boosted, prior_only - 2.0 * factor * grad, atol=1e-4)
    assert torch.allclose(plain, prior_only - 2.0 * grad, atol=1e-4)


def test_a_boosted_not_of_a_categorical_classifier_scales_like_its_leaf(toys):
    """The complement is asked with the same per-level weight as the leaf it negates."""
    prior, _, _, leaves, terms = toys
    model = ToyMembership()
    shape = concept("shape", model, "classifier")
    leaf = Leaf("shape", "a")
    terms = {**terms, leaf: Term(shape, torch.tensor([[1.0, 0.0]]))}
    level = torch.full((N,), 0.05)
    settings = options(classifier=3.0, boost=ClassifierBoost(0.3, 4.0))
    score, _ = composed_score(And((leaves["pos"], Not(leaf))), terms, prior, settings)(X, level)
    x = X.clone().requires_grad_(True)
    estimate = prior.model.denoise(x, torch.full((N, 1), 0.4), level, ONES)
    (grad,) = torch.autograd.grad(model(estimate, torch.tensor([[0.0, 1.0]]).expand(N, -1)).sum(), x)
    prior_only = (prior.model.denoise(X, torch.full((N, 1), 0.4), level, ONES) - X) / 0.05**2
    assert torch.allclose(score, prior_only - 3.0 * 4.0 * grad, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(("below", "most"), [(0.0, 8.0), (-0.1, 8.0), (0.3, 0.5)])
def test_a_classifier_boost_refuses_settings_it_cannot_mean(below, most):
    with pytest.raises(ConceptError, match="classifier boost"):
        ClassifierBoost(below, most)


def test_or_mixes_the_modes_by_their_denoising_energies(toys):
    prior, _, _, leaves, terms = toys
    node = Or((leaves["pos"], leaves["pos2"]))
    score, _ = composed_score(node, terms, prior, options(scale=1.5, or_temperature=0.5))(X, SIGMA)
    null = d(prior, None)
    energies, grads = [], []
    for value in (0.4, 0.9):
        conditioned = d(prior, value)
        e = ((X - conditioned).pow(2) - (X - null).pow(2)).flatten(1).sum(1) / (2 * S2)
        energies.append(1.5 * e)
        grads.append(-1.5 * (conditioned - null) / S2)
    weights = torch.softmax(-torch.stack(energies) / 0.5, dim=0)
    mixed = sum(weights[i][:, None, None, None] * grads[i] for i in range(2))
    assert not torch.allclose(weights[0], weights[1])  # the test would not tell a plain average apart otherwise
    assert torch.allclose(score, (null - X) / S2 - mixed, atol=1e-5)


def test_not_and_weights_act_on_a_denoiser_leaf(toys):
    prior, other, _, leaves, terms = toys
    node = And((leaves["pos"], Not(Weighted(0.5, leaves["size"]))))
    score, _ = composed_score(node, terms, prior, options())(X, SIGMA)
    expected = (d(prior, 0.4) - X) / S2 - 0.5 * (d(other, 0.2) - d(other, None)) / S2
    assert torch.allclose(score, expected, atol=1e-5)


def test_mala_is_refused_for_a_denoiser_prior(toys):
    prior, _, _, leaves, terms = toys
    with pytest.raises(ConceptError, match="MALA corrector needs an energy"):
        composed_score(leaves["pos"], terms, prior, options(corrector="mala"))


def test_an_energy_prior_scales_classifier_leaves_by_their_own_guidance(toys):
    _, _, _, leaves, terms = toys
    energy_prior = concept("pos", ToyDenoiser(1.0), "dsm")
    mixed_terms = {leaves["pos"]: Term(energy_prior, torch.tensor([[0.4]])), leaves["color"]: terms[leaves["color"]]}
    node = And((leaves["pos"], leaves["color"]))
    score, energy = composed_score(node, mixed_terms, energy_prior, options(scale=2.0, classifier=5.0))(X, SIGMA)
    reference = energy_scores(compose_noisy(And((leaves["pos"], Weighted(2.5, leaves["color"]))), mixed_terms,
                                            energy_prior, 2.0))(X, SIGMA)
    assert energy is not None
    assert torch.allclose(score, reference[0], atol=1e-5)


def test_drawn_branches_make_each_sample_follow_one_part_of_a_top_level_or(toys):
    from conceptlib.sampling import draw_branches

    prior, _, _, leaves, terms = toys
    node = Or((leaves["pos"], leaves["pos2"]))
    branches = torch.tensor([1, 0, 1])
    score, _ = composed_score(node, terms, prior, options(scale=1.5), branches=branches)(X, SIGMA)
    null = d(prior, None)
    parts = [(null - X) / S2 + 1.5 * (d(prior, value) - null) / S2 for value in (0.4, 0.9)]
    for i, b in enumerate(branches.tolist()):
        assert torch.allclose(score[i], parts[b][i], atol=1e-5)
    generator = torch.Generator().manual_seed(0)
    drawn = draw_branches(node, prior, 1000, generator, torch.device("cpu"))
    assert set(drawn.tolist()) == {0, 1} and abs(float(drawn.float().mean()) - 0.5) < 0.06
    assert draw_branches(And((leaves["pos"], leaves["color"])), prior, 4, generator, torch.device("cpu")) is None
    assert draw_branches(node, concept("pos", ToyDenoiser(1.0), "dsm"), 4, generator, torch.device("cpu")) is None


class ToyCategorical(nn.Module):
    """``-log softmax(logits)[c]`` over two values, the logits a smooth function of the image."""

    noise_conditioned = True
    ratio_only = True
    categorical = True

    def forward(self, x, c, sigma=None, keep=None):
        m = x.flatten(1).mean(1)
        logits = torch.stack([2 * m, -m + 0.3], dim=1)
        return -(torch.log_softmax(logits, dim=1) * c).sum(1)


def test_not_of_a_categorical_classifier_is_the_classifier_of_the_complement(toys):
    prior, _, _, leaves, terms = toys
    shape = concept("shape", ToyCategorical(), "classifier")
    leaf = Leaf("shape", "b")
    terms = {**terms, leaf: Term(shape, torch.tensor([[0.0, 1.0]]))}
    node = And((leaves["pos"], Not(leaf)))
    score, _ = composed_score(node, terms, prior, options(classifier=3.0))(X, SIGMA)
    x = X.clone().requires_grad_(True)
    estimate = prior.model.denoise(x, torch.full((N, 1), 0.4), SIGMA, ONES)
    p = torch.exp(-shape.model(estimate, torch.tensor([[0.0, 1.0]]).expand(N, -1)))
    (grad,) = torch.autograd.grad((-3.0 * torch.log1p(-p)).sum(), x, retain_graph=True)  # -w log(1 - p(c | D(x)))
    expected = (d(prior, 0.4) - X) / S2 - grad
    assert torch.allclose(score, expected, atol=1e-5)
    plain_negation = (d(prior, 0.4) - X) / S2 + 3.0 * torch.autograd.grad(
        -torch.log(p).sum(), x, retain_graph=True)[0]
    assert not torch.allclose(score, plain_negation, atol=1e-3)  # the bounded form differs from -E


class ToyMembership(nn.Module):
    """A categorical classifier that reads a set of names, ``-log sum_j c_j p_j``, and is sure of name "a"."""

    noise_conditioned = True
    ratio_only = True
    categorical = True
    membership = True

    def forward(self, x, c, sigma=None, keep=None):
        m = x.flatten(1).mean(1)
        logits = torch.stack([60 + m, -m], dim=1)  # p(a) rounds to 1 in float32
        return -torch.logsumexp(torch.log_softmax(logits, dim=1) + torch.log(c), dim=1)


@pytest.mark.parametrize("membership", [True, False])
def test_not_of_a_sure_categorical_classifier_still_pushes_away(toys, membership):
    """Where the image shows the forbidden name for certain, ``1 - p`` rounds to 0; asking the network for the
    complement keeps the gradient that the rescaled ``-log p`` loses (the fallback, without membership)."""
    prior, _, _, leaves, terms = toys
    model = ToyMembership()
    model.membership = membership
    shape = concept("shape", model, "classifier")
    leaf = Leaf("shape", "a")
    terms = {**terms, leaf: Term(shape, torch.tensor([[1.0, 0.0]]))}
    score, _ = composed_score(And((leaves["pos"], Not(leaf))), terms, prior, options(classifier=3.0))(X, SIGMA)
    x = X.clone().requires_grad_(True)
    estimate = prior.model.denoise(x, torch.full((N, 1), 0.4), SIGMA, ONES)
    not_a = model(estimate, torch.tensor([[0.0, 1.0]]).expand(N, -1))
    (grad,) = torch.autograd.grad(3.0 * not_a.sum(), x)  # -w log p(b | D(x)): the complement of "a"
    prior_only = (d(prior, 0.4) - X) / S2
    assert grad.abs().max() > 1e-3
    if membership:
        assert torch.allclose(score, prior_only - grad, atol=1e-5)
    else:
        assert torch.allclose(score, prior_only, atol=1e-6)  # what the NOT did before: nothing


def test_not_of_a_continuous_classifier_negates_its_energy(toys):
    prior, _, color, leaves, terms = toys
    node = And((leaves["pos"], Not(leaves["color"])))
    score, _ = composed_score(node, terms, prior, options(classifier=2.0))(X, SIGMA)
    expected = (d(prior, 0.4) - X) / S2 + 2.0 * classifier_grad(color, prior, 0.4, 0.6)
    assert torch.allclose(score, expected, atol=1e-5)


class ToyTempered(ToyMembership):
    """A categorical classifier sure of name "a" (``p(b) ~ e^-8``) that takes a softmax temperature."""

    tempered = True

    def forward(self, x, c, sigma=None, keep=None, temperature=1.0):
        m = x.flatten(1).mean(1)
        logits = torch.stack([8 + m, -m], dim=1) / temperature
        return -torch.logsumexp(torch.log_softmax(logits, dim=1) + torch.log(c), dim=1)


def tempered_terms(toys, model):
    prior, _, _, leaves, terms = toys
    leaf = Leaf("shape", "a")
    return prior, leaves, leaf, {**terms, leaf: Term(concept("shape", model, "classifier"), torch.tensor([[1.0, 0.0]]))}


def test_a_warmer_categorical_classifier_keeps_pulling_once_it_is_sure(toys):
    """At T = 2 the leaf is ``-w log softmax(logits / 2)[c]`` through ``D(x)``; at T = 1, sure of "a", it has
    all but stopped pulling (``p(a) - 1 ~ e^-8``), warmer it pulls ~e^4 / 2 times harder."""
    model = ToyTempered()
    prior, leaves, leaf, terms = tempered_terms(toys, model)
    node = And((leaves["pos"], leaf))
    prior_only = (d(prior, 0.4) - X) / S2
    pulls = {}
    for temperature in (1.0, 2.0):
        settings = options(classifier=3.0, classifier_temperature=temperature)
        score, _ = composed_score(node, terms, prior, settings)(X, SIGMA)
        x = X.clone().requires_grad_(True)
        estimate = prior.model.denoise(x, torch.full((N, 1), 0.4), SIGMA, ONES)
        energy = model(estimate, torch.tensor([[1.0, 0.0]]).expand(N, -1), temperature=temperature)
        (grad,) = torch.autograd.grad(3.0 * energy.sum(), x)
        assert torch.allclose(score, prior_only - grad, atol=1e-6)
        pulls[temperature] = grad.abs().max().item()
    assert pulls[2.0] > 10 * pulls[1.0] > 0


def test_a_classifier_temperature_leaves_continuous_classifiers_alone(toys):
    prior, _, _, leaves, terms = toys
    node = And((leaves["pos"], leaves["color"]))
    warm, _ = composed_score(node, terms, prior, options(classifier=2.0, classifier_temperature=2.0))(X, SIGMA)
    plain, _ = composed_score(node, terms, prior, options(classifier=2.0))(X, SIGMA)
    assert torch.equal(warm, plain)


def test_a_classifier_that_takes_no_temperature_is_refused_only_when_one_is_asked(toys):
    prior, leaves, leaf, terms = tempered_terms(toys, ToyMembership())
    node = And((leaves["pos"], leaf))
    composed_score(node, terms, prior, options(classifier_temperature=1.0))(X, SIGMA)
    with pytest.raises(ConceptError, match=r"shape@1 \(toy\) cannot be read at a softmax temperature; "
                                           r"use --classifier-temperature 1"):
        composed_score(node, terms, prior, options(classifier_temperature=2.0))
    with pytest.raises(ConceptError, match="--classifier-temperature must be positive"):
        composed_score(node, terms, prior, options(classifier_temperature=0.0))


def test_the_shipped_classifier_net_reads_its_logits_at_the_temperature():
    from conceptlib.schema import Categorical
    from conceptlib_nets import CLASSIFIER_CONFIG
    from conceptlib_nets.classifier import NoisyClassifierEnergy

    torch.manual_seed(0)
    net = NoisyClassifierEnergy(Categorical(("a", "b", "c")), 8, CLASSIFIER_CONFIG).eval()
    for layer in net.head:  # the output layer starts at zero: give the logits something to say
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight)
    x, sigma = torch.rand(4, 3, 8, 8), torch.full((4,), 0.05)
    c = torch.eye(3)[[0, 1, 2, 0]]
    with torch.no_grad():
        plain, warm = net(x, c, sigma), net(x, c, sigma, temperature=2.0)
        logits = -torch.stack([net(x, torch.eye(3)[[k] * 4], sigma) for k in range(3)], 1)  # log p up to a constant
    expected = -torch.log_softmax(logits / 2, dim=1)[torch.arange(4), c.argmax(1)]
    assert torch.allclose(warm, expected, atol=1e-5)
    assert not torch.allclose(warm, plain)
