"""Hostile plugins, sampling requests and checkpoints (issue 25, cases 4, 11, 12 and 13).

Plugins load only from installed entry points and the named plugins directory, also under ``python -m``
and ``torchrun -m``, and one that misbehaves is named in one line; requests that would sample NaN or
allocate without bound are refused in one line before any work; a checkpoint resumes only the run that
made it, against the frozen weights it was made with, and a damaged one says one thing to do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from conceptlib import sampling
from conceptlib.cli import FiniteRange
from conceptlib.errors import ConceptError
from conceptlib.plugins import PluginManager
from conceptlib.settings import Guidance
from conceptlib_scenes.source import ScenesSource
from tests.conftest import TINY_SAMPLING, assert_one_line_error
from tests.hostile import corpus
from tests.hostile.support import dump, one_line_error
from tests.reliability import TINY_CD

ROOT = Path(__file__).resolve().parent.parent.parent
TEST_PLUGINS = str(ROOT / "tests" / "plugins")
COMPOSE = ["compose", "position=(0.5,0.5) & color=red", "-n", "1", *TINY_SAMPLING]


class Reached(Exception):
    """Work the command should have refused to start was started."""


def reached(*args: Any, **kwargs: Any) -> None:
    raise Reached


# ------------------------------------------------------------------ case 4: plugins from where they belong
@pytest.fixture
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding a ``*.dist-info`` whose entry point would create ``ran``; returns ``ran``."""
    folder = tmp_path / "downloads"
    folder.mkdir()
    corpus.plant_distribution(folder, folder / "ran")
    monkeypatch.chdir(folder)
    monkeypatch.delenv("CONCEPTLIB_PLUGINS_DIR", raising=False)
    return folder / "ran"


def test_a_distribution_in_the_working_directory_is_no_plugin_even_on_sys_path(planted, monkeypatch):
    monkeypatch.syspath_prepend(str(planted.parent))  # what python -m does
    manager = PluginManager()
    assert "evil" not in dict(manager.plugins())
    assert not planted.exists()


@pytest.mark.parametrize("launcher", ["python -m", "torchrun -m"])
def test_python_and_torchrun_dash_m_never_load_plugins_from_the_working_directory(planted, launcher):
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "1", "-m"]
    command = [sys.executable, "-m"] if launcher == "python -m" else torchrun
    environment = {**os.environ, "CONCEPTLIB_REGISTRY": str(planted.parent / "none.db"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, "conceptlib", "sources"], cwd=planted.parent, env=environment,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "scenes" in done.stdout and "evil" not in done.stdout
    assert not planted.exists()


# ------------------------------------------------------------------ case 11: sampling requests
def test_a_weight_that_overflows_the_energies_is_refused_at_the_number(run, trained, tmp_path):
    result = run("compose", "1e300*position=(0.5,0.5) & color=red", "-n", "1", "-o", str(tmp_path / "g.png"),
                 *TINY_SAMPLING)
    assert_one_line_error(result, "weight must be at most 1000", "column 1")
    assert not (tmp_path / "g.png").exists()


def test_a_sampler_that_diverges_writes_nothing(run, trained, tmp_path, monkeypatch):
    monkeypatch.setattr(sampling, "langevin", lambda energy, x, *args, **kwargs: x * float("nan"))
    result = run(*COMPOSE, "-o", str(tmp_path / "g.png"), "--out-dir", str(tmp_path / "out"))
    assert_one_line_error(result, "sampling diverged", "nothing was written")
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [(["-n", "10000000"], "GiB"), (["--seed", str(10**26)], "--seed"), (["--batch-size", str(10**12)],
                                                                            "--batch-size")],
    ids=["ten million samples", "seed 1e26", "batch 1e12"],
)
def test_a_request_beyond_the_bounds_is_refused_before_sampling(run, trained, tmp_path, monkeypatch, arguments,
                                                               fragment):
    monkeypatch.setattr(sampling, "langevin", reached)
    result = run(*COMPOSE, "--out-dir", str(tmp_path / "out"), *arguments)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "0", "-1"])
