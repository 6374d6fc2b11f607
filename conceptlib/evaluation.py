"""The paper's quantitative protocols (Tables 1-3), graded by an independent judge.

Each protocol draws random conditions per sample (a position in the source's range, a color, a shape),
samples every image from its own composed energy, and asks the judge (:mod:`conceptlib.judge`, trained
on renders the concepts never saw: another seed of the same source) what it sees. Every protocol also
reports how many samples *look real* to the judge, because a judge alone can be fooled by adversarial
noise (docs/design.md). Figures are on freshly generated samples, never on training images.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptlib.concepts import LoadedConcept, load_concept
from conceptlib.energy import Term
from conceptlib.errors import ConceptError
from conceptlib.expr import And, Leaf, Node, Not, Or, Weighted, replace_leaves, to_text
from conceptlib.imaging import images_to_tensor, to_uint8
from conceptlib.inference import InferenceConfig, infer_each
from conceptlib.network_calls import counting
from conceptlib.plugins import PluginManager
from conceptlib.registry import Registry
from conceptlib.residual import Chain
from conceptlib.sampling import sample, sampling_networks, sampling_prior
from conceptlib.schema import Categorical, ConditionSchema, Value
from conceptlib.settings import SamplerSettings

WITHIN = 0.1
"""A position is right when it lies within this distance (scene units) of the asked one (paper 3.2)."""
JUDGE_SEED_OFFSET = 1000
"""The judge learns from another seed of the concepts' source, so it never sees their training images."""
REAL_SEED_OFFSET = 4 * JUDGE_SEED_OFFSET
"""The real renders a row's samples are told apart from: a seed neither the concepts nor the judge saw."""
REAL_POOL = 20_000
"""Renders the real counterparts are matched from: enough that an asked position finds one within ~0.01."""
CRITIC_STEPS, CRITIC_STEPS_PER_SAMPLE = 300, 10
"""Adam steps per two-sample critic: 300 from 30 samples up (every committed row), fewer for the toy rows of
tests, which could not teach a critic anything anyway."""


def critic_steps(n: int) -> int:
    """Adam steps for each critic of a row of ``n`` samples (:data:`CRITIC_STEPS`)."""
    return min(CRITIC_STEPS, CRITIC_STEPS_PER_SAMPLE * n)


CRITICS = 3
"""Critics per row, each of another seed, their held-out accuracies averaged: on the same 500 samples one
critic's figure moved by up to 0.28 with its seed alone (``shape``, report split: 0.597-0.878; docs/quality.md),
enough to decide a row near the 0.75 line."""
REALISM_TARGETS: dict[str, tuple[str, float]] = {"looks_real": (">=", 0.90), "two_sample_acc": ("<=", 0.75)}
"""Every row must also look like the data: to the judge's features, and to a critic trained on the row itself
(:mod:`conceptlib.two_sample`; 0.5 is indistinguishable)."""


@dataclass(frozen=True)
class Trial:
    """What to sample: an expression whose leaves carry per-sample conditions, and what to check."""

    node: Node
    conditions: dict[Leaf, np.ndarray]
    targets: dict[str, np.ndarray]


@dataclass(frozen=True)
class Protocol:
    name: str
    concepts: tuple[str, ...]
    make: Callable[[Conditions, int], Trial]
    score: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], dict[str, float]]
    targets: dict[str, tuple[str, float]] = field(default_factory=dict)
    """metric -> (">=" or "<=", threshold), from the issue's table; :data:`REALISM_TARGETS` are added to all."""
    first_mode_share: float = 0.5
    """For an OR: how often its first mode should be drawn (what real renders are matched with)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", {**self.targets, **REALISM_TARGETS})


@dataclass
class ProtocolResult:
    name: str
    n: int
    metrics: dict[str, float]
    targets: dict[str, tuple[str, float]]
    seconds: float
    versions: dict[str, str]
    images: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 1, 1, 3), np.uint8))
    confusion: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per categorical target (``shape``, ``not_color``): ``values`` and ``matrix``, rows asked, columns judged."""
    asked: list[str] = field(default_factory=list)
    """Each sample's expression with its own conditions: the caption of its tile in the grid."""
    real: np.ndarray | None = field(repr=False, default=None)
    """The real render paired with each sample (same asked conditions), when the two-sample test ran."""

    @property
    def passed(self) -> bool:
        return all(_meets(self.metrics.get(k, float("nan")), op, v) for k, (op, v) in self.targets.items())

    def to_json(self) -> dict[str, Any]:
        return {"protocol": self.name, "n": self.n, "metrics": self.metrics, "seconds": round(self.seconds, 2),
                "targets": {k: f"{op} {v:g}" for k, (op, v) in self.targets.items()}, "passed": self.passed,
                "versions": self.versions, **({"confusion": self.confusion} if self.confusion else {})}


