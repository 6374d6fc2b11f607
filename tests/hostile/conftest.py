"""Fixtures of the hostile-input suite: one small trained registry for the session, copied per test, and a
way to run a command under a memory bound (a forked child with a capped address space)."""

from __future__ import annotations

import os
import resource
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from conceptlib.cli import cli
from tests.reliability import TINY_CD, fork, run_cli, wait

TINY_CLASSIFIER = ["--source", "scenes", "--param", "n=64", "--param", "image_size=16", "--objective", "classifier",
                   "--arch-config", "channels=[8,8]", "--arch-config", "embed=8", "--iterations", "2",
                   "--batch-size", "8", "--device", "cpu"]
HEADROOM = 1 << 30
"""Address space a bounded command may add to what the test process has mapped: a hostile file may cost
at most this much, and the attacks it guards against (1-7 GiB) need more."""


@dataclass(frozen=True)
class Base:
    registry: Path
    """position@1 (cd), color@1 (cd, trained with position frozen), shape@1 (a classifier)."""
    color: bytes
    """color@1 exported, with its lineage position@1."""
    shape: bytes
    """shape@1 exported: a classifier (its weights do not depend on the image size; its metrics hold a
    held-out accuracy)."""


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    folder = tmp_path_factory.mktemp("hostile-base")
    registry = folder / "registry.db"
    for args in (["add", "position", *TINY_CD], ["add", "color", "--with", "position", *TINY_CD],
                 ["add", "shape", *TINY_CLASSIFIER], ["export", "color", "-o", str(folder / "color.cpt")],
                 ["export", "shape", "-o", str(folder / "shape.cpt")]):
        result = CliRunner().invoke(cli, ["--registry", str(registry), *args])
        assert result.exit_code == 0, result.output
    return Base(registry, (folder / "color.cpt").read_bytes(), (folder / "shape.cpt").read_bytes())


@pytest.fixture
def trained(base: Base, registry_path: Path) -> Path:
    """A copy of the base registry as this test's registry."""
    shutil.copy(base.registry, registry_path)
    return registry_path


Bounded = Callable[..., tuple[int, str]]


@pytest.fixture
def bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Bounded:
    """``bounded(*argv, timeout=60)``: ``concept ARGV`` in a forked child whose address space may grow by
    ``HEADROOM`` at most; its exit code (99 for an uncaught exception) and output."""
    monkeypatch.delenv("CONCEPTLIB_REGISTRY", raising=False)
    monkeypatch.delenv("CONCEPTLIB_PLUGINS_DIR", raising=False)
    counter = iter(range(1_000_000))

    def invoke(*argv: str, timeout: float = 60.0) -> tuple[int, str]:
        log = tmp_path / f"bounded-{next(counter)}.log"

        def body() -> int:
            with open("/proc/self/statm") as statm:
                mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            resource.setrlimit(resource.RLIMIT_AS, (mapped + HEADROOM, resource.RLIM_INFINITY))
            return run_cli(list(argv))

        code = wait(fork(body, log), timeout)
        return code, log.read_text()

    return invoke
