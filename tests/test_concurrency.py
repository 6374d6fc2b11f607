"""Concurrency: processes adding, rolling back and composing against one registry at once, on each backend.

SQLite always; PostgreSQL when ``$CONCEPTLIB_TEST_POSTGRES`` names a server (``.ci/run`` starts one). No
"database is locked" reaches a user: every command succeeds or refuses for a reason of its own, version
numbers stay dense and unique, and every version a writer was told about is there with its weights.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from conceptlib.cli import cli
from conceptlib.registry import NewVersion, Registry, api, engine
from conceptlib.schema import Categorical
from tests.conftest import assert_one_line_error
from tests.reliability import TINY_CD, check_registry, fork, wait

SECONDS = 30.0
WORKERS = ("train", "write", "rollback", "compose")
"""concept add (real, tiny training); the Python API adding versions as fast as it can; concept rollback
and concept alias; concept compose of the current version."""


def invoke(url: str, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["--registry", url, *args])
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    return {"op": args[0], "code": result.exit_code, "output": result.output[-400:],
            "exception": repr(result.exception) if crashed else None}


def work(kind: str, url: str, until: float, out: Path, seed: int) -> int:
    """One worker process: repeat its kind of operation until ``until`` (wall clock); write what happened."""
    rng = random.Random(seed)
    ops: list[dict[str, Any]] = []
    registry = Registry.open(url)
    base = registry.resolve("shape", 1)
    weights = registry.load_weights(base)
    while time.time() < until:
        if kind == "train":
            op = invoke(url, "add", "shape", *TINY_CD, "--seed", str(len(ops)))
            found = re.search(r"registered shape@(\d+)", op["output"])
            op["number"] = int(found.group(1)) if found else None
        elif kind == "write":
            delta = float(len(ops) + 1)
            new = NewVersion(base.concept, base.schema, base.architecture, base.architecture_config, base.source,
                             base.source_params, base.attribute, base.dataset_hash, base.hyperparameters, base.seed,
                             base.metrics)
            number = registry.add_version(new, {k: v + delta for k, v in weights.items()}).number
            op = {"op": "write", "code": 0, "number": number, "delta": delta, "output": "", "exception": None}
        elif kind == "rollback":
            target = str(rng.randint(1, registry.concept("shape").versions))
            op = invoke(url, *(["rollback", "shape", "--to", target] if rng.random() < 0.5
                               else ["alias", "shape", "stable", target]))
        else:
            op = invoke(url, "compose", "shape=circle", "-n", "1", "--steps", "2", "--device", "cpu",
                        "-o", str(out.with_suffix(".png")))
        ops.append(op)
    registry.close()
    out.write_text(json.dumps(ops))
    return 0


def refused_for_its_own_reason(op: dict[str, Any]) -> bool:
    """The one refusal a racing rollback may meet: the version it names became current meanwhile."""
    return op["op"] == "rollback" and op["code"] == 2 and "is already the current version" in op["output"]


def test_four_processes_adding_rolling_back_and_composing_for_30_s_lose_nothing(registry_url, tmp_path):
    result = CliRunner().invoke(cli, ["--registry", registry_url, "add", "shape", *TINY_CD])
    assert result.exit_code == 0, result.output
    start = time.time() + 1.0
    until = start + SECONDS
    pids = {kind: fork(partial(work, kind, registry_url, until, tmp_path / f"{kind}.json", seed),
                       tmp_path / f"{kind}.log") for seed, kind in enumerate(WORKERS)}
    codes = {kind: wait(pid, timeout=SECONDS + 300) for kind, pid in pids.items()}
    elapsed = time.time() - start
    logs = {kind: (tmp_path / f"{kind}.log").read_text() for kind in WORKERS}
    assert codes == dict.fromkeys(WORKERS, 0), logs
    ops = [op for kind in WORKERS for op in json.loads((tmp_path / f"{kind}.json").read_text())]

    failures = [op for op in ops if op["exception"] or (op["code"] != 0 and not refused_for_its_own_reason(op))]
    assert failures == []
    password = make_url(registry_url).password if "://" in registry_url else None
    for op in ops:
        assert "locked" not in op["output"] and "Traceback" not in op["output"], op
        assert password is None or password not in op["output"], "a password was printed"

    state = check_registry(registry_url)["shape"]  # dense numbers, every version loads, pointers match events
    told = sorted(op["number"] for op in ops if op["op"] in ("add", "write") and op["code"] == 0)
    assert told == list(range(2, state["versions"] + 1)), "a version was lost or numbered twice"
    registry = Registry.open(registry_url)
    base = registry.load_weights(registry.resolve("shape", 1))
    for op in ops:
        if op["op"] == "write":
            stored = registry.load_weights(registry.resolve("shape", op["number"]))
            assert all(np.array_equal(stored[k], base[k] + op["delta"]) for k in base)
    registry.close()
    counts = Counter(op["op"] for op in ops)
    backend = registry_url.split(":")[0] if "://" in registry_url else "sqlite"
    print(f"\n{backend}: {len(ops)} operations by {len(WORKERS)} processes in {elapsed:.1f} s "
          f"({dict(counts)}), {state['versions']} versions, "
          f"{sum(map(refused_for_its_own_reason, ops))} rollbacks refused as already current, 0 failures")


@contextmanager
def holding_the_write_lock(url: str) -> Iterator[None]:
    """Another process's long write transaction, as this process sees it."""
    if "://" not in url:
        with closing(sqlite3.connect(url, isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")
            yield
            db.rollback()
        return
    other = create_engine(url)
    with other.connect() as connection, connection.begin():
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({engine.WRITE_LOCK_KEY})")
        yield
    other.dispose()


def test_a_registry_held_longer_than_the_retry_bound_is_one_clear_line(registry_url, monkeypatch):
    registry = Registry.open(registry_url, create=True)
    new = NewVersion("shape", Categorical(("circle", "square")), "small", {}, "scenes", {}, "shape", "d" * 64,
                     hyperparameters={}, seed=0, metrics={})
    registry.add_version(new, {"w": np.zeros(2, np.float32)})
    registry.close()
    monkeypatch.setattr(api, "WRITE_RETRY_SECONDS", 1.0)
    monkeypatch.setattr(engine, "BUSY_TIMEOUT_MS", 200)
    with holding_the_write_lock(registry_url):
        started = time.monotonic()
        result = CliRunner().invoke(cli, ["--registry", registry_url, "alias", "shape", "stable", "1"])
        waited = time.monotonic() - started
    assert_one_line_error(result, "stayed busy for 1 s", "try again")
    assert 1.0 <= waited < 10.0
    result = CliRunner().invoke(cli, ["--registry", registry_url, "alias", "shape", "stable", "1"])
    assert result.exit_code == 0, result.output
