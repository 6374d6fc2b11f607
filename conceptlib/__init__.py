"""conceptlib: a continual-learning registry of composable energy-based concepts.

After Du, Li & Mordatch, "Compositional Visual Generation and Inference with Energy Based Models"
(NeurIPS 2020). Importing the package is cheap: torch loads only when a model is built.
"""

__version__ = "0.1.0"
