"""Errors a user can cause. The CLI prints each as one line and exits 2.

Programming errors stay ordinary exceptions: only what the user can fix belongs here, and every
message says what was wrong and what to do about it.
"""

from __future__ import annotations


class ConceptError(Exception):
    """Base of every error caused by input: the CLI turns it into one line and exit code 2."""

    exit_code = 2


class ExpressionError(ConceptError):
    """A composition expression that does not parse or does not make sense.

    ``position`` is the 0-based column of the offending token, so callers can draw a caret. The message
    starts with it (``column 11: ...``), so a reason that names another column (the '(' left open) reads
    plainly; ``located=False`` leaves it out where no column means anything (an empty expression).
    """

    def __init__(self, message: str, text: str, position: int, *, located: bool = True) -> None:
        self.reason = message
        self.text = text
        self.position = position
        super().__init__(f"column {position + 1}: {message}" if located else message)

    def caret(self) -> str:
        """The expression with a caret under the offending token (two lines).

        Unprintable characters (a newline, a tab) show as '?', so the text stays on one line and the
        caret stays under its column.
        """
        shown = "".join(c if c.isprintable() else "?" for c in self.text)
        return f"  {shown}\n  {' ' * self.position}^"


class ConditionError(ConceptError):
    """A condition value that the concept's schema does not accept."""


class BadNameError(ConceptError):
    """A concept or alias name outside the grammar of :mod:`conceptlib.names`."""


class UnknownConceptError(ConceptError):
    """A concept, version or alias that the registry does not hold."""


class RegistryError(ConceptError):
    """A registry that cannot be opened, or whose contents fail verification."""


class CorruptBlobError(RegistryError):
    """A weights blob whose bytes do not match the sha256 recorded for its version."""


class PluginError(ConceptError):
    """A plugin that cannot be loaded, or two plugins that register the same name."""


class UnknownSourceError(PluginError):
    """A dataset source or architecture name that no plugin registers."""


class SourceParamError(ConceptError):
    """A dataset-source parameter that is unknown or has a bad value."""


class SourceError(ConceptError):
    """A dataset source (a plugin) that failed while producing its data; nothing was trained."""


class TrainingError(ConceptError):
    """A training run that diverged (NaN, inf) or cannot start; nothing was registered."""


class CheckpointError(TrainingError):
    """A checkpoint that cannot be resumed: unreadable, damaged, or made by another run."""


class OutputError(ConceptError):
    """A file that cannot or must not be written: the disk is full, the path is a link or the registry."""


class DistributedError(ConceptError):
    """A torchrun launch that cannot start: variables missing, a rendezvous out of reach, too few GPUs."""


class Interrupted(ConceptError):
    """Ctrl-C during a long job; nothing was written."""

    exit_code = 130


def is_out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: ``MemoryError``, or torch's RuntimeError for the CPU or a GPU."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text.lower())
