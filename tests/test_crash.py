"""Crash safety: SIGKILL at random moments, inside the final write too, and Ctrl-C during training.

Every trial ends with :func:`check_registry`: SQLite's integrity check passes, the registry opens,
every version loads and matches its sha256, numbers stay dense, and no version exists without the
event written in its transaction. A killed command leaves the registry either as it was or with its
whole change, never in between.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner

from conceptlib.checkpoints import Checkpoint
from conceptlib.cli import cli
from tests.reliability import TINY_CD, check_registry, fork, kill_after, run_cli, time_cli, wait

ADD_KILLS = 24
POINTER_KILLS = 12
WRITE_OVERSHOOT = 1.25
"""In-write kills are drawn from the write's measured length times this: most land inside, some just after."""


@pytest.fixture
def registry(tmp_path: Path) -> str:
    """A registry with shape@1, trained in this process (which also warms it up for the forks)."""
    path = str(tmp_path / "registry.db")
    result = CliRunner().invoke(cli, ["--registry", path, "add", "shape", *TINY_CD], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return path


Trial = Callable[[], tuple[list[str], Callable[[int], str]]]
"""Prepares one run: its ``concept`` arguments, and a check of the registry afterwards (given the exit code)
that returns what happened."""


def crash_trials(trial: Trial, kills: int, log: Path, seed: int, wanted: tuple[str, ...] = ()) -> Counter[str]:
    """Fork runs until ``kills`` of them were SIGKILLed, alternately at a random moment of the whole run and
    at a random moment of its registry write (or just after it); a run that ends before its kill is counted
    apart and teaches the random span how long a run really takes.

    ``wanted`` outcomes must each be seen: on a loaded machine the write takes longer than it was timed, so
    kills meant to land after the commit land before it. Past the quota, more in-write kills follow (at most
    ``kills``), each drawn from a write span half again as long, until every wanted outcome was seen."""
    time_cli(trial()[0], log)  # the first fork pays a few first-use costs: time the second
    span, write = time_cli(trial()[0], log)
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    for attempt in range(4 * kills):
        done = outcomes.total() - outcomes["finished before the kill"]
        missing = [w for w in wanted if not outcomes[w]]
        if done >= kills and (not missing or done >= 2 * kills):
            break
        if done >= kills:
            write *= 1.5
        argv, check = trial()
        in_write = attempt % 2 == 1 or done >= kills
        started = time.monotonic()
        if in_write:
            code = wait(fork(partial(run_cli, argv, rng.uniform(0, write * WRITE_OVERSHOOT)), log))
        else:
            code = kill_after(fork(partial(run_cli, argv), log), rng.uniform(0, span))
        assert code in (0, -signal.SIGKILL), (code, log.read_text())
        outcome = check(code)
        if code == 0:
            outcomes["finished before the kill"] += 1
            span = min(span, time.monotonic() - started)
        else:
            outcomes[f"killed {'in the write' if in_write else 'at a random moment'}: {outcome}"] += 1
    assert outcomes.total() - outcomes["finished before the kill"] >= kills, outcomes
    killed = outcomes.total() - outcomes["finished before the kill"]
    print(f"\n{killed} SIGKILLs of concept {argv[2]} ({span:.2f} s a run, {write * 1000:.0f} ms its write): "
          f"{dict(outcomes)}")
    return outcomes


def test_sigkill_at_random_moments_of_concept_add_never_half_writes_a_version(registry, tmp_path):
    argv = ["--registry", registry, "add", "shape", *TINY_CD]

    def trial() -> tuple[list[str], Callable[[int], str]]:
        before = check_registry(registry)["shape"]

        def check(code: int) -> str:
            after = check_registry(registry)["shape"]
            for saved in Path(f"{registry}.checkpoints").glob("*/checkpoint.json"):
                Checkpoint(saved.parent, resume=True).verify()  # a killed run's checkpoint stays resumable
            added = after["versions"] - before["versions"]
            assert added == 1 if code == 0 else added in (0, 1), (before, after)
            assert after == before if not added else after["current"] == after["versions"]
            return "version committed" if added else "nothing written"

        return argv, check

    in_write = ("killed in the write: nothing written", "killed in the write: version committed")
    outcomes = crash_trials(trial, ADD_KILLS, tmp_path / "add.log", seed=20, wanted=in_write)
    assert outcomes["killed in the write: nothing written"] and outcomes["killed in the write: version committed"]


@pytest.mark.parametrize("command", ["rollback", "alias"])
def test_sigkill_during_rollback_and_alias_moves_the_pointer_whole_or_not_at_all(registry, tmp_path, command):
    for seed in range(1, 4):
        result = CliRunner().invoke(cli, ["--registry", registry, "add", "shape", *TINY_CD, "--seed", str(seed)])
        assert result.exit_code == 0, result.output
    rng = random.Random(30)

    def pointer(state: dict) -> int | None:
        return state["current"] if command == "rollback" else state["aliases"].get("stable")

    def trial() -> tuple[list[str], Callable[[int], str]]:
        before = check_registry(registry)["shape"]
        target = rng.choice([n for n in range(1, before["versions"] + 1) if n != pointer(before)])
        operation = ["rollback", "shape", "--to"] if command == "rollback" else ["alias", "shape", "stable"]

        def check(code: int) -> str:
            now = pointer(check_registry(registry)["shape"])  # the pointer its last event names
            assert now == target if code == 0 else now in (pointer(before), target), (before, now, target)
            return "moved" if now == target else "unchanged"

        return ["--registry", registry, *operation, str(target)], check

    crash_trials(trial, POINTER_KILLS, tmp_path / f"{command}.log", seed=40)


def test_ctrl_c_during_training_exits_130_in_one_line_writes_nothing_and_resume_finishes(registry, tmp_path):
    """A real ``python -m conceptlib`` process, interrupted by SIGINT while it trains."""
    before = check_registry(registry)
    argv = ["--registry", registry, "add", "shape", *TINY_CD, "--iterations", "100000", "--checkpoint-every", "1"]
    process = subprocess.Popen([sys.executable, "-m", "conceptlib", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    state = Path(f"{registry}.checkpoints")
    deadline = time.monotonic() + 180
    while not list(state.glob("*/checkpoint.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted after iteration" in errors[0] and "--resume" in errors[0], stderr
    assert check_registry(registry) == before
    (saved,) = state.glob("*/checkpoint.json")
    iteration = json.loads(saved.read_text())["iteration"]

    argv[argv.index("100000")] = str(iteration + 2)
    result = CliRunner().invoke(cli, [*argv, "--resume"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    shown = json.loads(CliRunner().invoke(cli, ["--registry", registry, "show", "shape", "--json"]).output)
    assert shown["version"] == 2 and shown["hyperparameters"]["resumed_from_iteration"] == iteration
    assert sorted(p.name for p in state.iterdir()) == ["shape@1-loss.png", "shape@2-loss.png"]  # checkpoint gone
