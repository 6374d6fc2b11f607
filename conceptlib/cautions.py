"""Warnings, not refusals: answers that may mean little because the input lies where a concept never learned.

Three places where a concept answers confidently and wrongly without a word:

- a condition outside the range the concept was trained on (``size=0.45`` for sizes drawn from
  0.10-0.15): composing there is extrapolation;
- a concept whose held-out accuracy is low (a 40-iteration ``color`` reading 0.30 of its held-out images
  right) registers like any other; ``--min-accuracy`` turns the warning into a refusal;
- ``infer`` on an image unlike the training data (a blank gray image): a classifier still names the
  class it leans to, often with certainty (``shape`` called gray "triangle" at energy 0.000).

The last one is a typicality test (Nalisnick et al. 2019, "Detecting out-of-distribution inputs to deep
generative models using typicality"): the image's energy under the lineage's scene model (the prior's
null condition: ``-log p(x)`` up to a constant) is compared with the same energy on held-out images of the
prior's own source. Two-sided, because likelihood models give simple images *lower* energies than real
ones (measured on the shipped ``position@1``: held-out scenes log-energy 2.9-3.9, a blank gray image 1.4,
uniform noise 9.2), so a one-sided threshold would pass the gray image. It needs one rendered batch of
held-out images and six network calls, about 1 s on a CPU for 32 px scenes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from conceptlib.errors import ConceptError

if TYPE_CHECKING:
    import torch

    from conceptlib.concepts import LoadedConcept
    from conceptlib.plugins import PluginManager
    from conceptlib.registry import Registry, VersionInfo

ACCURACY_WARNING = 0.9
"""A concept registering with a held-out accuracy below this gets a warning (``--min-accuracy`` refuses)."""
RANGE_SLACK = 0.02
"""Conditions within this fraction of the trained range's width outside it still count as inside: the range
recorded is the extreme labels drawn, a hair inside the source's bounds."""
TYPICALITY_Z = 4.0
"""Robust z-score (median, 1.4826 MAD) beyond which an image is called unlike the training data; held-out
images of the shipped concepts lie within 2.5, so a false alarm is rare."""
REFERENCE_IMAGES = 64


def outside_trained_range(concept: LoadedConcept, value: Any, leaf: str) -> str | None:
    """A warning when a continuous condition lies outside the range ``concept`` was trained on, else None."""
    schema = concept.version.schema
    if schema.kind != "continuous":
        return None
    numbers = np.atleast_1d(np.asarray(value, dtype=np.float64))
    low, high = concept.trained_range()
    slack = RANGE_SLACK * np.maximum(high - low, 1e-12)
    if np.all((numbers >= low - slack) & (numbers <= high + slack)):
        return None
    axes = schema.names  # type: ignore[union-attr]
    span = ", ".join(f"{axis} {lo:.3g} to {hi:.3g}" if len(axes) > 1 else f"{lo:.3g} to {hi:.3g}"
                     for axis, lo, hi in zip(axes, low, high))
    return (f"{leaf} lies outside the range {concept.version.ref} was trained on ({span}); samples there are "
            "extrapolation and may not show it")


def held_out_accuracy(metrics: Mapping[str, Any]) -> float | None:
    value = metrics.get("held_out_accuracy")
    return float(value) if isinstance(value, (int, float)) else None


def accuracy_warning(version: VersionInfo, threshold: float = ACCURACY_WARNING) -> str | None:
    """A warning for a version whose held-out accuracy is below ``threshold``, else None."""
    accuracy = held_out_accuracy(version.metrics)
    if accuracy is None or accuracy >= threshold:
        return None
    return (f"{version.ref} reads only {accuracy:.2f} of its held-out images right (below {threshold:.2f}); "
            f"train longer (--iterations) or 'concept rollback {version.concept}'; --min-accuracy refuses such "
            "a version instead")


