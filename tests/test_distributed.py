"""Distributed runs on the CPU with gloo: ``torchrun -m conceptlib`` unchanged, two ranks, one registry write.

The training run goes through the real ``torchrun``; the other multi-rank runs fork two ranks from this
(already warm) process with the variables torchrun would set, which skips two fresh torch imports each.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conceptlib.cli import cli
from conceptlib.distributed import TIMEOUT_ENV, TRACE_ENV
from conceptlib.jobs import compose_images
from conceptlib.plugins import PluginManager
from conceptlib.registry import Registry
from conceptlib.settings import AnnealedConfig, SamplerSettings
from tests.conftest import TINY_SAMPLING, TINY_SOURCE, TINY_TRAINING, assert_one_line_error
from tests.reliability import fork, run_cli, wait

TORCHRUN = Path(sys.executable).with_name("torchrun")
PLUGINS = str(Path(__file__).parent / "plugins")
LAUNCH = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
COMPOSE = ["compose", "position=(0.3,0.7)", "-n", "5", "--batch-size", "2", *TINY_SAMPLING]
"""Three batches (2, 2, 1): rank 0 draws samples 0-3, rank 1 sample 4."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def forked_ranks(argv: list[str], logs: Path, env: Mapping[str, str] = {}, world: int = 2) -> list[tuple[int, str]]:
    """``concept ARGV`` as ``world`` ranks forked from this process; each rank's exit code and output."""
    logs.mkdir(parents=True, exist_ok=True)
    port = str(free_port())

    def rank_body(rank: int):
        def body() -> int:
            os.environ.update({"WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
                               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, **env})
            torch.set_num_threads(1)
            return run_cli(argv)

        return body

    pids = [fork(rank_body(rank), logs / f"rank{rank}.log") for rank in range(world)]
    codes = [wait(pid) for pid in pids]
    return [(code, (logs / f"rank{rank}.log").read_text()) for rank, code in enumerate(codes)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``torchrun --nproc-per-node 2 -m conceptlib add position ...`` with each rank tracing its weights."""
    root = tmp_path_factory.mktemp("distributed")
    (root / "trace").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH and not k.startswith("CONCEPTLIB_")}
    env.update({TRACE_ENV: str(root / "trace"), "CONCEPTLIB_CHECKPOINTS": str(root / "checkpoints")})
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "conceptlib",
               "--registry", str(root / "registry.db"), "add", "position", *TINY_SOURCE, *TINY_TRAINING]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return root, done


def test_torchrun_with_two_ranks_writes_one_version_recording_world_size_and_backend(trained):
    root, done = trained
    registry = Registry.open(str(root / "registry.db"))
    (version,) = registry.history("position")
    assert version.hyperparameters["world_size"] == 2 and version.hyperparameters["backend"] == "gloo"
    assert [e.kind for e in registry.events("position")] == ["add"]
    assert done.stdout.count("registered position@1") == 1
    assert not any((root / "checkpoints").rglob("*.safetensors"))  # every rank removed its checkpoint


def test_both_ranks_hold_identical_weights_and_ema_after_every_step(trained):
    root, _ = trained
    rank0, rank1 = ((root / "trace" / f"rank{r}.txt").read_text().splitlines() for r in (0, 1))
    assert [line.split()[0] for line in rank0] == ["1", "2", "3"]
    assert rank0 == rank1


def test_two_torchrun_agents_meeting_at_a_rendezvous_train_as_one_run(tmp_path):
    """Multi-node as torchrun does it (``--nnodes 2``, c10d rendezvous), the two nodes played on this machine."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH and not k.startswith("CONCEPTLIB_")}
    env.update({TRACE_ENV: str(tmp_path / "trace"), "CONCEPTLIB_CHECKPOINTS": str(tmp_path / "checkpoints")})
    command = [str(TORCHRUN), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "two-nodes", "-m", "conceptlib",
               "--registry", str(tmp_path / "registry.db"), "add", "position", *TINY_SOURCE, *TINY_TRAINING]
    nodes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    (version,) = Registry.open(str(tmp_path / "registry.db")).history("position")
    assert version.hyperparameters["world_size"] == 2
    assert "".join(outputs).count("registered position@1") == 1
    rank0, rank1 = ((tmp_path / "trace" / f"rank{r}.txt").read_text() for r in (0, 1))
    assert rank0 == rank1 and len(rank0.splitlines()) == 3


def test_sharded_compose_equals_the_single_process_run_and_is_duplicate_free(trained, tmp_path):
    root, _ = trained
    registry = ["--registry", str(root / "registry.db")]
    ranks = forked_ranks([*registry, *COMPOSE, "--out-dir", str(tmp_path / "sharded")], tmp_path / "logs")
    assert [code for code, _ in ranks] == [0, 0], ranks
    single = CliRunner().invoke(cli, [*registry, *COMPOSE, "--out-dir", str(tmp_path / "single")])
    assert single.exit_code == 0, single.output

    sharded, alone = tmp_path / "sharded", tmp_path / "single"
    manifest = json.loads((sharded / "manifest.json").read_text())
    names = [entry["file"] for entry in manifest["files"]]
    assert len(names) == len(set(names)) == 10 and manifest["ranks"] == 2
    assert sorted(p.name for p in sharded.iterdir()) == sorted([*names, "manifest.json"])
    assert sorted(p.name for p in alone.iterdir()) == sorted(names)
    for entry in manifest["files"]:
        data = (sharded / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        if entry["file"].endswith(".png"):
            assert data == (alone / entry["file"]).read_bytes()
        else:
            sidecars = [{k: v for k, v in json.loads(d).items() if k != "seconds"}
                        for d in (data, (alone / entry["file"]).read_bytes())]
            assert sidecars[0] == sidecars[1]


def test_the_samples_do_not_depend_on_the_rank_count(trained):
    root, _ = trained
    registry, plugins = Registry.open(str(root / "registry.db")), PluginManager()

    def shard(rank: int, ranks: int):
        settings = SamplerSettings(annealed=AnnealedConfig(levels=3), batch_size=2)
        return compose_images(registry, plugins, "position=(0.3,0.7)", 5, settings, seed=3, shard=(rank, ranks))

    whole = shard(0, 1)
    parts = [shard(rank, 3) for rank in range(3)]
    assert [p.first for p in parts] == [0, 2, 4]
    assert torch.equal(torch.from_numpy(whole.images), torch.cat([torch.from_numpy(p.images) for p in parts]))


def test_a_nan_on_one_rank_stops_every_rank_and_registers_nothing(tmp_path):
    db = tmp_path / "registry.db"
    argv = ["--registry", str(db), "--plugins-dir", PLUGINS, "add", "shape", *TINY_SOURCE, *TINY_TRAINING,
            "--objective", "cd", "--arch", "faulty"]
    (tmp_path / "trace").mkdir()
    ranks = forked_ranks(argv, tmp_path / "logs",
                         {"FAULTY": "nan@2", "FAULTY_RANK": "1", TRACE_ENV: str(tmp_path / "trace")})
    assert [code for code, _ in ranks] == [2, 2], ranks
    assert "error: rank 1 stopped: training diverged at iteration 2" in ranks[0][1]
    assert "error: training diverged at iteration 2" in ranks[1][1]
    assert not db.exists()  # a failed add into a new registry leaves no file
    traces = [(tmp_path / "trace" / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert traces[0] == traces[1] and traces[0].startswith("1 model=")  # CD too keeps the ranks in step


def test_two_ranks_write_one_version_to_postgresql(registry_url, tmp_path):
    if not registry_url.startswith("postgresql"):
        pytest.skip("the SQLite case is the torchrun test above")
    ranks = forked_ranks(["--registry", registry_url, "add", "position", *TINY_SOURCE, *TINY_TRAINING],
                         tmp_path / "logs", {"CONCEPTLIB_CHECKPOINTS": str(tmp_path / "checkpoints")})
    assert [code for code, _ in ranks] == [0, 0], ranks
    (version,) = Registry.open(registry_url).history("position")
    assert version.hyperparameters["world_size"] == 2


def test_an_unreachable_rendezvous_is_one_error_line(run, monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, "2")
    for name, value in zip(LAUNCH, ("2", "1", "1", "127.0.0.1", str(free_port()))):
        monkeypatch.setenv(name, value)
    assert_one_line_error(run("add", "position", *TINY_SOURCE, *TINY_TRAINING), "rank 1 could not join the run")


def test_half_a_torchrun_environment_is_one_error_line(run, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in LAUNCH[1:]:
        monkeypatch.delenv(name, raising=False)
    assert_one_line_error(run("compose", "position=(0.3,0.7)", "--out-dir", "x", *TINY_SAMPLING),
                          "RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set")


def test_a_stopped_two_rank_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    argv = ["--plugins-dir", PLUGINS, "add", "position", "--source", "flaky", "--attribute", "position",
            *TINY_SOURCE[2:], *TINY_TRAINING, "--checkpoint-every", "1"]
    env = {"CONCEPTLIB_CHECKPOINTS": str(tmp_path / "checkpoints")}
    whole, cut = str(tmp_path / "whole.db"), str(tmp_path / "cut.db")
    assert [c for c, _ in forked_ranks(["--registry", whole, *argv], tmp_path / "a", env)] == [0, 0]
    stopped = forked_ranks(["--registry", cut, *argv], tmp_path / "b", {**env, "FLAKY_FAIL_AT": "3"})
    assert [c for c, _ in stopped] == [2, 2] and "a checkpoint at iteration 2" in stopped[0][1]
    assert [c for c, _ in forked_ranks(["--registry", cut, *argv, "--resume"], tmp_path / "c", env)] == [0, 0]
    weights = [Registry.open(db).load_weights(Registry.open(db).resolve("position")) for db in (whole, cut)]
    assert all(torch.equal(torch.from_numpy(v), torch.from_numpy(weights[1][k])) for k, v in weights[0].items())
