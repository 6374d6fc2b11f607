"""Writing files so that readers never see half of one, and never where a user would not want it.

Every file conceptlib writes goes through :func:`atomic_write`: a temporary file beside the target, then
a rename onto it. A rename replaces a symbolic link rather than writing through it, a full disk leaves the
target as it was, and the error is one line. :func:`check_output` refuses targets that must not be
written at all: a link planted where an output goes, a directory, a device or FIFO, the registry itself.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from conceptlib.errors import OutputError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary)`` beside ``path``, then rename it onto ``path``: all or nothing, even on Ctrl-C.

    An ``OSError`` (a full disk, a read-only directory) becomes an :class:`OutputError`.
    """
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}; nothing was written") from None
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; an output is as open() would make it
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}; nothing was written") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (reading it means setting it; set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: Path, data: bytes) -> None:
    """``data`` as the whole of ``path``, atomically."""
    atomic_write(path, lambda temporary: temporary.write_bytes(data))


def check_output(path: Path, protected: Iterable[Path] = ()) -> None:
    """Refuse an output path that is a symbolic link, a directory or special file, lies in a missing
    directory, or is one of ``protected`` (a registry's database and journal files)."""
    if path.is_symlink():
        raise OutputError(f"{path} is a symbolic link; conceptlib never writes through one: remove it or "
                          "choose another path")
    if path.exists() and not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise OutputError(f"{path} is {kind}; choose a file path to write")
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: directory {path.parent} does not exist")
    target = path.resolve()
    for keep in protected:
        if target == keep.resolve() or (path.exists() and keep.exists() and os.path.samefile(path, keep)):
            raise OutputError(f"{path} is the registry's file {keep}; writing it would destroy the registry: "
                              "choose another path")


def check_outputs(directory: Path, wanted: Callable[[str], bool], protected: Iterable[Path] = ()) -> None:
    """:func:`check_output` for every entry of ``directory`` whose name a job will write (``wanted(name)``),
    found in one listing, before the job starts; ``directory`` itself may be a link to a directory."""
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"{directory} is not a directory; choose a directory for the outputs")
    if not directory.is_dir():
        return
    protected = list(protected)
    with os.scandir(directory) as entries:
        for entry in entries:
            if wanted(entry.name):
                check_output(Path(entry.path), protected)


def make_directory(path: Path) -> None:
    """``path`` and its parents as directories, or a one-line :class:`OutputError`."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create directory {path}: {exc.strerror or exc}") from None
