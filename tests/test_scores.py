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


def test_an_or_over_a_denoiser_prior_samples_each_alternative_as_its_own_composition(toys, monkeypatch):
    """``(pos | 3*pos2) & color``: a quarter of the samples are ``pos & color``, the rest ``pos2 & color``, each
    composed alone with its own rows of the per-sample conditions, put back in the batch's order."""
    import conceptlib.sampling as sampling

    prior, _, color, leaves, terms = toys
    n = 2000
    rows = torch.arange(n, dtype=torch.float32)[:, None]
    terms = {**terms, leaves["color"]: Term(color, rows)}
    composed = []

    def fake_score(node, part_terms, *_, **__):
        composed.append(node)
        is_first = leaves["pos"] in part_terms
        return part_terms[leaves["color"]].condition, is_first

    def fake_sample(score, count, size, *_, **__):
        condition, is_first = score
        assert condition.shape == (count, 1)
        return torch.cat([condition[:, :, None, None].expand(count, 1, size, size),
                          torch.full((count, 2, size, size), float(is_first))], 1)

    monkeypatch.setattr(sampling, "composed_score", fake_score)
    monkeypatch.setattr(sampling, "annealed_sample", fake_sample)
    node = And((Or((leaves["pos"], Weighted(3.0, leaves["pos2"]))), leaves["color"]))
    images = sampling.sample(node, terms, prior, n, 2, options(), torch.Generator().manual_seed(0),
                             torch.device("cpu"))
    assert composed == [And((leaves["pos"], leaves["color"])), And((leaves["pos2"], leaves["color"]))]
    assert torch.equal(images[:, 0, 0, 0], rows[:, 0])  # every sample back at its own row
    assert abs(float(images[:, 1, 0, 0].mean()) - 0.25) < 0.03


def test_or_temperature_evens_out_or_sharpens_the_shares_of_the_alternatives():
    from conceptlib.sampling import mixture_probabilities

    mixture = [(1.0, Leaf("a", 0.0)), (3.0, Leaf("b", 0.0))]
    assert torch.allclose(mixture_probabilities(mixture, 1.0), torch.tensor([0.25, 0.75], dtype=torch.float64))
    hot, cold = mixture_probabilities(mixture, 4.0), mixture_probabilities(mixture, 0.25)
    assert 0.25 < float(hot[0]) < 0.5 and float(cold[0]) < 0.02
    assert torch.allclose(hot, torch.tensor([1.0, 3 ** 0.25], dtype=torch.float64) / (1 + 3 ** 0.25))


