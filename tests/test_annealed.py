"""The annealed sampler, checked against a Gaussian whose scores are known exactly."""

from __future__ import annotations

import pytest
import torch

from conceptlib.annealed import annealed_sample, energy_scores, evaluations, karras_sigmas
from conceptlib.errors import ConceptError
from conceptlib.settings import RESIDUAL_CORRECTOR_ABOVE, AnnealedConfig

MEAN, STD = 0.6, 0.05


def gaussian(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Energy of N(MEAN, STD^2) blurred by noise sigma: the exact target of denoising score matching."""
    variance = STD**2 + sigma**2
    return (x - MEAN).pow(2).flatten(1).sum(1) / (2 * variance)


@pytest.mark.parametrize("corrector", ["none", "ula", "mala"])
def test_annealed_sampling_recovers_a_known_gaussian(corrector):
    config = AnnealedConfig(levels=30, corrector=corrector, corrector_steps=2)
    x = annealed_sample(energy_scores(gaussian), 256, 4, config, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert x.shape == (256, 3, 4, 4)
    assert float(x.mean()) == pytest.approx(MEAN, abs=0.01)
    assert float(x.std()) == pytest.approx(STD, rel=0.25)


def test_noise_levels_run_from_high_to_low():
    sigmas = karras_sigmas(AnnealedConfig(levels=10, sigma_min=0.01, sigma_max=1.0), torch.device("cpu"))
    assert len(sigmas) == 10
    assert float(sigmas[0]) == pytest.approx(1.0) and float(sigmas[-1]) == pytest.approx(0.01)
    assert bool((sigmas[1:] < sigmas[:-1]).all())


@pytest.mark.parametrize("settings", [{"levels": 1}, {"corrector": "hmc"}, {"sigma_min": 2.0},
                                      {"corrector_step": 0.0}, {"corrector_above": -0.1},
                                      {"corrector_above": float("nan")}])
def test_bad_sampler_settings_are_refused(settings):
    with pytest.raises(ConceptError):
        AnnealedConfig(**settings)


def test_corrector_steps_are_taken_only_at_levels_at_or_above_corrector_above():
    config = AnnealedConfig(levels=10, sigma_min=0.01, sigma_max=1.0, corrector_steps=3, corrector_above=0.1)
    sigmas = karras_sigmas(config, torch.device("cpu"))
    corrected = int((sigmas >= 0.1).sum())
    assert 0 < corrected < 10
    calls, ticks = [], []

    def counting(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, None]:
        calls.append(float(sigma[0]))
        return -(x - MEAN) / (STD**2 + sigma[:, None, None, None] ** 2), None

    annealed_sample(counting, 4, 2, config, torch.Generator().manual_seed(0), torch.device("cpu"),
                    on_step=lambda done, total: ticks.append((done, total)))
    below = [s for s in calls if s < 0.1]
    assert len(below) == 10 - corrected  # one denoising step per level below, no corrector there
    assert len(calls) == evaluations(config) == 10 + 3 * corrected
    assert ticks[-1] == (len(calls), len(calls))  # the progress bar ends full


def test_residual_chains_default_to_correctors_above_a_floor_and_keep_an_explicit_choice():
    assert AnnealedConfig().for_composition(residual_chain=False).corrector_above is None
    assert AnnealedConfig().for_composition(residual_chain=True).corrector_above == RESIDUAL_CORRECTOR_ABOVE
    assert AnnealedConfig(corrector_above=0.0).for_composition(residual_chain=True).corrector_above == 0.0
    assert "corrector_above" not in AnnealedConfig().to_json()  # sidecars of other compositions unchanged
    assert AnnealedConfig(corrector_above=0.2).to_json()["corrector_above"] == 0.2
