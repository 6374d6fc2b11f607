"""A concept's energies on data it never saw (paper A.1): does it rank the right condition lowest?

Three populations, each scored by the concept's own energy: held-out images with their own condition
(``matched``), the same images with a wrong condition (``mismatched``: another name, or another image's
position), and uniform noise images with the matched conditions (``noise``). A concept that learned its
attribute puts ``matched`` clearly below ``mismatched``; ``ranked`` is the fraction of images whose matched
energy is below their mismatched one (0.5 is chance), a summary that needs no sampler and no judge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from conceptlib.concepts import LoadedConcept
from conceptlib.imaging import images_to_tensor
from conceptlib.inference import InferenceConfig, image_energies
from conceptlib.sources import Dataset

POPULATIONS = ("matched", "mismatched", "noise")
HELD_OUT_SEED_OFFSET = 4000
"""Histograms draw a fresh seed of the concept's source, so no training image is among them."""


@dataclass(frozen=True)
class EnergyHistograms:
    energies: dict[str, np.ndarray]
    ranked: float
    """Fraction of images with E(x | own condition) < E(x | wrong condition)."""

    def to_json(self, bins: int = 20) -> dict[str, object]:
        edges = histogram_edges(self.energies, bins)
        return {
            "ranked": self.ranked,
            "edges": [float(e) for e in edges],
            **{name: {"counts": np.histogram(np.clip(values, edges[0], edges[-1]), edges)[0].tolist(),
                      "mean": float(values.mean()),
                      "std": float(values.std())} for name, values in self.energies.items()},
        }


def mismatched_conditions(dataset: Dataset, attribute: str, index: np.ndarray,
                          rng: np.random.Generator) -> np.ndarray:
    """A wrong condition per image: another name, or the position of an image at least 0.3 away."""
    schema = dataset.schemas[attribute]
    if schema.kind == "categorical":
        own = dataset.labels[attribute][index].astype(np.int64)
        other = (own + rng.integers(1, schema.dim, len(own))) % schema.dim
        return np.eye(schema.dim, dtype=np.float32)[other]
    own = dataset.condition_vectors(attribute, index)
    wrong = own[rng.permutation(len(own))]
    for _ in range(100):
        close = np.linalg.norm(wrong - own, axis=1) < 0.3 * float(schema.high - schema.low)
        if not close.any():
            break
        wrong[close] = own[rng.integers(0, len(own), int(close.sum()))]
    return wrong


def energy_histograms(concept: LoadedConcept, dataset: Dataset, config: InferenceConfig | None = None,
                      seed: int = 0) -> EnergyHistograms:
    """Energies of ``concept`` on every image of ``dataset`` under the three populations."""
    config = config or InferenceConfig()
    attribute = concept.version.attribute
    index = np.arange(len(dataset))
    rng = np.random.default_rng(seed)
    device = next(concept.model.parameters()).device
    x = images_to_tensor(dataset.images, device)
    own = torch.from_numpy(dataset.condition_vectors(attribute, index)).to(device)
    wrong = torch.from_numpy(mismatched_conditions(dataset, attribute, index, rng)).to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    noise = torch.rand(x.shape, generator=generator, device=device)
    with torch.no_grad():
        energies = {
            "matched": image_energies(concept, x, own, config),
            "mismatched": image_energies(concept, x, wrong, config),
            "noise": image_energies(concept, noise, own, config),
        }
    values = {k: v.cpu().numpy().astype(np.float64) for k, v in energies.items()}
    return EnergyHistograms(values, float((values["matched"] < values["mismatched"]).mean()))


def histogram_edges(energies: dict[str, np.ndarray], bins: int) -> np.ndarray:
    """Shared bin edges over the central 98 % of all energies (a few outliers would flatten the rest)."""
    joined = np.concatenate(list(energies.values()))
    low, high = np.percentile(joined, [1, 99])
    if high <= low:
        high = low + 1.0
    return np.linspace(low, high, bins + 1)


def text_histogram(histograms: EnergyHistograms, bins: int = 16, width: int = 40) -> list[str]:
    """Rows ``energy range | bar per population``, values outside the range counted in the end bins."""
    edges = histogram_edges(histograms.energies, bins)
    counts = {name: np.histogram(np.clip(v, edges[0], edges[-1]), edges)[0]
              for name, v in histograms.energies.items()}
    top = max(int(c.max()) for c in counts.values()) or 1
    marks = {"matched": "█", "mismatched": "▒", "noise": "░"}
    rows = []
    for b in range(bins):
        bars = " ".join(f"{marks[n] * round(width * int(counts[n][b]) / top / 3):<{width // 3}}" for n in counts)
        rows.append(f"{edges[b]:>10.3g} .. {edges[b + 1]:<10.3g} {bars}")
    return rows