def test_an_or_over_an_energy_prior_is_not_split_into_alternatives(toys, monkeypatch):
    import conceptlib.sampling as sampling

    _, _, _, leaves, terms = toys
    energy_prior = concept("pos", ToyDenoiser(1.0), "dsm")
    node = Or((leaves["pos"], leaves["pos2"]))
    seen = []
    monkeypatch.setattr(sampling, "composed_score", lambda node, *_, **__: seen.append(node))
    monkeypatch.setattr(sampling, "annealed_sample",
                        lambda _, count, size, *__, **___: torch.zeros(count, 3, size, size))
    sampling.sample(node, {k: Term(energy_prior, v.condition) for k, v in terms.items()}, energy_prior, 4, 2,
                    options(), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert seen == [node]


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


def test_not_of_a_categorical_denoiser_leaf_is_the_or_of_the_values_it_leaves(toys):
    from dataclasses import replace as replaced

    from conceptlib.expr import Not
    from conceptlib.sampling import as_mixture
    from conceptlib.schema import Categorical

    prior, _, _, leaves, terms = toys
    base = concept("color", ToyDenoiser(0.5), "residual")
    color = LoadedConcept(replaced(base.version, schema=Categorical(("red", "green", "blue"))), base.model)
    red = Leaf("color", "red")
    shared = {**terms, red: Term(color, torch.tensor([[1.0, 0.0, 0.0]]))}
    mixture, rewritten = as_mixture(And((leaves["pos"], Not(red))), shared, prior)
    green, blue = Leaf("color", "green"), Leaf("color", "blue")
    assert mixture == [(1.0, And((leaves["pos"], green))), (1.0, And((leaves["pos"], blue)))]
    assert rewritten[green].condition.tolist() == [[0.0, 1.0, 0.0]]
    # per sample (as `concept eval` asks): the k-th value each row leaves
    asked = Leaf("color", 0.0)
    per_sample = {**terms, asked: Term(color, torch.eye(3)[[0, 2, 1]])}
    mixture, rewritten = as_mixture(And((leaves["pos"], Not(asked))), per_sample, prior)
    firsts, seconds = (rewritten[part.terms[1]].condition.argmax(1).tolist() for _, part in mixture)
    assert firsts == [1, 0, 0] and seconds == [2, 1, 2]
    # a classifier keeps its own complement, and an energy prior samples the NOT as written
    node = And((leaves["pos"], Not(leaves["color"])))
    assert as_mixture(node, terms, prior)[0] == [(1.0, node)]
    energy_prior = concept("pos", ToyDenoiser(1.0), "dsm")
    negated = And((leaves["pos"], Not(red)))
    assert as_mixture(negated, shared, energy_prior)[0] == [(1.0, negated)]


def test_a_not_of_the_priors_own_concept_draws_its_condition_away_from_the_negated_value(toys):
    from conceptlib.expr import Not
    from conceptlib.sampling import NOT_MARGIN, draw_prior_conditions, negated_prior

    prior, _, _, leaves, terms = toys
    node = And((Not(leaves["pos"]), leaves["color"]))
    rest, away = negated_prior(node, terms, prior)
    assert rest == leaves["color"] and len(away) == 1 and torch.equal(away[0], terms[leaves["pos"]].condition)
    # named positively too, or negating another concept: sampled as written
    for kept in (And((leaves["pos2"], Not(leaves["pos"]))), And((leaves["pos"], Not(leaves["size"])))):
        assert negated_prior(kept, terms, prior) == (kept, [])
    generator = torch.Generator().manual_seed(0)
    drawn = draw_prior_conditions(prior, 4000, generator, torch.device("cpu"), away)
    low, high = prior.trained_range()
    assert float((drawn - 0.4).abs().min()) >= NOT_MARGIN * float(high[0] - low[0])
    assert float(drawn.min()) >= low[0] and float(drawn.max()) <= high[0]
    # whatever is left of the range is still drawn uniformly: as many below 0.4 as its share of the room
    below = (0.4 - NOT_MARGIN * (high[0] - low[0]) - low[0]) / ((high[0] - low[0]) * (1 - 2 * NOT_MARGIN))
    assert abs(float((drawn < 0.4).float().mean()) - below) < 0.03


def test_a_chains_residuals_the_expression_does_not_name_are_drawn_per_sample(toys, monkeypatch):
    """``color=red`` over position -> shape -> color: the shape is drawn per sample, not read at null."""
    from types import SimpleNamespace

    import conceptlib.sampling as sampling

    prior = toys[0]
    shape, color = concept("shape", ToyDenoiser(0.3), "residual"), concept("color", ToyDenoiser(0.6), "residual")
    red = Leaf("color", 0.6)
    chain = SimpleNamespace(root=prior, residuals=(shape, color))
    assert sampling.unnamed_residuals(red, {red: Term(color, torch.tensor([[0.6]]))}, chain) == [shape]
    seen = {}

    def fake_score(node, part_terms, prior_, settings, drawn, chain=None, member_conditions=None):
        seen.update(drawn=drawn, members=member_conditions)

    monkeypatch.setattr(sampling, "composed_score", fake_score)
    monkeypatch.setattr(sampling, "annealed_sample",
                        lambda _, count, size, *__, **___: torch.zeros(count, 3, size, size))
    sampling.sample(red, {red: Term(color, torch.tensor([[0.6]]))}, prior, 500, 2, options(),
                    torch.Generator().manual_seed(0), torch.device("cpu"), chain=chain)
    drawn_shapes = seen["members"]["shape"]
    low, high = shape.trained_range()
    assert drawn_shapes.shape == (500, 1) and seen["drawn"].shape == (500, 1)
    assert float(drawn_shapes.min()) >= low[0] and float(drawn_shapes.max()) <= high[0]
    assert float(drawn_shapes.std()) > 0.2 * (high[0] - low[0])  # spread over the range, one per sample
