"""Residual concepts: trained with the frozen concepts inside their loss, composed as corrections to them."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from conceptlib.concepts import LoadedConcept
from conceptlib.energy import Term
from conceptlib.errors import ConceptError, TrainingError
from conceptlib.expr import And, Leaf
from conceptlib.plugins import PluginManager
from conceptlib.registry import VersionInfo, VersionRef
from conceptlib.residual import Chain, build_chain
from conceptlib.scores import composed_score
from conceptlib.settings import PLAIN, ResidualConfig, SamplerSettings
from conceptlib.training import train_concept
from tests.conftest import TINY_SAMPLING, TINY_SOURCE, assert_one_line_error

CPU = torch.device("cpu")
TINY_NET = {"channels": [8, 8, 8], "embed": 16, "refine": 4}


@pytest.fixture(scope="module")
def plugins() -> PluginManager:
    return PluginManager()


@pytest.fixture(scope="module")
def dataset(plugins):
    source = plugins.source("scenes")
    return source.load(source.resolve_params({"n": 128, "image_size": 16}))


def concept(plugins, dataset, attribute: str, objective: str, seed: int = 0,
            lineage: tuple[VersionRef, ...] = ()) -> LoadedConcept:
    """A tiny untrained network registered-looking as ``attribute@1`` of ``objective``."""
    arch = plugins.architecture("residual" if objective == "residual" else "unet")
    torch.manual_seed(seed)
    model = arch.build(dataset.schemas[attribute], 16, arch.config(TINY_NET))
    if objective == "residual":  # as if trained: a correction that is not zero
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
    version = VersionInfo(
        concept=attribute, number=1, created_at=None, schema=dataset.schemas[attribute], architecture=arch.name,
        architecture_config=arch.config(TINY_NET), source="scenes", source_params={}, attribute=attribute,
        dataset_hash="", hyperparameters={"image_size": 16, "objective": objective}, seed=0, metrics={},
        weights_sha256="", status="ready", lineage=lineage, aliases=(), is_current=True,
    )
    return LoadedConcept(version, model.eval().requires_grad_(False))


def tiny(iterations: int = 3, seed: int = 0) -> ResidualConfig:
    return ResidualConfig(iterations=iterations, batch_size=8, seed=seed)


def test_a_new_residual_network_starts_as_the_frozen_composition(plugins, dataset):
    arch = plugins.architecture("residual")
    model = arch.build(dataset.schemas["shape"], 16, arch.config(TINY_NET))
    x = torch.rand(4, 3, 16, 16)
    correction = model.denoise(x, torch.eye(3)[[0, 1, 2, 0]], torch.full((4,), 0.3), torch.ones(4), torch.rand_like(x))
    assert torch.equal(correction, torch.zeros_like(x))


def test_residual_training_reads_the_frozen_concepts(plugins, dataset):
    """Same data, seed and settings; only the frozen position concept differs: the learned weights differ."""
    arch = plugins.architecture("residual")
    learned = []
    for frozen_seed in (0, 0, 1):
        frozen = concept(plugins, dataset, "position", "denoiser", seed=frozen_seed)
        result = train_concept(arch, arch.config(TINY_NET), dataset, "shape", [frozen], tiny(), CPU)
        learned.append(torch.cat([p.flatten() for p in result.model.parameters()]))
        assert "frozen_loss" in result.metrics
    assert torch.equal(learned[0], learned[1])  # seeded: the same frozen concept gives the same residual
    assert not torch.equal(learned[0], learned[2])


def test_residual_objective_needs_frozen_concepts_and_a_residual_network(plugins, dataset):
    arch = plugins.architecture("residual")
    with pytest.raises(TrainingError, match="needs --with"):
        train_concept(arch, arch.config(TINY_NET), dataset, "shape", [], tiny(), CPU)
    unet = plugins.architecture("unet")
    frozen = concept(plugins, dataset, "position", "denoiser")
    with pytest.raises(TrainingError, match="--arch residual"):
        train_concept(unet, unet.config(TINY_NET), dataset, "shape", [frozen], tiny(), CPU)


def test_a_chain_orders_residuals_after_their_lineage_and_refuses_what_does_not_fit(plugins, dataset):
    position = concept(plugins, dataset, "position", "denoiser")
    shape = concept(plugins, dataset, "shape", "residual", lineage=(VersionRef("position", 1),))
    color = concept(plugins, dataset, "color", "residual",
                    lineage=(VersionRef("position", 1), VersionRef("shape", 1)))
    chain = build_chain([color, position, shape])
    assert chain.root is position and chain.residuals == (shape, color)
    with pytest.raises(ConceptError, match="compose it with that concept too"):
        build_chain([position, color])
    other = replace(position, version=replace(position.version, number=2))
    with pytest.raises(ConceptError, match="trained with position@1 frozen"):
        build_chain([other, shape])
    classifier = replace(shape, version=replace(shape.version, hyperparameters={"objective": "classifier"}))
    with pytest.raises(ConceptError, match="not a denoiser"):
        build_chain([position, classifier])


def test_each_residual_reads_its_lineage_estimate(plugins, dataset):
    position = concept(plugins, dataset, "position", "denoiser")
    shape = concept(plugins, dataset, "shape", "residual", lineage=(VersionRef("position", 1),))
    color = concept(plugins, dataset, "color", "residual", seed=1,
                    lineage=(VersionRef("position", 1), VersionRef("shape", 1)))
    chain = Chain(position, (shape, color))
    x, sigma = torch.rand(2, 3, 16, 16), torch.full((2,), 0.2)
    read = chain.null_conditions(2, CPU)
    read["shape"] = (torch.eye(3)[[0, 2]], torch.ones(2))
    estimated = chain.estimate(x, sigma, read)
    root = position.model.denoise(x, *read["position"][:1], sigma, read["position"][1])
    assert torch.equal(estimated.contexts["shape"], root)
    assert torch.allclose(estimated.contexts["color"], root + estimated.corrections["shape"])
    assert torch.allclose(estimated.total, estimated.contexts["color"] + estimated.corrections["color"])


def test_a_plain_and_at_guidance_one_follows_the_chain_at_the_named_conditions(plugins, dataset):
    position = concept(plugins, dataset, "position", "denoiser")
    shape = concept(plugins, dataset, "shape", "residual", lineage=(VersionRef("position", 1),))
    color = concept(plugins, dataset, "color", "residual", seed=1,
                    lineage=(VersionRef("position", 1), VersionRef("shape", 1)))
    chain = build_chain([position, shape, color])
    leaves = (Leaf("position", 0.0), Leaf("shape", 0.0))
    p, s = torch.tensor([[0.3, 0.6]]), torch.tensor([[0.0, 0.0, 1.0]])
    terms = {leaves[0]: Term(position, p), leaves[1]: Term(shape, s)}
    score = composed_score(And(leaves), terms, position, SamplerSettings(guidance=PLAIN), chain=chain)
    x, sigma = torch.rand(3, 3, 16, 16), torch.full((3,), 0.25)
    got, _ = score(x, sigma)
    read = chain.null_conditions(3, CPU)
    read["position"] = (p.expand(3, -1), torch.ones(3))
    read["shape"] = (s.expand(3, -1), torch.ones(3))
    expected = (chain.estimate(x, sigma, read).total - x) / sigma[:, None, None, None] ** 2
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------ CLI
TINY = ["--arch-config", "channels=[8,8,8]", "--arch-config", "embed=16", "--arch-config", "refine=4",
        "--iterations", "3", "--batch-size", "8", "--device", "cpu"]


def test_add_with_frozen_trains_a_residual_and_records_the_whole_lineage(run, tmp_path):
    assert run("add", "position", *TINY_SOURCE, *TINY, "--param", "shapes=square").exit_code == 0
    assert run("add", "shape", *TINY_SOURCE, *TINY, "--with", "position").exit_code == 0
    result = run("add", "color", *TINY_SOURCE, *TINY, "--with", "shape")
    assert result.exit_code == 0, result.output
    shown = json.loads(run("show", "color", "--json").output)
    assert shown["hyperparameters"]["objective"] == "residual" and shown["architecture"] == "residual"
    assert shown["lineage"] == ["position@1", "shape@1"]  # shape's own frozen concept came along
    composed = run("compose", "position=(0.4,0.6) & shape=circle & color=green", "-n", "2", *TINY_SAMPLING,
                   "-o", str(tmp_path / "grid.png"))
    assert composed.exit_code == 0, composed.output
    assert (tmp_path / "grid.png").stat().st_size > 0


@pytest.mark.parametrize(("extra", "fragments"), [
    (["--with", "position", "--attribute", "position"], ("already models attribute 'position'",)),
    (["--with", "position", "--attribute", "shape", "--param", "image_size=32"],
     ("works on 16px images", "image_size=16")),
])
def test_add_refuses_a_clash_with_a_frozen_concept_before_training(run, extra, fragments):
    assert run("add", "position", *TINY_SOURCE, *TINY).exit_code == 0
    result = run("add", "second", *TINY_SOURCE, *TINY, *extra)
    assert_one_line_error(result, *fragments)
    assert "1/3" not in result.output  # refused before the first iteration
    assert "second" not in run("list", "--json").output


def test_add_refuses_a_schema_clash_with_the_existing_concept_before_training(run):
    assert run("add", "position", *TINY_SOURCE, *TINY).exit_code == 0
    result = run("add", "position", *TINY_SOURCE, *TINY, "--attribute", "color")
    assert_one_line_error(result, "concept 'position' takes", "name the new concept differently")
    assert "--resume" not in result.output
