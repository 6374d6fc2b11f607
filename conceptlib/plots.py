"""Small PNG plots drawn with Pillow: a concept's loss curve and its energy histograms.

Why Pillow and not matplotlib: Pillow is already a dependency (grids, PNG I/O) and these are two plot
kinds with a few dozen points each, so a page of drawing code serves every install, where matplotlib
would be a 40 MB dependency or an optional extra that ``concept add`` could not count on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from conceptlib.imaging import font

CURVE_POINTS = 200
"""At most this many points of a loss curve are kept in a version's metrics (window means)."""
PANEL = (560, 260)
MARGIN = (64, 30, 16, 40)
"""Left, top, right, bottom space around a panel's plot area: tick labels, title, axis label."""
COLORS = {"loss": (31, 119, 180), "matched": (31, 119, 180), "mismatched": (255, 127, 14),
          "noise": (140, 140, 140)}
INK, GRID, PAPER = (30, 30, 30), (225, 225, 225), (255, 255, 255)


def loss_curve(history: Sequence[Mapping[str, float]], points: int = CURVE_POINTS) -> dict[str, list[float]]:
    """The run's loss as at most ``points`` window means, with each window's last iteration: small enough
    for a version's metrics, so any version (also an imported one) can draw its curve later."""
    if not history:
        return {"iteration": [], "loss": []}
    iterations = np.array([h.get("iteration", i + 1) for i, h in enumerate(history)], dtype=np.float64)
    losses = np.array([h["loss"] for h in history], dtype=np.float64)
    windows = np.array_split(np.arange(len(history)), min(points, len(history)))
    return {"iteration": [float(iterations[w[-1]]) for w in windows],
            "loss": [float(losses[w].mean()) for w in windows]}


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """At most ``count`` round values (steps of 1, 2, 2.5 or 5 times a power of ten) inside ``[low, high]``."""
    if not high > low:
        return [low]
    raw = (high - low) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((high - first) / step + 1e-9) + 1)]


class Panel:
    """One plot area on an image: maps data to pixels and draws axes, ticks, lines and bars."""

    def __init__(self, image: Image.Image, left: int, top: int, x_range: tuple[float, float],
                 y_range: tuple[float, float], log_y: bool = False) -> None:
        self.draw = ImageDraw.Draw(image)
        self.box = (left + MARGIN[0], top + MARGIN[1], left + PANEL[0] - MARGIN[2], top + PANEL[1] - MARGIN[3])
        self.origin = (left, top)
        self.log_y = log_y
        self.x_range = x_range
        self.y_range = tuple(math.log10(v) for v in y_range) if log_y else y_range

    def x(self, value: float) -> float:
        low, high = self.x_range
        return self.box[0] + (value - low) / ((high - low) or 1.0) * (self.box[2] - self.box[0])

    def y(self, value: float) -> float:
        low, high = self.y_range
        v = math.log10(value) if self.log_y else value
        return self.box[3] - (v - low) / ((high - low) or 1.0) * (self.box[3] - self.box[1])

    def frame(self, title: str, x_label: str, y_label: str) -> None:
        small = font(11)
        left, top, right, bottom = self.box
        for tick in nice_ticks(*self.x_range):
            self.draw.line([(self.x(tick), top), (self.x(tick), bottom)], fill=GRID)
            self.draw.text((self.x(tick), bottom + 4), f"{tick:g}", fill=INK, font=small, anchor="mt")
        for tick in self._y_ticks():
            self.draw.line([(left, self.y(tick)), (right, self.y(tick))], fill=GRID)
            self.draw.text((left - 4, self.y(tick)), f"{tick:.3g}", fill=INK, font=small, anchor="rm")
        self.draw.rectangle(self.box, outline=INK)
        self.draw.text((left, self.origin[1] + 8), title, fill=INK, font=font(13))
        self.draw.text(((left + right) / 2, bottom + 20), x_label, fill=INK, font=small, anchor="mt")
        self.draw.text((self.origin[0] + 4, top - 14), y_label, fill=INK, font=small)

    def _y_ticks(self) -> list[float]:
        if not self.log_y:
            return nice_ticks(*self.y_range)
        low, high = self.y_range
        return [10.0**p * m for p in range(math.floor(low), math.ceil(high) + 1) for m in (1, 2, 5)
                if low - 1e-9 <= p + math.log10(m) <= high + 1e-9]

    def line(self, xs: Sequence[float], ys: Sequence[float], color: tuple[int, int, int]) -> None:
        points = [(self.x(a), self.y(b)) for a, b in zip(xs, ys)]
        if len(points) == 1:
            points = points * 2
        self.draw.line(points, fill=color, width=2)

    def legend(self, entries: Sequence[tuple[str, tuple[int, int, int]]]) -> None:
        small = font(11)
        x, y = self.box[2] - 8, self.box[1] + 8
        for label, color in reversed(entries):
            width = int(small.getlength(label))
            self.draw.rectangle((x - width - 18, y, x - width - 8, y + 10), fill=color)
            self.draw.text((x, y + 5), label, fill=INK, font=small, anchor="rm")
            x -= width + 30


