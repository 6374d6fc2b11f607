"""Training faults: NaN energies, exploding gradients and a failing source stop the run with a diagnosis,
register nothing, and leave a checkpoint from which ``concept add --resume`` continues, bit for bit."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conceptlib.checkpoints import Checkpoint
from conceptlib.errors import TrainingError
from conceptlib.plugins import PluginManager
from conceptlib.registry import Registry
from conceptlib.training import train_concept
from tests.conftest import assert_one_line_error
from tests.reliability import TINY_CD
from tests.test_training import TINY_NET, tiny_config

PLUGINS = str(Path(__file__).parent / "plugins")
CPU = torch.device("cpu")
ITERATIONS = 6
ARCHITECTURES = {"cd": "small", "dsm": "unet", "classifier": "classifier", "denoiser": "unet"}


@pytest.fixture(scope="module")
def plugins() -> PluginManager:
    return PluginManager(plugins_dir=PLUGINS)


@pytest.fixture(scope="module")
def dataset(plugins):
    source = plugins.source("scenes")
    return source.load(source.resolve_params({"n": 64, "image_size": 16}))


def train(plugins, dataset, objective: str, checkpoint: Checkpoint | None = None, stop_after: int = 0):
    """A tiny seeded run; ``stop_after`` makes it fail right after that iteration's update."""

    def on_iteration(iteration: int, _record: dict) -> None:
        if iteration == stop_after:
            raise RuntimeError("stopped on purpose")

    architecture = plugins.architecture(ARCHITECTURES[objective])
    config = tiny_config(objective=objective, iterations=ITERATIONS, warmup=2)
    return train_concept(architecture, architecture.config(TINY_NET), dataset, "shape", [], config, CPU,
                         on_iteration, checkpoint=checkpoint)


@pytest.mark.parametrize("objective", ["cd", "dsm", "classifier", "denoiser"])
def test_a_resumed_seeded_run_reproduces_the_uninterrupted_one_bit_for_bit(plugins, dataset, tmp_path, objective):
    whole = train(plugins, dataset, objective)
    with pytest.raises(RuntimeError):
        train(plugins, dataset, objective, Checkpoint(tmp_path, every=1, total=ITERATIONS), stop_after=4)
    resumed = train(plugins, dataset, objective, Checkpoint(tmp_path, every=1, resume=True, total=ITERATIONS))
    assert resumed.history == whole.history
    expected = whole.model.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in resumed.model.state_dict().items())


def test_a_damaged_checkpoint_is_refused_instead_of_resumed(plugins, dataset, tmp_path):
    train(plugins, dataset, "cd", Checkpoint(tmp_path, every=2, total=ITERATIONS))
    (tensors,) = tmp_path.glob("state-*.safetensors")
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(TrainingError, match="damaged"):
        train(plugins, dataset, "cd", Checkpoint(tmp_path, resume=True, total=ITERATIONS))


def test_the_checkpoint_holds_no_pickle_only_safetensors_and_json(plugins, dataset, tmp_path):
    train(plugins, dataset, "cd", Checkpoint(tmp_path, every=2, total=ITERATIONS))
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".safetensors"]
    saved = json.loads((tmp_path / "checkpoint.json").read_text())
    assert saved["iteration"] == ITERATIONS and len(saved["history"]) == ITERATIONS


@pytest.mark.parametrize("objective", ["dsm", "classifier"])
@pytest.mark.parametrize(("fault", "diagnosis"), [("nan", "the loss became nan"), ("explode", "exploding gradients")])
def test_the_noise_conditioned_objectives_stop_on_nan_energies_and_exploding_gradients(plugins, dataset, objective,
                                                                                       fault, diagnosis):
    inner = plugins.architecture(ARCHITECTURES[objective])

    def build(schema, image_size, config):
        model = inner.build(schema, image_size, config)
        if fault == "nan":
            model.register_forward_hook(lambda _module, _inputs, energy: energy * float("nan"))
        else:
            for parameter in model.parameters():
                parameter.register_hook(lambda grad: grad * float("inf"))
        return model

    architecture = replace(inner, build=build)
    config = tiny_config(objective=objective, iterations=ITERATIONS, warmup=2)
    with pytest.raises(TrainingError, match=f"diverged at iteration 1: .*{diagnosis}"):
        train_concept(architecture, architecture.config(TINY_NET), dataset, "shape", [], config, CPU)


