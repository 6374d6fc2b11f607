"""Helpers of the reliability tests: CLI runs in forked processes, and the checks a crash must pass.

A forked child runs the real ``concept`` entry point (``conceptlib.cli.main`` with ``sys.argv``), with
its output in a log file. Forking from the already warm test process skips a fresh interpreter's
imports (seconds, with torch), so a crash trial costs what the command itself costs.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from conceptlib import cli
from conceptlib.registry import Registry

TINY_CD = ["--source", "scenes", "--param", "n=64", "--param", "image_size=16", "--objective", "cd",
           "--arch-config", "channels=[8,8,8]", "--arch-config", "embed=16",
           "--iterations", "3", "--batch-size", "8", "--steps", "2", "--device", "cpu"]
"""`concept add` options for a contrastive-divergence run of a fraction of a second."""


def fork(body: Callable[[], int], log: Path) -> int:
    """Run ``body()`` in a forked child whose stdout and stderr go to ``log``; returns the child's pid.

    The parent's objects are frozen out of the child's garbage collector, so that no unreachable
    database connection of the parent's is finalised (and closed under the parent's feet) in the child.
    """
    gc.freeze()
    pid = os.fork()
    if pid:
        gc.unfreeze()
        return pid
    code = 99
    try:
        # the child ends in os._exit below, so the log stays open for whatever it prints until then
        stream = open(log, "w", buffering=1)  # noqa: SIM115
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
        sys.stdout = sys.stderr = stream
        code = body()
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        os._exit(code)


def run_cli(argv: list[str], kill_in_write: float | None = None) -> int:
    """``concept ARGV`` through the console-script entry point; its exit code.

    ``kill_in_write``: SIGKILL this process that many seconds after its registry write begins.
    """
    if kill_in_write is not None:
        _around_write(lambda: threading.Timer(kill_in_write, os.kill, (os.getpid(), signal.SIGKILL)).start())
    sys.argv = ["concept", *argv]
    try:
        cli.main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def time_cli(argv: list[str], log: Path) -> tuple[float, float]:
    """Seconds an uninterrupted forked ``concept ARGV`` takes, and seconds its registry write takes.

    The kills of a crash trial are drawn from these spans, so they land all over the run and the write.
    """
    def body() -> int:
        started: list[float] = []
        _around_write(lambda: started.append(time.monotonic()),
                      lambda: print(f"write took {time.monotonic() - started[0]:.6f} s"))
        return run_cli(argv)

    began = time.monotonic()
    assert wait(fork(body, log)) == 0, log.read_text()
    whole = time.monotonic() - began
    return whole, float(re.search(r"write took ([0-9.]+) s", log.read_text()).group(1))  # type: ignore[union-attr]


def _around_write(before: Callable[[], Any], after: Callable[[], Any] = lambda: None) -> None:
    """Call ``before`` as this process's registry write transaction begins, ``after`` once it committed.

    A kill timer started by ``before`` fires while the main thread is inside SQLite (which releases the
    GIL), so the kill lands inside a statement or the commit itself, not only between Python lines.
    """
    original = Registry._write

    def hooked(self: Registry, work: Any) -> Any:
        before()
        result = original(self, work)
        after()
        return result

    Registry._write = hooked  # type: ignore[method-assign]


def wait(pid: int, timeout: float = 120.0) -> int:
    """The child's exit code (negative: the signal that ended it)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} ran longer than {timeout} s")
        time.sleep(0.005)


def kill_after(pid: int, delay: float) -> int:
    """SIGKILL the child ``delay`` seconds from now unless it ended first; its exit code."""
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def check_registry(location: str) -> dict[str, dict[str, Any]]:
    """What a crash must never break; returns each concept's versions, current version and aliases.

    SQLite's own integrity and foreign-key checks pass; the registry opens; version numbers are dense
    and unique; every version's weights load and match their sha256 and header; every version has its
    'add' event (written in the same transaction, so a version without one was half written); and the
    current version and every alias are the ones the last event about them says.
    """
    if "://" not in location:
        with closing(sqlite3.connect(location)) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    registry = Registry.open(location)
    try:
        state = {}
        for concept in registry.concepts():
            history = registry.history(concept.name)
            numbers = [v.number for v in history]
            assert numbers == list(range(1, len(history) + 1)), numbers
            for version in history:
                registry.load_weights(version)
            events = list(reversed(registry.events(concept.name, limit=1_000_000)))
            assert sorted(e.version for e in events if e.kind == "add") == numbers
            moves = [e.version for e in events if e.kind in ("add", "rollback")]
            assert concept.current == moves[-1], (concept.current, moves[-1])
            aliases: dict[str, int] = {}
            for e in events:
                if e.kind == "alias":
                    aliases[e.details["alias"]] = e.version  # type: ignore[assignment]
                elif e.kind == "unalias":
                    aliases.pop(e.details["alias"], None)
            assert concept.aliases == aliases, (concept.aliases, aliases)
            state[concept.name] = {"versions": len(history), "current": concept.current, "aliases": aliases}
        return state
    finally:
        registry.close()