def check_min_accuracy(metrics: Mapping[str, Any], minimum: float, name: str) -> None:
    """Refuse (before anything is registered) a run whose held-out accuracy is below ``minimum``."""
    accuracy = held_out_accuracy(metrics)
    if accuracy is not None and accuracy < minimum:
        raise ConceptError(f"{name} reads {accuracy:.2f} of its held-out images right, below --min-accuracy "
                           f"{minimum:.2f}; nothing was registered")


@dataclass(frozen=True)
class Typicality:
    """Robust z-scores of images' energies against held-out images', under one scene model."""

    z: np.ndarray
    reference_z: float
    """The largest |z| among the held-out images themselves: what "typical" looks like here."""
    concept: str
    scorer: str
    """The version whose energy was compared: the lineage's prior, or the concept itself."""

    def warnings(self, labels: Sequence[str], threshold: float = TYPICALITY_Z) -> list[str]:
        by = "" if self.scorer == self.concept else f" by {self.scorer}'s energy"
        return [f"{label} looks unlike the images {self.concept} was trained on (typicality z {z:+.1f}{by}; "
                f"held-out images lie within ±{self.reference_z:.1f}): the answer may mean little"
                for label, z in zip(labels, self.z) if abs(z) > threshold]


def robust_z(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(values - median) / (1.4826 MAD)`` of ``reference``: a few odd held-out images do not move it."""
    median = float(np.median(reference))
    spread = 1.4826 * float(np.median(np.abs(reference - median))) or float(np.std(reference)) or 1.0
    return (values - median) / spread


def typicality(registry: Registry, plugins: PluginManager, concept: LoadedConcept, images: torch.Tensor,
               values: Sequence[Any]) -> Typicality:
    """How typical each of ``images`` is of the data ``concept``'s lineage was trained on.

    Noise-conditioned concepts are judged by their lineage's prior at its null condition (log energy, see the module
    docstring), a residual by its chain through it with every member at null against its own data (a continually
    built chain's root saw only the first stage's); a contrastive-divergence concept, which has no null condition,
    by its own energy at ``values`` (the inferred condition of each image) against held-out images at their true
    conditions.
    Raises ``ConceptError`` when no held-out images can be drawn (a source that cannot load here).
    """
    import torch

    from conceptlib.concepts import prior_concept
    from conceptlib.histograms import HELD_OUT_SEED_OFFSET
    from conceptlib.imaging import images_to_tensor
    from conceptlib.inference import InferenceConfig, image_energies
    from conceptlib.residual import load_chain

    device = images.device
    noisy = concept.kind.noise_conditioned
    chain = load_chain(registry, plugins, [concept], device)  # None unless a residual
    # a residual's chain models the data it was trained on: its root may have seen only a part of it
    scorer = concept if chain is not None or not noisy else prior_concept(registry, plugins, [concept], device)
    version = scorer.version
    source = plugins.source(version.source)
    params = {**version.source_params, "n": REFERENCE_IMAGES,
              "seed": int(version.source_params.get("seed", 0)) + HELD_OUT_SEED_OFFSET}
    dataset = source.load(source.resolve_params(params))
    reference = images_to_tensor(dataset.images, device)
    config = InferenceConfig()
    with torch.no_grad():
        if noisy:
            def score(x: torch.Tensor) -> np.ndarray:
                shape = torch.zeros(x.shape[0], version.schema.dim, device=device)
                energies = image_energies(scorer, x, shape, config, shared_noise=True, chain=chain, null=True)
                return np.log(np.maximum(energies.cpu().numpy(), 1e-12))

            ours, theirs = score(images), score(reference)
        else:
            truth = torch.from_numpy(dataset.condition_vectors(version.attribute, np.arange(len(dataset)))).to(device)
            conditions = torch.cat([concept.condition(value, device) for value in values])
            ours = image_energies(scorer, images, conditions, config, shared_noise=True).cpu().numpy()
            theirs = image_energies(scorer, reference, truth, config, shared_noise=True).cpu().numpy()
    return Typicality(robust_z(ours, theirs), float(np.abs(robust_z(theirs, theirs)).max()),
                      str(concept.version.ref), str(version.ref))