def _loss_panel(image: Image.Image, top: int, curve: Mapping[str, Sequence[float]], title: str) -> None:
    xs, ys = list(curve["iteration"]), list(curve["loss"])
    low, high = min(ys), max(ys)
    log_y = low > 0 and high / low > 20  # a denoiser's loss falls by orders of magnitude: read it in log
    if not log_y:
        pad = (high - low) * 0.05 or abs(high) * 0.05 or 1.0
        low, high = low - pad, high + pad
    panel = Panel(image, 0, top, (min(xs), max(xs)), (low, high), log_y)
    panel.frame(title, "iteration", "loss (log)" if log_y else "loss")
    panel.line(xs, ys, COLORS["loss"])


def _histogram_panel(image: Image.Image, top: int, energies: Mapping[str, Any], title: str) -> None:
    """Three step outlines on shared bins (``EnergyHistograms.to_json()``): where each population's energies lie."""
    edges = [float(e) for e in energies["edges"]]
    names = [n for n in COLORS if n in energies and n != "loss"]
    peak = max(max(energies[n]["counts"]) for n in names) or 1
    panel = Panel(image, 0, top, (edges[0], edges[-1]), (0.0, peak * 1.1))
    panel.frame(title, "energy", "images")
    for name in reversed(names):  # matched drawn last, on top: it is the population that matters
        xs, ys = [edges[0]], [0.0]
        for index, count in enumerate(energies[name]["counts"]):
            xs += [edges[index], edges[index + 1]]
            ys += [float(count), float(count)]
        panel.line([*xs, edges[-1]], [*ys, 0.0], COLORS[name])
    panel.legend([(name, COLORS[name]) for name in names])


def concept_figure(title: str, curve: Mapping[str, Sequence[float]] | None,
                   energies: Mapping[str, Any] | None) -> Image.Image:
    """The loss curve and/or the energy histograms of one version, stacked; a note where one is missing."""
    panels = [p for p in (curve, energies) if p]
    image = Image.new("RGB", (PANEL[0], PANEL[1] * max(1, len(panels)) + 24), PAPER)
    ImageDraw.Draw(image).text((8, 6), title, fill=INK, font=font(14))
    top = 24
    if curve and curve.get("loss"):
        _loss_panel(image, top, curve, "training loss")
        top += PANEL[1]
    if energies:
        _histogram_panel(image, top, energies,
                         f"energies on fresh images (own condition ranked lower {energies['ranked']:.2f})")
    if not panels:
        ImageDraw.Draw(image).text((8, 40), "no loss curve recorded (trained by an older release)", fill=INK,
                                   font=font(12))
    return image


def write_concept_figure(path: Path, title: str, curve: Mapping[str, Sequence[float]] | None,
                         energies: Mapping[str, Any] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    concept_figure(title, curve, energies).save(path)
    return path
