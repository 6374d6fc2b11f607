"""Atomic output files: all or nothing, and as readable as a plain ``open()`` would leave them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conceptlib.files import atomic_write, write_bytes


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_an_atomically_written_file_has_the_permissions_the_umask_gives(tmp_path: Path, mask: int):
    previous = os.umask(mask)
    try:
        write_bytes(tmp_path / "grid.png", b"png")
    finally:
        os.umask(previous)
    assert (tmp_path / "grid.png").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600


def test_a_write_that_fails_leaves_neither_the_file_nor_a_temporary(tmp_path: Path):
    def failing(temporary: Path) -> None:
        temporary.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "grid.png", failing)
    assert list(tmp_path.iterdir()) == []
