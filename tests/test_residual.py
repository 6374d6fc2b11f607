"""Residual concepts: trained with the frozen concepts inside their loss, composed as corrections to them."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conceptlib.concepts import LoadedConcept
from conceptlib.energy import Term
from conceptlib.errors import ConceptError, TrainingError
from conceptlib.expr import And, Leaf, Not
from conceptlib.inference import InferenceConfig, infer
from conceptlib.plugins import PluginManager
from conceptlib.registry import VersionInfo, VersionRef
from conceptlib.residual import TEMPLATE_SIGMA, ChainReader, TrainingTemplates, build_chain, frozen_conditions
from conceptlib.scores import composed_score
from conceptlib.settings import (
    PLAIN,
    RESIDUAL_CORRECTOR_ABOVE,
    AnnealedConfig,
    Guidance,
    ResidualConfig,
    SamplerSettings,
)
from conceptlib.training import train_concept
from tests.conftest import TINY_SAMPLING, TINY_SOURCE, assert_one_line_error

CPU = torch.device("cpu")
TINY_NET = {"channels": [8, 8, 8], "embed": 16, "refine": 4}
UNGUIDED = SamplerSettings(guidance=PLAIN)


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


def test_a_residual_network_returns_its_estimate_less_the_frozen_one(plugins, dataset):
    arch = plugins.architecture("residual")
    model = arch.build(dataset.schemas["shape"], 16, arch.config(TINY_NET)).eval()
    x, c, sigma, keep = torch.rand(4, 3, 16, 16), torch.eye(3)[[0, 1, 2, 0]], torch.full((4,), 0.3), torch.ones(4)
    context = torch.rand(4, 6, 16, 16)
    moved = context.clone()
    moved[:, :3] += 0.25  # the same inputs but for the frozen estimate it is measured against
    with torch.no_grad():
        correction = model.denoise(x, c, sigma, keep, context)
        assert not torch.equal(correction, model.denoise(x, c, sigma, keep, moved))
        estimate = correction + context[:, :3]
        assert estimate.abs().max() < 10  # an estimate of the image, not a difference of two
    with pytest.raises(ValueError, match="context of 6 channels"):
        model.denoise(x, c, sigma, keep, context[:, :3])


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


def test_each_residual_reads_its_lineage_estimate_and_template(plugins, dataset):
    position = concept(plugins, dataset, "position", "denoiser")
    shape = concept(plugins, dataset, "shape", "residual", lineage=(VersionRef("position", 1),))
    color = concept(plugins, dataset, "color", "residual", seed=1,
                    lineage=(VersionRef("position", 1), VersionRef("shape", 1)))
    chain = build_chain([position, shape, color])
    x, sigma, ones, zeros = torch.rand(2, 3, 16, 16), torch.full((2,), 0.2), torch.ones(2), torch.zeros(2)
    p, s = torch.tensor([[0.3, 0.6]]).expand(2, -1), torch.eye(3)[[0, 2]]
    reader = ChainReader.at(chain, x, sigma)
    gray, template_sigma = torch.full_like(x, 0.5), torch.full((2,), TEMPLATE_SIGMA)

    def shape_on(image: torch.Tensor, noise: torch.Tensor, root: torch.Tensor, root_template: torch.Tensor):
        return shape.model.denoise(image, s, noise, ones, torch.cat([root, root_template], dim=1))

    root_template = position.model.denoise(gray, p, template_sigma, ones)
    root = position.model.denoise(x, p, sigma, ones)
    frozen = root + shape_on(x, sigma, root, root_template)
    frozen_template = root_template + shape_on(gray, template_sigma, root_template, root_template)
    assigned = {"position": p, "shape": s}
    assert torch.allclose(reader.context(color.version.lineage, assigned), frozen, atol=1e-6)
    color_null = color.model.denoise(x, torch.zeros(2, 6), sigma, zeros, torch.cat([frozen, frozen_template], dim=1))
    assert torch.allclose(reader.total(assigned), frozen + color_null, atol=1e-6)


def test_a_plain_and_at_guidance_one_follows_the_chain_at_the_named_conditions(plugins, dataset):
    position = concept(plugins, dataset, "position", "denoiser")
    shape = concept(plugins, dataset, "shape", "residual", lineage=(VersionRef("position", 1),))
    color = concept(plugins, dataset, "color", "residual", seed=1,
                    lineage=(VersionRef("position", 1), VersionRef("shape", 1)))
    chain = build_chain([position, shape, color])
    leaves = (Leaf("position", 0.0), Leaf("shape", 0.0))
    p, s = torch.tensor([[0.3, 0.6]]), torch.tensor([[0.0, 0.0, 1.0]])
    terms = {leaves[0]: Term(position, p), leaves[1]: Term(shape, s)}
    score = composed_score(And(leaves), terms, position, UNGUIDED, chain=chain)
    x, sigma = torch.rand(3, 3, 16, 16), torch.full((3,), 0.25)
    got, _ = score(x, sigma)
    expected = ChainReader.at(chain, x, sigma).total({"position": p, "shape": s})
    assert torch.allclose(got, (expected - x) / sigma[:, None, None, None] ** 2, rtol=1e-4, atol=1e-3)


def test_precomputed_training_templates_are_the_chains_templates(plugins, dataset):
    position = concept(plugins, dataset, "position", "denoiser")
    shape = concept(plugins, dataset, "shape", "residual", lineage=(VersionRef("position", 1),))
    chain = build_chain([position, shape])
    stored = TrainingTemplates(chain, dataset, with_dropped=True, device=CPU, chunk=50)
    index, keep = np.array([3, 70, 11]), torch.tensor([1.0, 0.0, 1.0])
    assigned = frozen_conditions(chain, dataset, index, keep, CPU)
    reader = ChainReader.template_reader(chain, torch.empty(3, 3, 16, 16))
    for lineage in (shape.version.lineage, stored.everything):
        expected = reader.context(lineage, assigned)
        assert torch.allclose(stored.batch(index, keep).context(lineage), expected, atol=2e-3)


def test_guidance_adds_each_leafs_difference_to_the_chain_given_the_others(plugins, dataset):
    """w (T(A) - T(A without i)) per leaf on top of T(A) less them: T(A) + (w - 1) sum_i (T(A) - T(A \\ i))."""
    position = concept(plugins, dataset, "position", "denoiser")
    shape = concept(plugins, dataset, "shape", "residual", lineage=(VersionRef("position", 1),))
    chain = build_chain([position, shape])
    leaves = (Leaf("position", 0.0), Leaf("shape", 0.0))
    p, s = torch.tensor([[0.3, 0.6]]), torch.tensor([[0.0, 1.0, 0.0]])
    terms = {leaves[0]: Term(position, p), leaves[1]: Term(shape, s)}
    x, sigma = torch.rand(2, 3, 16, 16), torch.full((2,), 0.3)
    got, _ = composed_score(And(leaves), terms, position, replace(UNGUIDED, guidance=replace(PLAIN, residual=2.0)),
                            chain=chain)(x, sigma)
    reader = ChainReader.at(chain, x, sigma)
    joint = reader.total({"position": p, "shape": s})
    without = [reader.total({"position": None, "shape": s}), reader.total({"position": p, "shape": None})]
    expected = joint + sum(joint - other for other in without)
    assert torch.allclose(got, (expected - x) / sigma[:, None, None, None] ** 2, rtol=1e-4, atol=1e-3)


def test_a_negated_residual_leaf_pushes_away_from_what_naming_it_adds(plugins, dataset):
    position = concept(plugins, dataset, "position", "denoiser")
    shape = concept(plugins, dataset, "shape", "residual", lineage=(VersionRef("position", 1),))
    chain = build_chain([position, shape])
    pos, shp = Leaf("position", 0.0), Leaf("shape", 0.0)
    p, s = torch.tensor([[0.3, 0.6]]), torch.tensor([[1.0, 0.0, 0.0]])
    terms = {pos: Term(position, p), shp: Term(shape, s)}
    x, sigma = torch.rand(2, 3, 16, 16), torch.full((2,), 0.3)
    got, _ = composed_score(And((pos, Not(shp))), terms, position, UNGUIDED, chain=chain)(x, sigma)
    reader = ChainReader.at(chain, x, sigma)
    unnamed = reader.total({"position": p, "shape": None})
    expected = unnamed - (reader.total({"position": p, "shape": s}) - unnamed)
    assert torch.allclose(got, (expected - x) / sigma[:, None, None, None] ** 2, rtol=1e-4, atol=1e-3)


def test_an_expression_without_the_root_reads_the_chain_at_the_drawn_root_condition(plugins, dataset):
    position = concept(plugins, dataset, "position", "denoiser")
    shape = concept(plugins, dataset, "shape", "residual", lineage=(VersionRef("position", 1),))
    chain = build_chain([position, shape])
    leaf = Leaf("shape", 0.0)
    s, drawn = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.7, 0.2], [0.4, 0.4]])
    x, sigma = torch.rand(2, 3, 16, 16), torch.full((2,), 0.3)
    got, _ = composed_score(leaf, {leaf: Term(shape, s)}, position, UNGUIDED, prior_condition=drawn,
                            chain=chain)(x, sigma)
    expected = ChainReader.at(chain, x, sigma).total({"position": drawn, "shape": s})
    assert torch.allclose(got, (expected - x) / sigma[:, None, None, None] ** 2, rtol=1e-4, atol=1e-3)


def test_a_residual_composes_only_with_its_chain_and_never_with_mala(plugins, dataset):
    position = concept(plugins, dataset, "position", "denoiser")
    shape = concept(plugins, dataset, "shape", "residual", lineage=(VersionRef("position", 1),))
    leaf = Leaf("shape", 0.0)
    with pytest.raises(ConceptError, match="MALA"):
        composed_score(leaf, {leaf: Term(shape, torch.eye(3)[:1])}, position,
                       replace(UNGUIDED, annealed=AnnealedConfig(corrector="mala")))
    orphan = replace(shape, version=replace(shape.version, lineage=(VersionRef("position", 2),)))
    with pytest.raises(ConceptError, match="trained with position@2 frozen"):
        composed_score(leaf, {leaf: Term(orphan, torch.eye(3)[:1])}, position, UNGUIDED)


def test_residual_guidance_must_be_positive_and_defaults_to_the_chains_own_estimate():
    with pytest.raises(ConceptError, match="--residual-guidance must be a finite number above 0"):
        Guidance(residual=0.0)
    recorded = Guidance(residual=2.0).to_json()
    assert Guidance.from_json(recorded).residual == 2.0
    assert Guidance.from_json(Guidance().to_json(residual=False)).residual == 1.0  # a sidecar without residuals


def test_a_continuous_residual_is_inferred_through_its_chain_and_refined_by_gradient(plugins, dataset):
    position = concept(plugins, dataset, "position", "denoiser")
    size = concept(plugins, dataset, "size", "residual", lineage=(VersionRef("position", 1),))
    chain = build_chain([position, size])
    images = torch.rand(2, 3, 16, 16)
    config = InferenceConfig(grid=3, refine_steps=2, sigmas=(0.1,), draws=1)
    found = infer(size, images, config, chain=chain)
    low, high = size.trained_range()
    assert isinstance(found.value, tuple) and low[0] <= found.value[0] <= high[0]
    assert found.energy <= found.candidates[0][1]


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
                   "-o", str(tmp_path / "grid.png"), "--out-dir", str(tmp_path / "samples"))
    assert composed.exit_code == 0, composed.output
    assert (tmp_path / "grid.png").stat().st_size > 0
    sidecar = json.loads((tmp_path / "samples" / "sample_00000.json").read_text())
    assert sidecar["sampler"]["residual_guidance"] == 1.0
    assert sidecar["sampler"]["corrector_above"] == RESIDUAL_CORRECTOR_ABOVE  # a residual chain's default, recorded
    plain = run("compose", "position=(0.4,0.6)", "-n", "1", *TINY_SAMPLING, "--out-dir", str(tmp_path / "plain"))
    assert plain.exit_code == 0, plain.output  # the root alone: no residual concept, no residual guidance
    plain_sampler = json.loads((tmp_path / "plain" / "sample_00000.json").read_text())["sampler"]
    assert "residual_guidance" not in plain_sampler and "corrector_above" not in plain_sampler
    inferred = run("infer", "shape", str(tmp_path / "samples" / "sample_00000.png"), "--json", "--device", "cpu")
    assert inferred.exit_code == 0, inferred.output
    assert json.loads(inferred.stdout)[0]["value"] in ("circle", "square", "triangle")


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
