"""Both objectives on tiny data: the real loops, frozen concepts, seeding, divergence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conceptlib.concepts import LoadedConcept
from conceptlib.errors import TrainingError
from conceptlib.imaging import images_to_tensor
from conceptlib.plugins import PluginManager
from conceptlib.registry import VersionInfo
from conceptlib.settings import (
    CdConfig,
    DenoiserConfig,
    DsmConfig,
    LangevinConfig,
    NoiseConfig,
    TrainConfig,
    train_config,
)
from conceptlib.training import check_frozen_attributes, train_concept
from conceptlib.training.dsm import denoising_loss
from conceptlib.training.loop import draw_noise_levels

CPU = torch.device("cpu")
TINY_NET = {"channels": [8, 8, 8], "embed": 16}


@pytest.fixture(scope="module")
def plugins() -> PluginManager:
    return PluginManager()


@pytest.fixture(scope="module")
def dataset(plugins):
    source = plugins.source("scenes")
    return source.load(source.resolve_params({"n": 128, "image_size": 16}))


ARCHITECTURES = {"cd": "small", "dsm": "unet"}


def tiny_config(objective: str = "cd", **overrides) -> TrainConfig:
    """``objective``'s config, tiny; settings another objective has are ignored, as the CLI's are."""
    return train_config(objective, {"iterations": 4, "batch_size": 8, "langevin": LangevinConfig(steps=2), **overrides})


def frozen_concept(plugins, dataset, attribute: str, architecture: str = "small") -> LoadedConcept:
    arch = plugins.architecture(architecture)
    model = arch.build(dataset.schemas[attribute], 16, arch.config(TINY_NET)).requires_grad_(False)
    version = VersionInfo(
        concept=attribute, number=1, created_at=None, schema=dataset.schemas[attribute], architecture=architecture,
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


@pytest.mark.parametrize("objective", ["cd", "dsm"])
def test_frozen_concepts_are_not_updated(plugins, dataset, objective):
    arch = plugins.architecture(ARCHITECTURES[objective])
    frozen = frozen_concept(plugins, dataset, "position", ARCHITECTURES[objective])
    before = {k: v.clone() for k, v in frozen.model.state_dict().items()}
    result = train_concept(arch, arch.config(TINY_NET), dataset, "color", [frozen], tiny_config(objective=objective),
                           CPU, prior=frozen)
    after = frozen.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert np.isfinite(result.metrics["loss"])


@pytest.mark.parametrize("objective", ["cd", "dsm"])
def test_seeded_runs_are_identical(plugins, dataset, objective):
    arch = plugins.architecture(ARCHITECTURES[objective])
    runs = [train_concept(arch, arch.config(TINY_NET), dataset, "size", [], tiny_config(objective=objective, seed=3),
                          CPU) for _ in range(2)]
    assert [h["loss"] for h in runs[0].history] == [h["loss"] for h in runs[1].history]


def test_dsm_learns_to_denoise_and_returns_the_averaged_weights(plugins, dataset):
    unet = plugins.architecture("unet")
    config = tiny_config(objective="dsm", iterations=80, batch_size=16, lr=3e-3, warmup=1, seed=1)
    torch.manual_seed(config.seed)
    untrained = unet.build(dataset.schemas["color"], 16, unet.config(TINY_NET))
    result = train_concept(unet, unet.config(TINY_NET), dataset, "color", [], config, CPU)
    generator = torch.Generator().manual_seed(0)
    x0 = images_to_tensor(dataset.images[:32], CPU)
    c = torch.from_numpy(dataset.condition_vectors("color", np.arange(32)))
    sigma = torch.full((32,), 0.1)
    noise = torch.randn(x0.shape, generator=generator)

    def held_out_loss(model) -> float:
        x = (x0 + 0.1 * noise).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x, c, sigma).sum(), x)
        return float(denoising_loss(-grad, sigma, noise, 0.25))

    assert held_out_loss(result.model) < 0.75 * held_out_loss(untrained)
    assert {"loss", "grad_norm", "seconds"} <= set(result.metrics)
    assert not any(p.requires_grad for p in result.model.parameters())


def test_dsm_refuses_a_network_that_is_not_noise_conditioned(plugins, dataset):
    small = plugins.architecture("small")
    with pytest.raises(TrainingError, match="--arch unet"):
        train_concept(small, small.config(TINY_NET), dataset, "size", [], tiny_config(objective="dsm"), CPU)


def test_dsm_refuses_frozen_concepts_trained_by_cd(plugins, dataset):
    unet = plugins.architecture("unet")
    frozen = frozen_concept(plugins, dataset, "position", "small")
    with pytest.raises(TrainingError, match="contrastive divergence"):
        train_concept(unet, unet.config(TINY_NET), dataset, "color", [frozen], tiny_config(objective="dsm"), CPU,
                      prior=frozen)


def test_dsm_hyperparameters_leave_out_the_other_objectives_settings():
    recorded = DsmConfig().to_json()
    assert "condition_dropout" in recorded and "langevin" not in recorded
    assert "langevin" in CdConfig().to_json()
    assert "langevin" not in DenoiserConfig().to_json()
    assert list(recorded)[:5] == ["objective", "iterations", "batch_size", "lr", "seed"]


def test_training_noise_stays_in_range():
    drawn = draw_noise_levels(NoiseConfig(), 10_000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert float(drawn.min()) >= NoiseConfig.sigma_min * 0.999 and float(drawn.max()) <= NoiseConfig.sigma_max


def test_a_perfect_score_has_zero_denoising_loss_and_a_wrong_one_does_not():
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(8, 3, 4, 4, generator=generator)
    sigma = torch.full((8,), 0.3)
    assert float(denoising_loss(-noise / 0.3, sigma, noise, 0.25)) == pytest.approx(0.0, abs=1e-10)
    assert float(denoising_loss(torch.zeros_like(noise), sigma, noise, 0.25)) > 0.5


def test_divergence_raises_a_training_error(plugins, dataset):
    small = plugins.architecture("small")
    config = tiny_config(iterations=40, lr=1e6, l2=0.0)
    with pytest.raises(TrainingError, match="diverged"):
        train_concept(small, small.config(TINY_NET), dataset, "size", [], config, CPU)


def test_frozen_concept_needs_an_attribute_the_source_labels(plugins, dataset):
    frozen = frozen_concept(plugins, dataset, "position")
    object.__setattr__(frozen.version, "attribute", "smiling")
    with pytest.raises(TrainingError, match="does not label"):
        check_frozen_attributes(dataset.schemas, [frozen.version], "scenes")


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


def test_classifier_energy_learns_the_attribute_from_noisy_images(plugins, dataset):
    classifier = plugins.architecture("classifier")
    config = tiny_config(objective="classifier", iterations=150, batch_size=16, lr=1e-2, warmup=1)
    result = train_concept(classifier, classifier.config(TINY_NET), dataset, "color", [], config, CPU)
    first, last = (np.mean([h["loss"] for h in part]) for part in (result.history[:10], result.history[-10:]))
    assert first == pytest.approx(np.log(6), rel=0.15)  # starts at chance over six colors
    assert last < 0.85 * first
    # the recorded accuracy is the trained network's argmin over the six colors on the last 5 % of the images
    held = np.arange(len(dataset) - len(dataset) // 20, len(dataset))
    x = torch.from_numpy(dataset.images[held]).permute(0, 3, 1, 2).float() / 255
    sigma = torch.full((len(held),), 0.01)
    with torch.no_grad():
        energies = torch.stack([result.model(x, torch.eye(6)[k].expand(len(held), -1), sigma) for k in range(6)], 1)
    read = energies.argmin(1).numpy()
    assert result.metrics["held_out_accuracy"] == pytest.approx((read == dataset.labels["color"][held]).mean())


def test_classifier_energy_is_minus_log_probability_and_its_null_is_zero(plugins, dataset):
    from conceptlib.energy import Term

    classifier = plugins.architecture("classifier")
    model = classifier.build(dataset.schemas["color"], 16, classifier.config(TINY_NET))
    x, sigma = torch.rand(4, 3, 16, 16), torch.full((4,), 0.1)
    energies = torch.stack([model(x, torch.eye(6)[k].expand(4, -1), sigma) for k in range(6)], 1)
    assert torch.allclose(torch.exp(-energies).sum(1), torch.ones(4), atol=1e-5)
    version = frozen_concept(plugins, dataset, "color").version
    conditioned, null = Term(LoadedConcept(version, model), torch.eye(6)[:1]).with_null(x, sigma)
    assert torch.equal(null, torch.zeros(4)) and torch.allclose(conditioned, energies[:, 0])


def test_a_categorical_classifier_reads_a_set_of_names_and_its_complement_exactly(plugins, dataset):
    classifier = plugins.architecture("classifier")
    model = classifier.build(dataset.schemas["color"], 16, classifier.config(TINY_NET))
    x, sigma = torch.rand(4, 3, 16, 16, requires_grad=True), torch.full((4,), 0.1)
    one = torch.eye(6)[2].expand(4, -1)
    p = torch.exp(-model(x, one, sigma))
    either = torch.exp(-model(x, torch.eye(6)[[2, 4]].sum(0).expand(4, -1), sigma))
    assert torch.allclose(either, p + torch.exp(-model(x, torch.eye(6)[4].expand(4, -1), sigma)), atol=1e-6)
    assert torch.allclose(torch.exp(-model(x, 1 - one, sigma)), 1 - p, atol=1e-6)
    null = model(x, torch.zeros(4, 6), sigma)
    (grad,) = torch.autograd.grad(null.sum(), x)
    assert torch.equal(null, torch.zeros(4)) and torch.isfinite(grad).all()


def test_classifier_objective_refuses_a_network_that_is_not_a_classifier(plugins, dataset):
    unet = plugins.architecture("unet")
    with pytest.raises(TrainingError, match="--arch classifier"):
        train_concept(unet, unet.config(TINY_NET), dataset, "color", [], tiny_config(objective="classifier"), CPU)


def test_denoiser_learns_to_denoise_and_returns_the_averaged_weights(plugins, dataset):
    unet = plugins.architecture("unet")
    config = tiny_config(objective="denoiser", iterations=80, batch_size=16, lr=1e-2, warmup=1, seed=1)
    torch.manual_seed(config.seed)
    untrained = unet.build(dataset.schemas["color"], 16, unet.config(TINY_NET))
    result = train_concept(unet, unet.config(TINY_NET), dataset, "color", [], config, CPU)
    x0 = images_to_tensor(dataset.images[-32:], CPU)
    c = torch.from_numpy(dataset.condition_vectors("color", np.arange(len(dataset) - 32, len(dataset))))
    sigma = torch.full((32,), 0.3)  # where the estimate must come from the learned scene, not the noisy input
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))

    def error(model) -> float:
        with torch.no_grad():
            return float((model.denoise(x0 + 0.3 * noise, c, sigma, torch.ones(32)) - x0).pow(2).mean())

    assert error(result.model) < 0.8 * error(untrained)  # held-out images; measured 0.74 of the untrained error
    assert {"loss", "grad_norm", "seconds"} <= set(result.metrics)
    assert not any(p.requires_grad for p in result.model.parameters())


def test_the_cosine_schedule_decays_the_learning_rate_to_zero(plugins, dataset):
    from conceptlib.training.loop import clipped_step

    model = torch.nn.Linear(2, 1)
    ema = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
    config = tiny_config(objective="denoiser", iterations=10, warmup=2, lr=1.0, schedule="cosine")
    rates = []
    for iteration in range(1, 11):
        clipped_step(model(torch.ones(1, 2)).sum(), model, ema, optimizer, config, iteration, [], None)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[0] == pytest.approx(0.5 * 0.5 * (1 + np.cos(np.pi * 0.1)))  # half warmed up, slightly decayed
    assert rates[4] == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.5)))
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)


def test_denoiser_refuses_frozen_concepts_and_networks_without_a_denoiser(plugins, dataset):
    unet, classifier = plugins.architecture("unet"), plugins.architecture("classifier")
    frozen = frozen_concept(plugins, dataset, "position", "unet")
    with pytest.raises(TrainingError, match="--objective classifier"):
        train_concept(unet, unet.config(TINY_NET), dataset, "color", [frozen], tiny_config(objective="denoiser"), CPU,
                      prior=frozen)
    with pytest.raises(TrainingError, match="--arch unet"):
        train_concept(classifier, classifier.config(TINY_NET), dataset, "color", [],
                      tiny_config(objective="denoiser"), CPU)
    with pytest.raises(TrainingError, match="unknown schedule"):
        tiny_config(objective="denoiser", schedule="linear")
