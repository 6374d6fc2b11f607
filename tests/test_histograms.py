"""Energy histograms (paper A.1): populations, the ranking summary, and `concept show --energies`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from conceptlib.concepts import LoadedConcept
from conceptlib.histograms import energy_histograms, mismatched_conditions, text_histogram
from conceptlib.schema import Categorical
from conceptlib.sources import Dataset

GRAYS = Categorical(("dark", "mid", "light"))


def gray_dataset(n: int = 30) -> Dataset:
    """Flat images whose brightness is their label: an attribute a toy energy can read exactly."""
    labels = np.arange(n) % 3
    images = np.repeat((labels * 100 + 20).astype(np.uint8)[:, None, None, None], 8, axis=1)
    images = np.repeat(np.repeat(images, 8, axis=2), 3, axis=3)
    return Dataset(images, {"gray": labels}, {"gray": GRAYS}, "test")


class BrightnessEnergy(nn.Module):
    """Low energy when the asked gray level matches the image's brightness."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        level = (x.mean((1, 2, 3)) * 255 - 20) / 100
        return self.scale * (level - c.argmax(1).float()).pow(2)


def concept_of(model: nn.Module) -> LoadedConcept:
    return LoadedConcept(SimpleNamespace(attribute="gray", hyperparameters={}), model)  # type: ignore[arg-type]


def test_a_concept_that_reads_its_attribute_ranks_the_own_condition_lowest():
    histograms = energy_histograms(concept_of(BrightnessEnergy()), gray_dataset())
    assert histograms.ranked == 1.0
    assert histograms.energies["matched"].max() < 1e-6 < histograms.energies["mismatched"].min()
    assert set(histograms.energies) == {"matched", "mismatched", "noise"}


def test_a_concept_blind_to_its_condition_ranks_nothing():
    class Blind(BrightnessEnergy):
        def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return self.scale * x.mean((1, 2, 3))

    assert energy_histograms(concept_of(Blind()), gray_dataset()).ranked == 0.0


def test_mismatched_conditions_are_always_wrong():
    rng = np.random.default_rng(0)
    data = gray_dataset(60)
    wrong = mismatched_conditions(data, "gray", np.arange(60), rng).argmax(1)
    assert (wrong != data.labels["gray"]).all()


def test_histogram_counts_every_image_and_renders_rows():
    histograms = energy_histograms(concept_of(BrightnessEnergy()), gray_dataset())
    data = histograms.to_json(bins=10)
    assert all(sum(data[name]["counts"]) == 30 for name in ("matched", "mismatched", "noise"))
    assert len(text_histogram(histograms, bins=10)) == 10


def test_show_energies_on_a_trained_concept(run, add_tiny):
    add_tiny("color", "--objective", "cd")
    result = run("show", "color", "--energies", "-n", "12", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    energies = json.loads(result.output)["energies"]
    assert energies["ranked"] * 12 == round(energies["ranked"] * 12)  # a fraction of the 12 images
    assert sum(energies["matched"]["counts"]) == 12 == sum(energies["mismatched"]["counts"])
    text = run("show", "color", "--energies", "-n", "12", "--device", "cpu")
    assert "ranked below a wrong one" in text.output