@pytest.mark.parametrize("option", ["--residual-guidance", "--guidance", "--prior-guidance"])
def test_a_guidance_that_is_not_a_finite_positive_number_is_refused_before_sampling(run, trained, tmp_path,
                                                                                    monkeypatch, option, value):
    monkeypatch.setattr(sampling, "langevin", reached)
    monkeypatch.setattr(sampling, "annealed_sample", reached)
    result = run(*COMPOSE, "--out-dir", str(tmp_path / "out"), option, value)
    assert_one_line_error(result, option)
    assert not (tmp_path / "out").exists()


def test_the_library_refuses_a_residual_guidance_that_is_not_a_finite_positive_number():
    for value in (float("nan"), float("inf"), 0.0, -2.0):
        with pytest.raises(ConceptError, match="--residual-guidance must be a finite number above 0"):
            Guidance(residual=value)  # the settings every sampler call takes: refused before anything is read


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("option", ["--lr", "--step-size", "--condition-dropout"])
def test_a_training_number_that_is_not_finite_is_refused_before_training(run, registry_path, monkeypatch, option,
                                                                         value):
    monkeypatch.setattr(ScenesSource, "load", reached)
    assert_one_line_error(run("add", "shape", *TINY_CD, option, value), option)
    assert not registry_path.exists()


def test_a_finite_number_in_range_still_passes():
    assert FiniteRange(0, min_open=True).convert("1.5", None, None) == 1.5


def test_a_seed_beyond_the_bound_is_refused_before_training(run, registry_path, monkeypatch):
    monkeypatch.setattr(ScenesSource, "load", reached)
    assert_one_line_error(run("add", "shape", *TINY_CD, "--seed", str(10**26)), "--seed")
    assert not registry_path.exists()


def test_a_decompression_bomb_is_refused_from_its_header(run, trained, tmp_path):
    bomb = tmp_path / "scene.png"
    bomb.write_bytes(corpus.png_bomb())
    before = dump(trained)
    assert_one_line_error(run("infer", "shape", str(bomb), "--device", "cpu"), "more pixels", "resize it first")
    assert dump(trained) == before


def test_source_sample_refuses_a_dataset_that_cannot_fit_in_memory(run, tmp_path, monkeypatch):
    monkeypatch.setattr(ScenesSource, "load", reached)
    result = run("source", "sample", "scenes", "-n", "10000000", "--out-dir", str(tmp_path / "out"))
    assert_one_line_error(result, "GiB in memory", "lower n or image_size")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ case 12: misbehaving plugins
@pytest.mark.parametrize("plugin", list(corpus.MISBEHAVING_HOOKS))
def test_a_misbehaving_plugin_is_named_in_one_line(run, tmp_path, plugin):
    folder = tmp_path / "plugins"
    corpus.write_plugin(folder, plugin)
    for args in (["sources"], ["source", "sample", "scenes", "--out-dir", str(tmp_path / "out")]):
        result = run("--plugins-dir", str(folder), *args)
        assert_one_line_error(result, plugin)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ case 13: checkpoints
FLAKY = ["--source", "flaky", *TINY_CD[2:], "--checkpoint-every", "1"]


def stop(run, monkeypatch, *extra: str, at: int = 3) -> None:
    """``concept add shape`` on the flaky source, stopped by a failing label read (its checkpoint kept)."""
    monkeypatch.setenv("FLAKY_FAIL_AT", str(at))
    result = run("--plugins-dir", TEST_PLUGINS, "add", "shape", *FLAKY, *extra)
    monkeypatch.delenv("FLAKY_FAIL_AT")
    assert_one_line_error(result, "checkpoint at iteration")