# ------------------------------------------------------------ through the CLI
def add(run, *extra: str, registry: str | None = None):
    """``concept add shape`` with the faulty test plugins, tiny, and a checkpoint after every iteration."""
    chosen = ["--registry", registry] if registry else []
    return run(*chosen, "--plugins-dir", PLUGINS, "add", "shape", *TINY_CD, "--checkpoint-every", "1", *extra)


def versions(registry_path: Path) -> list[int]:
    if not registry_path.exists():
        return []
    registry = Registry.open(str(registry_path))
    try:
        return [v.number for c in registry.concepts() for v in registry.history(c.name)]
    finally:
        registry.close()


@pytest.mark.parametrize(
    ("fault", "args", "diagnosis"),
    [
        ({"FLAKY_FAIL_AT": "3"}, ["--source", "flaky"], ["source 'flaky' failed after iteration 2: OSError"]),
        ({"FAULTY": "nan@3"}, ["--arch", "faulty"], ["diverged at iteration 3: the loss became nan"]),
        ({"FAULTY": "explode@3"}, ["--arch", "faulty"], ["diverged at iteration 3", "exploding gradients"]),
    ],
    ids=["source raises", "nan energies", "exploding gradients"],
)
def test_a_fault_stops_the_run_registers_nothing_and_resume_finishes_it(run, registry_path, monkeypatch, fault,
                                                                         args, diagnosis):
    for name, value in fault.items():
        monkeypatch.setenv(name, value)
    result = add(run, *args, "--iterations", "5")
    assert_one_line_error(result, *diagnosis, "nothing was registered", "checkpoint at iteration 2", "--resume")
    assert versions(registry_path) == []
    for name in fault:
        monkeypatch.delenv(name)
    result = add(run, *args, "--iterations", "5", "--resume")
    assert result.exit_code == 0, result.output
    shown = json.loads(run("show", "shape", "--json").output)
    assert shown["hyperparameters"]["resumed_from_iteration"] == 2
    left = [p.name for p in registry_path.parent.glob("*.checkpoints/*")]
    assert left == ["shape@1-loss.png"]  # the checkpoint was removed once registered; the loss curve stays


def test_a_run_resumed_after_its_source_failed_registers_the_weights_of_an_uninterrupted_run(run, registry_path,
                                                                                            tmp_path, monkeypatch):
    monkeypatch.setenv("FLAKY_FAIL_AT", "4")
    assert add(run, "--source", "flaky", "--iterations", "6").exit_code == 2
    monkeypatch.delenv("FLAKY_FAIL_AT")
    assert add(run, "--source", "flaky", "--iterations", "6", "--resume").exit_code == 0
    other = str(tmp_path / "uninterrupted.db")
    assert add(run, "--source", "flaky", "--iterations", "6", registry=other).exit_code == 0
    resumed, whole = (json.loads(run("--registry", r, "show", "shape", "--json").output)
                      for r in (str(registry_path), other))
    assert resumed["metrics"]["loss"] == whole["metrics"]["loss"]
    a, b = (Registry.open(r) for r in (str(registry_path), other))
    left, right = (reg.load_weights(reg.resolve("shape")) for reg in (a, b))
    assert all(np.array_equal(left[k], right[k]) for k in left)


def test_resume_with_nothing_to_resume_is_a_one_line_error(run, registry_path):
    result = add(run, "--resume")
    assert_one_line_error(result, "nothing to resume", "only --iterations and --lr may change")
    assert versions(registry_path) == []


def test_a_resumed_run_may_train_longer(run, registry_path, monkeypatch):
    monkeypatch.setenv("FLAKY_FAIL_AT", "3")
    assert add(run, "--source", "flaky", "--iterations", "4").exit_code == 2
    monkeypatch.delenv("FLAKY_FAIL_AT")
    assert add(run, "--source", "flaky", "--iterations", "7", "--resume").exit_code == 0
    shown = json.loads(run("show", "shape", "--json").output)
    assert shown["hyperparameters"]["iterations"] == 7
