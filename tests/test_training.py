"""Contrastive divergence: the real loop on tiny data, frozen concepts, divergence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptlib.concepts import LoadedConcept
from conceptlib.errors import TrainingError
from conceptlib.plugins import PluginManager
from conceptlib.registry import VersionInfo
from conceptlib.sampling import LangevinConfig
from conceptlib.training import TrainConfig, check_frozen_attributes, train_concept

CPU = torch.device("cpu")
TINY_NET = {"channels": [8, 8, 8], "embed": 16}


@pytest.fixture(scope="module")
def plugins() -> PluginManager:
    return PluginManager()


@pytest.fixture(scope="module")
def dataset(plugins):
    source = plugins.source("scenes")
    return source.load(source.resolve_params({"n": 128, "image_size": 16}))


def tiny_config(**overrides) -> TrainConfig:
    settings = {"iterations": 4, "batch_size": 8, "langevin": LangevinConfig(steps=2), **overrides}
    return TrainConfig(**settings)


def frozen_concept(plugins, dataset, attribute: str) -> LoadedConcept:
    small = plugins.architecture("small")
    model = small.build(dataset.schemas[attribute], 16, small.config(TINY_NET)).requires_grad_(False)
    version = VersionInfo(
        concept=attribute, number=1, created_at=None, schema=dataset.schemas[attribute], architecture="small",
        architecture_config=TINY_NET, source="scenes", source_params={}, attribute=attribute, dataset_hash="",
        hyperparameters={"image_size": 16}, seed=0, metrics={}, weights_sha256="", status="ready", lineage=(),
        aliases=(), is_current=True,
    )
    return LoadedConcept(version, model)


def test_training_updates_the_new_network_and_reports_metrics(plugins, dataset):
    small = plugins.architecture("small")
    result = train_concept(small, small.config(TINY_NET), dataset, "shape", [], tiny_config(), CPU)
    assert len(result.history) == 4
    assert {"loss", "energy_pos", "energy_neg", "energy_gap", "seconds"} <= set(result.metrics)
    assert float(result.model.out.weight.abs().sum()) > 0  # the zero-initialised head has moved


def test_frozen_concepts_are_not_updated(plugins, dataset):
    small = plugins.architecture("small")
    frozen = frozen_concept(plugins, dataset, "position")
    before = {k: v.clone() for k, v in frozen.model.state_dict().items()}
    train_concept(small, small.config(TINY_NET), dataset, "color", [frozen], tiny_config(), CPU)
    after = frozen.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_seeded_runs_are_identical(plugins, dataset):
    small = plugins.architecture("small")
    runs = [train_concept(small, small.config(TINY_NET), dataset, "size", [], tiny_config(seed=3), CPU)
            for _ in range(2)]
    assert [h["loss"] for h in runs[0].history] == [h["loss"] for h in runs[1].history]


def test_divergence_raises_a_training_error(plugins, dataset):
    small = plugins.architecture("small")
    config = tiny_config(iterations=40, lr=1e6, l2=0.0)
    with pytest.raises(TrainingError, match="diverged"):
        train_concept(small, small.config(TINY_NET), dataset, "size", [], config, CPU)


def test_frozen_concept_needs_an_attribute_the_source_labels(plugins, dataset):
    frozen = frozen_concept(plugins, dataset, "position")
    object.__setattr__(frozen.version, "attribute", "smiling")
    with pytest.raises(TrainingError, match="does not label"):
        check_frozen_attributes(dataset, [frozen], "scenes")


def test_small_net_starts_at_zero_energy_with_a_live_input_gradient(plugins, dataset):
    small = plugins.architecture("small")
    torch.manual_seed(0)
    model = small.build(dataset.schemas["position"], 16, small.config(TINY_NET))
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    energy = model(x, torch.tensor([[0.3, 0.7], [0.5, 0.5]]))
    assert torch.equal(energy, torch.zeros(2))
    model.out.weight.data.normal_()
    (grad,) = torch.autograd.grad(model(x, torch.tensor([[0.3, 0.7], [0.5, 0.5]])).sum(), x)
    assert float(grad.abs().mean()) > 1e-3
    assert np.isfinite(grad.numpy()).all()
