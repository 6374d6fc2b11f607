"""Fast evaluation of frozen concepts gives the plain networks' energies and input gradients."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conceptlib import batched, expr
from conceptlib.concepts import LoadedConcept
from conceptlib.energy import Term, compose, compose_noisy
from conceptlib.langevin import langevin
from conceptlib.plugins import PluginManager
from conceptlib.registry import VersionRef
from conceptlib.settings import LangevinConfig

TINY = {"channels": [8, 8, 8], "embed": 16}
SIZE = 16
VALUES = {"position": (0.3, 0.7), "color": "red", "shape": "square", "size": 0.12}


@pytest.fixture(scope="module")
def plugins() -> PluginManager:
    return PluginManager()


def frozen(plugins: PluginManager, architecture: str, attribute: str, seed: int = 0, **config: object) -> LoadedConcept:
    """A tiny frozen network with every weight random (zero-initialised layers would make E constant)."""
    schema = plugins.source("scenes").attributes({})[attribute]
    torch.manual_seed(seed)
    model = plugins.architecture(architecture).build(schema, SIZE, {**TINY, **config})
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.2)
    version = SimpleNamespace(ref=VersionRef(f"{attribute}-{architecture}", seed), schema=schema, concept=attribute,
                              hyperparameters={})
    return LoadedConcept(version, model.eval().requires_grad_(False))  # type: ignore[arg-type]


def energy_and_gradient(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    energy = fn(x)
    (gradient,) = torch.autograd.grad(energy.sum(), x)
    return energy.detach(), gradient


def assert_same(fast: tuple[torch.Tensor, torch.Tensor], plain: tuple[torch.Tensor, torch.Tensor]) -> None:
    for a, b in zip(fast, plain):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (a - b).abs().max()


def images(n: int = 9) -> torch.Tensor:
    return torch.rand((n, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("attribute", ["position", "color", "size"])
def test_small_net_specialised_to_a_condition_equals_its_forward(plugins, attribute):
    concept = frozen(plugins, "small", attribute)
    c = concept.condition(VALUES[attribute], torch.device("cpu"))
    specialised = concept.model.for_condition(c)
    x = images()
    assert_same(energy_and_gradient(specialised, x),
                energy_and_gradient(lambda z: concept.model(z, c.expand(z.shape[0], -1)), x))


@pytest.mark.parametrize("attribute", ["position", "color"])
@pytest.mark.parametrize("size", [32, 64])
def test_specialised_small_net_hand_written_gradient_equals_autograd_at_full_depth(plugins, attribute, size):
    """3 and 4 blocks (two and three strided layers), per-sample weights on the energies, a bump channel or not."""
    schema = plugins.source("scenes").attributes({})[attribute]
    torch.manual_seed(3)
    model = plugins.architecture("small").build(schema, size, {"channels": [8, 12, 16], "embed": 16, "bump_sigma": 0.1})
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.2)
    model.requires_grad_(False)
    c = LoadedConcept(SimpleNamespace(schema=schema, concept=attribute, hyperparameters={}), model).condition(  # type: ignore[arg-type]
        VALUES[attribute], torch.device("cpu"))
    specialised = model.for_condition(c)
    x = torch.rand((5, 3, size, size), generator=torch.Generator().manual_seed(2))
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0])

    def weighted(fn):
        z = x.clone().requires_grad_(True)
        energy = fn(z)
        return energy.detach(), torch.autograd.grad((weights * energy).sum(), z)[0]

    fast = weighted(specialised)
    assert_same(fast, weighted(lambda z: model(z, c.expand(z.shape[0], -1))))
    assert fast[1][4].abs().max() == 0  # a zero weight scales that image's gradient to zero
    with torch.no_grad():  # without a gradient asked for, the same energies
        assert torch.allclose(specialised(x), fast[0], rtol=1e-5, atol=1e-6)


def test_chunked_evaluation_equals_one_call_with_per_sample_conditions(plugins, monkeypatch):
    monkeypatch.setattr(batched, "CPU_CHUNK", 4)  # 9 images: chunks of 4, 4 and 1
    concept = frozen(plugins, "small", "color")
    c = torch.eye(6)[torch.arange(9) % 6]
    x = images()
    assert_same(energy_and_gradient(lambda z: batched.evaluate(concept.model, z, c), x),
                energy_and_gradient(lambda z: concept.model(z, c), x))


def test_composed_fast_energy_equals_the_plain_one(plugins, monkeypatch):
    monkeypatch.setattr(batched, "CPU_CHUNK", 4)
    concepts = {a: frozen(plugins, "small", a, seed=i) for i, a in enumerate(VALUES)}
    node = expr.parse("(position=(0.3,0.7) | size=0.12) & color=red & 0.5*!shape=square")

    def terms(fast: bool) -> dict[expr.Leaf, Term]:
        return {leaf: Term(concepts[leaf.concept], concepts[leaf.concept].condition(leaf.value, torch.device("cpu")),
                           fast=fast) for leaf in expr.leaves(node)}

    x = images()
    assert_same(energy_and_gradient(compose(node, terms(True)), x),
                energy_and_gradient(compose(node, terms(False)), x))


def test_a_frozen_expression_is_evaluated_in_one_chunked_pass_per_step(plugins, monkeypatch):
    """Each chunk thread takes its images through every concept at once: one pass, not one per concept."""
    monkeypatch.setattr(batched, "CPU_CHUNK", 4)
    passes = []
    run_parallel = batched.run_parallel
    monkeypatch.setattr(batched, "run_parallel", lambda work, chunks, device: passes.append(len(chunks))
                        or run_parallel(work, chunks, device))
    concepts = {a: frozen(plugins, "small", a, seed=i) for i, a in enumerate(VALUES)}
    node = expr.parse("(position=(0.3,0.7) | size=0.12) & color=red & 0.5*!shape=square")
    terms = {leaf: Term(concepts[leaf.concept], concepts[leaf.concept].condition(leaf.value, torch.device("cpu")))
             for leaf in expr.leaves(node)}
    x = images()
    fused = energy_and_gradient(compose(node, terms), x)
    assert passes == [3]  # 9 images in chunks of 4, 4 and 1, every concept in the same pass
    per_concept = energy_and_gradient(compose(node, terms, fuse=False), x)
    assert passes == [3] + [3] * 4
    assert_same(fused, per_concept)


def test_fast_langevin_chain_follows_the_plain_chain(plugins):
    concepts = [frozen(plugins, "small", a, seed=i) for i, a in enumerate(("position", "color"))]
    node = expr.parse("position=(0.3,0.7) & color=red")
    config = LangevinConfig(steps=5, step_size=0.01, noise=0.005)
    chains = []
    for fast in (True, False):
        terms = {leaf: Term(c, c.condition(leaf.value, torch.device("cpu")), fast=fast)
                 for leaf, c in zip(expr.leaves(node), concepts)}
        chains.append(langevin(compose(node, terms), images(), config, torch.Generator().manual_seed(2)))
    assert torch.allclose(chains[0], chains[1], atol=1e-5)


def test_noise_conditioned_fast_energy_equals_the_plain_one(plugins, monkeypatch):
    """In float64: the ratio E(x | c) - E(x | null) cancels large energies of random networks."""
    monkeypatch.setattr(batched, "CPU_CHUNK", 4)
    prior = frozen(plugins, "unet", "position")
    color = frozen(plugins, "classifier", "color", seed=1)
    concepts = {"position": prior, "color": color}
    for concept in concepts.values():
        concept.model.double()
    node = expr.parse("position=(0.3,0.7) & color=red")
    x, sigma = images().double(), torch.full((9,), 0.2, dtype=torch.float64)
    results = []
    for fast in (True, False):
        terms = {leaf: Term(concepts[leaf.concept],
                            concepts[leaf.concept].condition(leaf.value, torch.device("cpu")).double(), fast=fast)
                 for leaf in expr.leaves(node)}
        energy = compose_noisy(node, terms, prior, guidance=2.0)
        results.append(energy_and_gradient(lambda z, energy=energy: energy(z, sigma), x))
    assert_same(*results)


def test_a_trainable_network_is_called_plainly_so_its_parameters_get_gradients(plugins):
    concept = frozen(plugins, "small", "color")
    concept.model.requires_grad_(True)
    c = torch.eye(6)[:1].expand(9, -1)
    batched.evaluate(concept.model, images(), c).sum().backward()
    assert concept.model.out.weight.grad is not None
    assert batched.for_condition(concept.model, torch.eye(6)[:1]) is None


def test_channels_last_is_preferred_on_the_cpu_only_for_4d_weights():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 1))
    batched.prefer_channels_last(model, torch.device("cpu"))
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not model[0].weight.is_contiguous()


def test_chunks_run_in_parallel_threads_and_give_the_same_result(plugins, monkeypatch):
    monkeypatch.setattr(batched, "CPU_CHUNK", 2)
    concept = frozen(plugins, "small", "shape")
    c = torch.eye(3)[torch.arange(9) % 3]
    x = images()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fast = energy_and_gradient(lambda z: batched.evaluate(concept.model, z, c), x)
        assert torch.get_num_threads() == 2  # restored after the chunks ran single-threaded
    finally:
        torch.set_num_threads(threads)
    assert_same(fast, energy_and_gradient(lambda z: concept.model(z, c), x))


@pytest.mark.parametrize(("architecture", "attribute", "config"),
                         [("unet", "position", {}), ("unet", "position", {"refine": 4}), ("classifier", "color", {})])
def test_frozen_film_blocks_fold_a_shared_embedding_into_their_convolutions(plugins, architecture, attribute, config):
    concept = frozen(plugins, architecture, attribute, **config)
    model = concept.model.double()
    c = concept.condition(VALUES[attribute], torch.device("cpu")).double().expand(9, -1)
    sigma = torch.full((9,), 0.3, dtype=torch.float64)
    x = images().double()
    folded = energy_and_gradient(lambda z: model(z, c, sigma), x)
    model.requires_grad_(True)  # a network being trained keeps FiLM as two passes over activations
    assert_same(folded, energy_and_gradient(lambda z: model(z, c, sigma), x))


def test_evaluated_gradient_is_scaled_per_sample_when_the_energies_are_weighted(plugins, monkeypatch):
    monkeypatch.setattr(batched, "CPU_CHUNK", 4)
    concept = frozen(plugins, "small", "color")
    c = concept.condition(VALUES["color"], torch.device("cpu"))
    specialised = concept.model.for_condition(c)
    x, weights = images(), torch.linspace(-2, 2, 9)

    def weighted(fn):
        z = x.clone().requires_grad_(True)
        return torch.autograd.grad((weights * fn(z)).sum(), z)[0]

    assert torch.allclose(weighted(lambda z: batched.evaluate(specialised, z)),
                          weighted(lambda z: concept.model(z, c.expand(z.shape[0], -1))), rtol=1e-4, atol=1e-5)


def test_one_thread_runs_the_update_on_one_thread_and_restores_the_count(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with batched.one_thread(torch.device("cpu")):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), batched.one_thread(torch.device("cpu")):
            raise RuntimeError("a failed step")
        assert torch.get_num_threads() == 2  # restored on an error too
        with batched.one_thread(torch.device("meta")):  # not the CPU: threads are not the sampler's business
            assert torch.get_num_threads() == 2
        monkeypatch.setattr(batched, "UPDATE_ON_ONE_THREAD", False)
        with batched.one_thread(torch.device("cpu")):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