def _meets(value: float, op: str, threshold: float) -> bool:
    return value >= threshold if op == ">=" else value <= threshold


# ------------------------------------------------------------- conditions
CELLS = 6
"""The position range is cut into ``CELLS x CELLS`` cells (0.1 of the scene each for [0.2, 0.8]); a split owns
half of the (cell, asked categorical values) combinations, a checkerboard, so tune and report never ask the same."""


@dataclass(frozen=True)
class Split:
    """Which seed and which asked conditions a run draws: settings are chosen on ``tune``, figures reported on
    ``report``. Why: a default picked on the very samples it is graded on overstates what users get."""

    name: str
    seed: int
    parity: int | None
    """The checkerboard colour of the combinations this split asks; ``None`` asks any."""


SPLITS: dict[str, Split] = {s.name: s for s in (Split("any", 0, None), Split("tune", 0, 0), Split("report", 7, 1))}
"""``tune`` keeps seed 0, on which every sampler default was chosen; ``report`` has a seed no setting was tried on.
Protocols that ask only a categorical value (``color``, ``shape``) differ between splits by seed alone."""


@dataclass
class Conditions:
    """Draws a protocol's asked conditions: seeded, within the source's range, in the split's half."""

    rng: np.random.Generator
    params: Mapping[str, Any]
    split: Split = SPLITS["any"]

    def positions(self, n: int, asked_with: np.ndarray | int = 0) -> np.ndarray:
        """``n`` positions, each in a cell whose parity plus ``asked_with`` (the sum of the categorical indices
        asked beside it) is the split's: a position that lands in the other half moves to its row neighbour."""
        low, high = _position_range(self.params)
        p = self.rng.uniform(low, high, (n, 2)).astype(np.float32)
        if self.split.parity is None:
            return p
        cell, width = _cells(p, self.params), (high - low) / CELLS
        wrong = (cell.sum(axis=1) + np.asarray(asked_with)) % 2 != self.split.parity
        step = np.where(cell[:, 0] % 2 == 0, width, -width)  # 0<->1, 2<->3, 4<->5: stays in range
        p[wrong, 0] += step[wrong].astype(np.float32)
        return p

    def far_positions(self, first: np.ndarray, asked_with: np.ndarray | int = 0, apart: float = 0.3) -> np.ndarray:
        """Positions at least ``apart`` from ``first``, so the two modes of an OR are told apart."""
        offset = np.broadcast_to(np.asarray(asked_with), (len(first),))
        second = self.positions(len(first), offset)
        while True:
            close = np.linalg.norm(first - second, axis=1) < apart
            if not close.any():
                return second
            second[close] = self.positions(int(close.sum()), offset[close])

    def names(self, n: int, count: int) -> np.ndarray:
        return self.rng.integers(0, count, n)


def _position_range(params: Mapping[str, Any]) -> tuple[float, float]:
    return float(params.get("position_low", 0.2)), float(params.get("position_high", 0.8))


