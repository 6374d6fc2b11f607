"""The named colors every first-party source draws with, so a ``color=red`` means one RGB everywhere.

Shared because concepts from different sources compose (paper A.2): a color concept learned on one
source then asks for the same hue on another.
"""

from __future__ import annotations

import numpy as np

NAMED_COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.12, 0.80, 0.15),
    "blue": (0.12, 0.25, 0.92),
    "yellow": (0.92, 0.85, 0.10),
    "magenta": (0.88, 0.12, 0.85),
    "cyan": (0.10, 0.85, 0.90),
    "orange": (1.00, 0.50, 0.05),
    "purple": (0.50, 0.15, 0.80),
}
"""RGB in [0, 1]; the first six are the training colors of the scene sources."""


def palette(names: tuple[str, ...]) -> np.ndarray:
    """``(len(names), 3)`` float32 RGB rows for ``names``, in order."""
    return np.array([NAMED_COLORS[name] for name in names], dtype=np.float32)