def resume(run, *extra: str):
    return run("--plugins-dir", TEST_PLUGINS, "add", "shape", *FLAKY, *extra, "--resume")


def checkpoints(registry_path: Path) -> list[Path]:
    return sorted(registry_path.parent.glob(f"{registry_path.name}.checkpoints/*/checkpoint.json"),
                  key=lambda p: p.stat().st_mtime)


def edit_checkpoint(path: Path, change) -> None:
    document = json.loads(path.read_text())
    path.write_text(change(document) if callable(change) else change)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("[1, 2, 3]", "expected an object"), ("[" * 100_000 + "]" * 100_000, "nested deeper"),
     (lambda d: json.dumps({**d, "iteration": 10**30}), "iteration"),
     (lambda d: json.dumps({**d, "iteration": -5}), "iteration"),
     (lambda d: json.dumps({**d, "tensors": "../../../../etc/hostname"}), "state-<sha256>.safetensors")],
    ids=["a list", "nested 100,000 deep", "iteration 1e30", "iteration -5", "tensors outside the folder"],
)
def test_a_hostile_checkpoint_is_refused_in_one_line(run, registry_path, monkeypatch, content, fragment):
    stop(run, monkeypatch)
    (state,) = checkpoints(registry_path)
    edit_checkpoint(state, content)
    result = resume(run)
    assert_one_line_error(result, fragment, "start again without --resume")
    assert "continue with" not in result.output
    assert not registry_path.exists()


def test_a_checkpoint_pointing_at_an_endless_file_is_refused_without_reading_it(bounded, run, registry_path,
                                                                                monkeypatch):
    stop(run, monkeypatch)
    (state,) = checkpoints(registry_path)
    edit_checkpoint(state, lambda d: json.dumps({**d, "tensors": "/dev/zero"}))
    code, output = bounded("--registry", str(registry_path), "--plugins-dir", TEST_PLUGINS, "add", "shape", *FLAKY,
                           "--resume", timeout=120)
    one_line_error(code, output, "state-<sha256>.safetensors")


def test_a_checkpoint_copied_from_another_run_is_refused(run, registry_path, monkeypatch):
    stop(run, monkeypatch)
    stop(run, monkeypatch, "--seed", "1")
    mine, theirs = checkpoints(registry_path)
    for path in theirs.parent.iterdir():
        path.unlink()
    for path in mine.parent.iterdir():
        shutil.copy(path, theirs.parent / path.name)
    assert_one_line_error(resume(run, "--seed", "1"), "made by another run", "start again without --resume")
    assert not registry_path.exists()


def test_a_checkpoint_made_against_frozen_weights_that_changed_is_refused(run, registry_path, monkeypatch):
    assert run("add", "position", *TINY_CD).exit_code == 0
    stop(run, monkeypatch, "--with", "position", at=6)
    for path in registry_path.parent.glob(f"{registry_path.name}*"):
        if path.is_file():
            path.unlink()
    assert run("add", "position", *TINY_CD, "--seed", "1").exit_code == 0  # another position@1
    before = dump(registry_path)
    result = resume(run, "--with", "position")
    assert_one_line_error(result, "other weights of position@1", "start again without --resume")
    assert dump(registry_path) == before


def test_a_damaged_checkpoint_says_one_thing_to_do(run, registry_path, monkeypatch):
    stop(run, monkeypatch)
    (state,) = checkpoints(registry_path)
    (tensors,) = state.parent.glob("state-*.safetensors")
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    result = resume(run)
    assert_one_line_error(result, "damaged", "start again without --resume")
    assert "continue with" not in result.output and "--resume'" not in result.output
    assert not registry_path.exists()


def test_an_intact_checkpoint_still_resumes(run, registry_path, monkeypatch):
    stop(run, monkeypatch)
    result = resume(run)
    assert result.exit_code == 0, result.output
    assert torch.isfinite(torch.tensor(json.loads(run("show", "shape", "--json").output)["metrics"]["loss"]))