def _cells(position: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Each position's cell ``(column, row)`` on the ``CELLS x CELLS`` grid over the source's range."""
    low, high = _position_range(params)
    return np.clip(((position - low) / ((high - low) / CELLS)).astype(np.int64), 0, CELLS - 1)


def cell_key(position: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Each position's cell index ``(row * CELLS + column)``: what tests compare between splits."""
    cell = _cells(position, params)
    return cell[:, 1] * CELLS + cell[:, 0]


def _one_hot(index: np.ndarray, count: int) -> np.ndarray:
    return np.eye(count, dtype=np.float32)[index]


def _hit(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.linalg.norm(predicted - target, axis=1) < WITHIN


# ------------------------------------------------------------- protocols
N_COLORS, N_SHAPES = 6, 3


def _position_only(draw: Conditions, n: int) -> Trial:
    leaf = Leaf("position", 0.0)
    p = draw.positions(n)
    return Trial(leaf, {leaf: p}, {"position": p})


def _color_only(draw: Conditions, n: int) -> Trial:
    leaf = Leaf("color", 0.0)
    k = draw.names(n, N_COLORS)
    return Trial(leaf, {leaf: _one_hot(k, N_COLORS)}, {"color": k})


def _shape_only(draw: Conditions, n: int) -> Trial:
    leaf = Leaf("shape", 0.0)
    k = draw.names(n, N_SHAPES)
    return Trial(leaf, {leaf: _one_hot(k, N_SHAPES)}, {"shape": k})


def _position_and_color(draw: Conditions, n: int) -> Trial:
    pos, col = Leaf("position", 0.0), Leaf("color", 0.0)
    k = draw.names(n, N_COLORS)
    p = draw.positions(n, k)
    return Trial(And((pos, col)), {pos: p, col: _one_hot(k, N_COLORS)}, {"position": p, "color": k})


def _position_not_color(draw: Conditions, n: int) -> Trial:
    pos, col = Leaf("position", 0.0), Leaf("color", 0.0)
    k = draw.names(n, N_COLORS)
    p = draw.positions(n, k)
    return Trial(And((pos, Not(col))), {pos: p, col: _one_hot(k, N_COLORS)}, {"position": p, "not_color": k})


def _not_position_color(draw: Conditions, n: int) -> Trial:
    pos, col = Leaf("position", 0.0), Leaf("color", 0.0)
    k = draw.names(n, N_COLORS)
    p = draw.positions(n, k)
    return Trial(And((Not(pos), col)), {pos: p, col: _one_hot(k, N_COLORS)}, {"not_position": p, "color": k})


def _two_places(draw: Conditions, n: int,
                asked_with: np.ndarray | int = 0) -> tuple[Leaf, Leaf, dict[Leaf, np.ndarray]]:
    """The two position leaves of an OR and their places, far enough apart to tell the modes apart."""
    first, second = Leaf("position", 1.0), Leaf("position", 2.0)
    p1 = draw.positions(n, asked_with)
    return first, second, {first: p1, second: draw.far_positions(p1, asked_with)}


def _position_or_position(draw: Conditions, n: int) -> Trial:
    first, second, places = _two_places(draw, n)
    return Trial(Or((first, second)), places, {"mode1": places[first], "mode2": places[second]})


WEIGHTED_OR_SHARE = 0.3
"""The first mode's weight in ``0.3*position | 0.7*position``: it should be drawn 30 % of the time."""


def _weighted_position_or(draw: Conditions, n: int) -> Trial:
    first, second, places = _two_places(draw, n)
    node = Or((Weighted(WEIGHTED_OR_SHARE, first), Weighted(1 - WEIGHTED_OR_SHARE, second)))
    return Trial(node, places, {"mode1": places[first], "mode2": places[second]})


def _score_shares(predicted: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict[str, float]:
    """:func:`_score`, plus how far each mode's rate is from its weight."""
    metrics = _score(predicted, targets)
    metrics["mode1_off"] = abs(metrics["mode1"] - WEIGHTED_OR_SHARE)
    metrics["mode2_off"] = abs(metrics["mode2"] - (1 - WEIGHTED_OR_SHARE))
    return metrics


def _position_or_position_and_color(draw: Conditions, n: int) -> Trial:
    col, k = Leaf("color", 0.0), draw.names(n, N_COLORS)
    first, second, places = _two_places(draw, n, k)
    return Trial(And((Or((first, second)), col)), {**places, col: _one_hot(k, N_COLORS)},
                 {"mode1": places[first], "mode2": places[second], "color": k})


def _score_nested_or(predicted: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict[str, float]:
    """:func:`_score`, plus how often a sample is at either place *and* of the asked color."""
    metrics = _score(predicted, targets)
    either = _hit(predicted["position"], targets["mode1"]) | _hit(predicted["position"], targets["mode2"])
    metrics["all_right"] = float((either & (predicted["color"] == targets["color"])).mean())
    return metrics


def _position_shape_color(draw: Conditions, n: int) -> Trial:
    pos, shp, col = Leaf("position", 0.0), Leaf("shape", 0.0), Leaf("color", 0.0)
    s, k = draw.names(n, N_SHAPES), draw.names(n, N_COLORS)
    p = draw.positions(n, s + k)
    return Trial(And((pos, shp, col)), {pos: p, shp: _one_hot(s, N_SHAPES), col: _one_hot(k, N_COLORS)},
                 {"position": p, "shape": s, "color": k})


def _score(predicted: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracy for asked attributes, hit rate for negated ones, mode rates for OR, all-right for ANDs."""
    metrics: dict[str, float] = {}
    right = np.ones(len(next(iter(targets.values()))), dtype=bool)
    for key, target in targets.items():
        if key in ("position", "not_position", "mode1", "mode2"):
            hit = _hit(predicted["position"], target)
        else:
            hit = predicted[key.removeprefix("not_")] == target
        name = {"position": "position_acc", "color": "color_acc", "shape": "shape_acc",
                "not_position": "negated_position_rate", "not_color": "negated_color_rate"}.get(key, key)
        metrics[name] = float(hit.mean())
        if not key.startswith("not_") and not key.startswith("mode"):
            right &= hit
    if "mode1" in targets:
        metrics["either_mode"] = metrics["mode1"] + metrics["mode2"]
    elif sum(not k.startswith("not_") for k in targets) > 1:
        metrics["all_right"] = float(right.mean())
    return metrics


def confusion(predicted: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray],
              values: Mapping[str, Sequence[str]]) -> dict[str, dict[str, Any]]:
    """Rows asked (or forbidden, for ``not_`` targets), columns judged, for every categorical target.

    Why: an accuracy says how often a concept fails, the matrix says how (measured: most shape errors were
    circles read as squares and triangles read as circles), which is what decides the next lever.
    """
    tables: dict[str, dict[str, Any]] = {}
    for key, target in targets.items():
        attribute = key.removeprefix("not_")
        if attribute not in values:
            continue
        judged = np.asarray(predicted[attribute], dtype=np.int64)
        asked = np.asarray(target, dtype=np.int64)
        names = list(values[attribute])
        size = max(len(names), int(judged.max(initial=-1)) + 1, int(asked.max(initial=-1)) + 1)
        names += [str(i) for i in range(len(names), size)]  # a judge with more classes than the concept
        matrix = np.zeros((size, size), dtype=np.int64)
        np.add.at(matrix, (asked, judged), 1)
        tables[key] = {"values": names, "matrix": matrix.tolist()}
    return tables


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in [
    Protocol("position", ("position",), _position_only, _score, {"position_acc": (">=", 0.98)}),
    Protocol("color", ("color",), _color_only, _score, {"color_acc": (">=", 0.98)}),
    Protocol("shape", ("shape",), _shape_only, _score, {"shape_acc": (">=", 0.95)}),
    Protocol("position & color", ("position", "color"), _position_and_color, _score,
             {"position_acc": (">=", 0.95), "color_acc": (">=", 0.95)}),
    Protocol("position & !color", ("position", "color"), _position_not_color, _score,
             {"position_acc": (">=", 0.95), "negated_color_rate": ("<=", 0.05)}),
    Protocol("!position & color", ("position", "color"), _not_position_color, _score,
             {"negated_position_rate": ("<=", 0.05), "color_acc": (">=", 0.95)}),
    Protocol("position | position", ("position",), _position_or_position, _score,
             {"mode1": (">=", 0.45), "mode2": (">=", 0.45), "either_mode": (">=", 0.95)}),
    Protocol("0.3*position | 0.7*position", ("position",), _weighted_position_or, _score_shares,
             {"mode1_off": ("<=", 0.05), "mode2_off": ("<=", 0.05), "either_mode": (">=", 0.95)},
             first_mode_share=WEIGHTED_OR_SHARE),
    Protocol("(position | position) & color", ("position", "color"), _position_or_position_and_color,
             _score_nested_or, {"either_mode": (">=", 0.95), "color_acc": (">=", 0.95)}),
    Protocol("position & shape & color", ("position", "shape", "color"), _position_shape_color, _score,
             {"all_right": (">=", 0.85), "position_acc": (">=", 0.95), "shape_acc": (">=", 0.90),
              "color_acc": (">=", 0.90)}),
]}


# -------------------------------------------------------------- sampling
def sample_trial(
    trial: Trial,
    concepts: Mapping[str, LoadedConcept],
    prior: LoadedConcept | None,
    settings: SamplerSettings,
    generator: torch.Generator,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
    chain: Chain | None = None,
) -> np.ndarray:
    """Images ``(n, H, W, 3)`` uint8, sample ``i`` drawn from the expression with its own conditions.

    ``chain``: the residual concepts' chain, when the expression holds any (see :func:`sampling_prior`)."""
    n = len(next(iter(trial.conditions.values())))
    image_size = int(next(iter(concepts.values())).version.hyperparameters["image_size"])
    batches = []
    for start in range(0, n, settings.batch_size):
        part = slice(start, min(n, start + settings.batch_size))
        terms = {leaf: Term(concepts[leaf.concept], torch.from_numpy(values[part]).to(device))
                 for leaf, values in trial.conditions.items()}
        x = sample(trial.node, terms, prior, part.stop - part.start, image_size, settings, generator, device,
                   chain=chain)
        batches.append(to_uint8(x))
        if on_batch is not None:
            on_batch(part.stop)
    return np.concatenate(batches)


def run_protocols(
    registry: Registry,
    plugins: PluginManager,
    judge: Any,
    names: Sequence[str],
    n: int,
    settings: SamplerSettings,
    seed: int,
    device: torch.device,
    on_progress: Callable[[str, int, int], None] | None = None,
    split: Split = SPLITS["any"],
    real: Callable[[Protocol], tuple[np.ndarray, dict[str, np.ndarray]]] | None = None,
) -> list[ProtocolResult]:
    """Run each named protocol on ``n`` samples with the registry's current concepts, asking ``split``'s
    conditions. ``real(protocol)``: a pool of real renders and their labels to pair the samples with for the
    two-sample test (``None`` skips it, and the row cannot be met)."""
    results = []
    for name in names:
        protocol = PROTOCOLS[name]
        concepts = {c: load_concept(registry, plugins, registry.resolve(c), device) for c in protocol.concepts}
        try:
            prior, chain = sampling_prior(registry, plugins, list(concepts.values()), device)
        except ConceptError as exc:
            raise type(exc)(f"protocol {name!r}: {exc}") from None
        params = concepts[protocol.concepts[0]].version.source_params
        trial = protocol.make(Conditions(np.random.default_rng(seed), params, split), n)
        generator = torch.Generator(device=device).manual_seed(seed)
        started = time.perf_counter()
        on_batch = (lambda done, name=name: on_progress(name, done, n)) if on_progress else None
        with counting(sampling_networks(concepts.values(), prior, chain)) as calls:
            images = sample_trial(trial, concepts, prior, settings, generator, device, on_batch=on_batch, chain=chain)
        seconds = time.perf_counter() - started
        predicted = judge.predict(images)
        metrics = protocol.score(predicted, trial.targets)
        metrics["looks_real"] = float(np.mean(judge.realism(images)))
        spent = calls.per_sample(n)
        metrics["network_evaluations"] = spent["forward"] + spent["backward"]
        paired = None
        if real is not None:
            on_critic = (lambda done, name=name: on_progress(f"{name}: critics", done, CRITICS)
                         ) if on_progress else None
            paired = _two_sample(protocol, trial, images, *real(protocol), seed, device, metrics, on_critic)
        values = {c: v.version.schema.values for c, v in concepts.items() if v.version.schema.kind == "categorical"}
        results.append(ProtocolResult(name, n, metrics, protocol.targets, seconds,
                                      {c: str(v.version.ref) for c, v in concepts.items()}, images,
                                      confusion(predicted, trial.targets, values),
                                      asked_expressions(trial, {c: v.version.schema for c, v in concepts.items()}),
                                      paired))
    return results


def _two_sample(protocol: Protocol, trial: Trial, images: np.ndarray, pool: np.ndarray,
                labels: dict[str, np.ndarray], seed: int, device: torch.device,
                metrics: dict[str, float], on_critic: Callable[[int], None] | None = None) -> np.ndarray:
    """Pair each sample with a real render of its asked conditions, and record how well critics tell them apart
    (``two_sample_acc``, held out, the mean of :data:`CRITICS` seeds, with its extremes) and how closely positions
    were matched. Returns the real renders."""
    from conceptlib.two_sample import match_real, repeated_two_sample_accuracy

    try:
        matched = match_real(trial.targets, pool, labels, np.random.default_rng(seed + REAL_SEED_OFFSET),
                             protocol.first_mode_share)
    except ValueError as exc:
        raise ConceptError(f"protocol {protocol.name!r}: {exc}") from None
    test = repeated_two_sample_accuracy(images, matched.images, range(seed, seed + CRITICS), on_critic=on_critic,
                                        device=device, steps=critic_steps(len(images)))
    metrics["two_sample_acc"] = test["accuracy"]
    metrics["two_sample_acc_min"], metrics["two_sample_acc_max"] = test["accuracy_min"], test["accuracy_max"]
    metrics["two_sample_train_acc"] = test["train_accuracy"]
    metrics["real_position_error"] = matched.position_error
    return matched.images


def asked_expressions(trial: Trial, schemas: Mapping[str, ConditionSchema]) -> list[str]:
    """Each sample's expression with its own conditions filled in (``position=(0.31,0.62) & color=red``)."""
    def value(leaf: Leaf, index: int) -> Value:
        vector, schema = trial.conditions[leaf][index], schemas[leaf.concept]
        if isinstance(schema, Categorical):
            return schema.values[int(np.argmax(vector))]
        numbers = tuple(round(float(v), 2) for v in vector)
        return numbers if len(numbers) > 1 else numbers[0]

    n = len(next(iter(trial.conditions.values())))
    return [to_text(replace_leaves(trial.node, {leaf: Leaf(leaf.concept, value(leaf, i), leaf.version)
                                                for leaf in trial.conditions})) for i in range(n)]


# ------------------------------------------------------------- inference
def infer_positions(
    concept: LoadedConcept, images: np.ndarray, targets: np.ndarray, config: InferenceConfig, device: torch.device
) -> dict[str, float]:
    """Mean absolute error (scene units, per axis) of inferring each image's position on its own."""
    x = images_to_tensor(images, device)
    found = np.array([r.value for r in infer_each(concept, x, config)], dtype=np.float64)
    error = np.abs(found - targets)
    return {"mae": float(error.mean()), "within_0.1": float((np.linalg.norm(found - targets, axis=1) < WITHIN).mean())}


# ----------------------------------------------------------- whole run
def shared_params(versions: Sequence[Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The source params every version was trained with, the source's defaults where they differ.

    Why: concepts learned continually each see different data (position on magenta squares only, color on
    everything); a judge trained on the first one's data could not read the colors the later ones draw.
    """
    first = versions[0].source_params
    return {key: value if all(v.source_params.get(key) == value for v in versions) else defaults.get(key, value)
            for key, value in first.items()}


def judge_params(graded: Sequence[Any], anchor: Any, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The source params of the judge for the ``graded`` versions: the data they share (on ``anchor``'s source),
    at another seed than any concept trained on."""
    params = shared_params([v for v in graded if v.source == anchor.source] or [anchor], defaults)
    return {**params, "seed": int(params.get("seed", 0)) + JUDGE_SEED_OFFSET}


def resolved_unset(settings: SamplerSettings) -> dict[str, Any]:
    """The annealed settings left unset, as each kind of composition resolves them (``residual_chain_levels``,
    ``other_eta``, ...), for a record that covers rows of both kinds."""
    unset = [key for key in ("levels", "eta", "corrector_above") if getattr(settings.annealed, key) is None]
    found = {}
    for kind, chain in (("residual_chain", True), ("other", False)):
        resolved = settings.annealed.for_composition(chain)
        found.update({f"{kind}_{key}": getattr(resolved, key) for key in unset if getattr(resolved, key) is not None})
    return found


@dataclass
class EvaluationRun:
    results: list[ProtocolResult]
    extra: dict[str, Any]


def evaluate_registry(
    registry: Registry,
    plugins: PluginManager,
    names: Sequence[str],
    n: int,
    settings: SamplerSettings,
    seed: int,
    device: torch.device,
    judge_cache: Path | None = None,
    inference_n: int = 0,
    inference: InferenceConfig | None = None,
    on_phase: Callable[[str, int, int], None] | None = None,
    split: Split = SPLITS["any"],
) -> EvaluationRun:
    """Judge (trained or cached), every protocol, and position inference on held-out renders."""
    from conceptlib.judge import load_or_train_judge

    unknown = [name for name in names if name not in PROTOCOLS]
    if unknown:
        raise ConceptError(f"unknown protocol {unknown[0]!r}; known: {', '.join(PROTOCOLS)}")
    anchor = registry.resolve(PROTOCOLS[names[0]].concepts[0] if names else "position")
    source = plugins.source(anchor.source)
    graded = [registry.resolve(c) for c in dict.fromkeys(c for name in names for c in PROTOCOLS[name].concepts)]
    judge, report = load_or_train_judge(
        anchor.source, judge_params(graded, anchor, source.default_params), judge_cache, device,
        progress=(lambda done, total: on_phase("training judge", done, total)) if on_phase else None,
        plugins=plugins,
        on_load=(lambda done, total: on_phase("judge's images", done, total)) if on_phase else None,
    )
    extra: dict[str, Any] = {
        "judge_held_out": report.get("attributes", report.get("held_out_test")),
        "sampler": {**settings.annealed.to_json(), **settings.guidance.to_json(), **resolved_unset(settings),
                    "langevin": settings.langevin.to_json()},
        "seed": seed,
        "split": split.name,
        "device": str(device),
    }
    pools: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}

    def real(protocol: Protocol) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Fresh renders of the data the protocol's concepts share (``position`` alone: its magenta squares)."""
        params = shared_params([registry.resolve(c) for c in protocol.concepts], source.default_params)
        params = source.resolve_params({**params, "n": max(REAL_POOL, 4 * n),
                                        "seed": int(params.get("seed", 0)) + REAL_SEED_OFFSET})
        key = json.dumps(params, sort_keys=True, default=str)
        if key not in pools:
            data = source.load(params)
            pools[key] = (data.images, dict(data.labels))
        return pools[key]

    results = run_protocols(registry, plugins, judge, names, n, settings, seed, device, on_phase, split, real)
    if inference_n:
        concept = load_concept(registry, plugins, registry.resolve("position"), device)
        base = {**concept.version.source_params, "n": inference_n}
        config = inference or InferenceConfig()
        held_out = int(base.get("seed", 0)) + split.seed  # each split infers on its own renders
        tests = {
            "same distribution": {"seed": held_out + 2 * JUDGE_SEED_OFFSET},
            "unseen size": {"seed": held_out + 3 * JUDGE_SEED_OFFSET,
                            "size_low": 0.16, "size_high": 0.2},
        }
        inferred = {}
        for label, change in tests.items():
            data = source.load(source.resolve_params({**base, **change}))
            started = time.perf_counter()
            figures = infer_positions(concept, data.images, data.labels["position"], config, device)
            inferred[label] = {**figures, "n": inference_n, "seconds": round(time.perf_counter() - started, 1)}
        extra["position_inference"] = inferred
    return EvaluationRun(results, extra)
