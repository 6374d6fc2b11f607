"""The ``concept`` CLI end to end, through CliRunner and a temporary registry."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from conceptlib import jobs
from tests.conftest import TINY_SAMPLING, TINY_SOURCE, TINY_TRAINING, assert_one_line_error


def sidecar(directory: Path, index: int = 0) -> dict:
    return json.loads((directory / f"sample_{index:05d}.json").read_text())


def test_end_to_end_add_compose_list_rollback_compose_uses_older_version(run, add_tiny, tmp_path):
    add_tiny("position")
    add_tiny("color", "--with", "position")

    first = tmp_path / "first"
    result = run("compose", "position=(0.3,0.7) & color=red", "-n", "4", "-o", str(tmp_path / "grid.png"),
                 "--out-dir", str(first), *TINY_SAMPLING)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "grid.png").size[0] > 0
    assert set(sidecar(first)["versions"]) == {"position@1", "color@1"}

    add_tiny("color", "--with", "position", "--seed", "1")
    listed = json.loads(run("list", "--json").output)
    assert {c["name"]: c["current"] for c in listed} == {"color": 2, "position": 1}

    assert run("rollback", "color").exit_code == 0
    again = tmp_path / "again"
    result = run("compose", "position=(0.3,0.7) & color=red", "-n", "2", "--out-dir", str(again), *TINY_SAMPLING)
    assert result.exit_code == 0, result.output
    assert set(sidecar(again)["versions"]) == {"position@1", "color@1"}


def test_add_records_lineage_dataset_hash_and_hyperparameters(run, add_tiny):
    add_tiny("position")
    add_tiny("color", "--with", "position@1")
    shown = json.loads(run("show", "color", "--json").output)
    assert shown["lineage"] == ["position@1"]
    assert len(shown["dataset_hash"]) == 64
    assert shown["hyperparameters"]["iterations"] == 3
    assert shown["hyperparameters"]["objective"] == "residual"  # auto: a concept added to frozen ones
    assert shown["architecture"] == "residual"
    position = json.loads(run("show", "position", "--json").output)
    assert position["hyperparameters"]["objective"] == "denoiser" and position["architecture"] == "unet"
    assert position["hyperparameters"]["schedule"] == "cosine"
    assert shown["source_params"]["n"] == 256
    assert shown["metrics"]["seconds"] > 0


def test_seeded_training_is_reproducible(run, add_tiny):
    add_tiny("size")
    add_tiny("size")
    first, second = json.loads(run("history", "size", "--json").output)
    assert first["metrics"]["loss"] == second["metrics"]["loss"]


def test_compose_sidecar_records_expression_sampler_and_seed(run, add_tiny, tmp_path):
    add_tiny("shape")
    out = tmp_path / "out"
    result = run("compose", "shape=circle", "-n", "3", "--out-dir", str(out), "--seed", "7", *TINY_SAMPLING)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["sample_00000.png", "sample_00001.png", "sample_00002.png"]
    meta = sidecar(out, 2)
    assert meta["expression"] == "shape=circle"
    assert meta["seed"] == 7 and meta["index"] == 2
    assert meta["sampler"]["name"] == "annealed" and meta["sampler"]["levels"] == 3
    assert meta["sampler"]["prior"] == "shape@1" and meta["sampler"]["prior_guidance"] == 1.0
    # counted as spent: 3 levels + 4 corrector steps at each, every one a conditioned and a null estimate
    assert meta["network_evaluations"] == {"forward": 2 * (3 + 4 * 3), "backward": 0.0,
                                           "by_network": {"shape@1": {"forward": 30.0, "backward": 0.0}}}


@pytest.mark.parametrize("command", ["compose", "eval"])
def test_sampler_options_default_to_the_library_settings(command):
    """The CLI's defaults are read from SamplerSettings, so a notebook calling the library with defaults samples
    what `concept compose` does; its options' names are the ones SamplerSettings reads and sidecars record."""
    from conceptlib.cli import option_defaults
    from conceptlib.settings import AnnealedConfig, ClassifierBoost, Guidance, SamplerSettings

    defaults = option_defaults(command)
    config = AnnealedConfig()
    for field in ("levels", "corrector", "corrector_steps", "corrector_step", "eta"):
        assert defaults[field] == getattr(config, field), field
    settings = SamplerSettings.from_options(defaults)
    assert settings == SamplerSettings()
    assert settings.guidance.to_json() == {name: defaults[name] for name in Guidance().to_json()}
    assert settings.guidance.boost == ClassifierBoost() and settings.annealed == config
    assert (settings.guidance.scale, settings.guidance.classifier, settings.guidance.classifier_temperature) == (
        defaults["guidance"], defaults["classifier_guidance"], defaults["classifier_temperature"])


def test_training_options_default_to_the_objectives_configs():
    from conceptlib.cli import option_defaults
    from conceptlib.settings import CdConfig, DsmConfig

    defaults = option_defaults("add")
    cd = CdConfig()
    assert (defaults["l2"], defaults["steps"], defaults["step_size"], defaults["noise"], defaults["lr"]) == (
        cd.l2, cd.langevin.steps, cd.langevin.step_size, cd.langevin.noise, cd.lr)
    assert defaults["condition_dropout"] == DsmConfig().condition_dropout


def test_compose_with_the_same_seed_gives_the_same_images(run, add_tiny, tmp_path):
    add_tiny("shape")
    for name in ("a", "b"):
        run("compose", "shape=square | shape=circle", "-n", "2", "--out-dir", str(tmp_path / name), *TINY_SAMPLING)
    assert (tmp_path / "a" / "sample_00001.png").read_bytes() == (tmp_path / "b" / "sample_00001.png").read_bytes()


def test_history_alias_and_show_by_alias(run, add_tiny):
    add_tiny("shape")
    add_tiny("shape", "--seed", "3")
    assert run("alias", "shape", "stable", "1").exit_code == 0
    assert json.loads(run("show", "shape@stable", "--json").output)["version"] == 1
    history = json.loads(run("history", "shape", "--json").output)
    assert [v["version"] for v in history] == [1, 2]
    assert history[0]["aliases"] == ["stable"]
    assert run("alias", "shape", "stable", "--delete").exit_code == 0
    assert_one_line_error(run("show", "shape@stable"), "no alias 'stable'")


def test_every_command_closes_the_registry_it_opened(run, add_tiny, monkeypatch):
    """Pooled connections go back when a command ends, not at garbage collection: a process running many
    commands (a test runner, a notebook) on PostgreSQL hit 'too many clients' (tests/test_concurrency.py)."""
    from conceptlib.registry import Registry

    add_tiny("shape")
    opened, closed = [], []
    real_open, real_close = Registry.open.__func__, Registry.close
    monkeypatch.setattr(Registry, "open", classmethod(lambda cls, *a, **k: opened.append(1) or real_open(cls, *a, **k)))
    monkeypatch.setattr(Registry, "close", lambda self: closed.append(1) or real_close(self))
    for args in (("show", "shape"), ("history", "shape"), ("alias", "shape", "stable", "1"),
                 ("rollback", "shape", "--to", "1"), ("show", "nothing")):
        run(*args)
        assert len(opened) == len(closed) > 0, args  # also when the command fails


def test_rollback_to_a_version_and_undo(run, add_tiny):
    add_tiny("size")
    add_tiny("size", "--seed", "2")
    assert "2 -> 1" in run("rollback", "size", "--to", "1").output
    assert "1 -> 2" in run("rollback", "size", "--to", "2").output
    assert json.loads(run("show", "size", "--json").output)["version"] == 2


def test_sources_lists_first_party_plugins(run):
    listed = json.loads(run("sources", "--json").output)
    names = {(row["kind"], row["name"]) for row in listed}
    assert {("source", "scenes"), ("architecture", "small")} <= names


def test_source_sample_writes_pngs_and_labels(run, tmp_path):
    out = tmp_path / "scenes"
    result = run("source", "sample", "scenes", "-n", "5", "--out-dir", str(out))
    assert result.exit_code == 0, result.output
    labels = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 5
    assert set(labels[0]) == {"file", "shape", "color", "position", "size"}
    assert (out / labels[0]["file"]).exists()


def test_list_on_an_empty_new_registry_says_how_to_start(run, add_tiny):
    add_tiny("shape")
    assert "shape" in run("list").output


# ------------------------------------------------------------- bad input
def test_missing_registry_is_a_one_line_error(run):
    assert_one_line_error(run("list"), "no registry at", "concept add")


def test_unknown_concept_is_a_one_line_error(run, add_tiny, tmp_path):
    add_tiny("shape")
    result = run("compose", "colour=red", "-o", str(tmp_path / "g.png"), *TINY_SAMPLING)
    assert_one_line_error(result, "'colour' is not in the registry", "shape")


def test_unknown_version_is_a_one_line_error(run, add_tiny):
    add_tiny("shape")
    assert_one_line_error(run("show", "shape@9"), "no version 9")


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [("position=(0.3)", "takes 2 numbers"), ("color=purple", "one of red"), ("position=red", "got the name"),
     ("position=(0.3,1.7)", "must lie in [0, 1]")],
)
def test_wrong_condition_is_a_one_line_error(run, add_tiny, tmp_path, expression, fragment):
    add_tiny("position")
    add_tiny("color")
    result = run("compose", expression, "-o", str(tmp_path / "g.png"), *TINY_SAMPLING)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "g.png").exists()


def test_bad_expression_points_at_the_token_with_a_caret(run, add_tiny, tmp_path):
    add_tiny("shape")
    result = run("compose", "shape=circle & & shape=square", "-o", str(tmp_path / "g.png"))
    assert_one_line_error(result, "column 16")
    assert result.output.splitlines()[-1].index("^") == 2 + 15


def test_unknown_source_is_a_one_line_error(run):
    assert_one_line_error(run("add", "shape", "--source", "nowhere"), "unknown source 'nowhere'", "scenes")


def test_unknown_attribute_is_a_one_line_error(run):
    assert_one_line_error(run("add", "mood", "--source", "scenes"), "no attribute 'mood'", "--attribute")


def test_bad_source_param_is_a_one_line_error(run):
    assert_one_line_error(run("add", "shape", "--source", "scenes", "--param", "image_size=big"), "image_size")


def test_usage_error_is_one_line_with_exit_2(run):
    assert_one_line_error(run("compose"), "EXPRESSION")


@pytest.mark.parametrize(
    "damage",
    ["substr(data, 1, length(data) - 8)", "substr(data, 1, length(data) - 4) || x'00000000'", "zeroblob(length(data))"],
)
def test_corrupt_blob_is_refused_with_a_clear_error(run, add_tiny, registry_path, tmp_path, damage):
    add_tiny("shape")
    with sqlite3.connect(registry_path) as db:
        db.execute(f"UPDATE blobs SET data = {damage}")
    result = run("compose", "shape=circle", "-o", str(tmp_path / "g.png"), *TINY_SAMPLING)
    assert_one_line_error(result, "corrupt")


def test_frozen_concept_from_another_image_size_is_refused(run, add_tiny):
    add_tiny("position")
    result = run("add", "color", "--source", "scenes", "--param", "n=64", "--with", "position", "--iterations", "1")
    assert_one_line_error(result, "16px")
    assert "color" not in run("list").output


def test_ctrl_c_during_training_exits_130_and_writes_nothing(run, add_tiny, monkeypatch):
    add_tiny("shape")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "train_concept", interrupted)
    result = run("add", "shape", "--source", "scenes", "--param", "n=64", "--param", "image_size=16")
    assert_one_line_error(result, "interrupted", "nothing was written", code=130)
    assert [v["version"] for v in json.loads(run("history", "shape", "--json").output)] == [1]


def test_diverging_training_registers_nothing(run, add_tiny):
    add_tiny("shape")
    result = run("add", "size", "--source", "scenes", "--param", "n=64", "--param", "image_size=16",
                 "--lr", "1e6", "--l2", "0", "--iterations", "30", "--batch-size", "4", "--steps", "1")
    assert_one_line_error(result, "diverged", "nothing was registered")
    assert "size" not in run("list").output


def test_the_papers_contrastive_divergence_stays_available(run, add_tiny, tmp_path):
    add_tiny("position", "--objective", "cd")
    add_tiny("color", "--objective", "cd", "--with", "position")
    shown = json.loads(run("show", "color", "--json").output)
    assert shown["hyperparameters"]["objective"] == "cd" and shown["architecture"] == "small"
    assert "energy_gap" in shown["metrics"]
    out = tmp_path / "cd"
    result = run("compose", "position=(0.3,0.7) & color=red", "-n", "2", "--out-dir", str(out), *TINY_SAMPLING)
    assert result.exit_code == 0, result.output
    assert sidecar(out, 0)["sampler"]["name"] == "langevin"


def test_mixing_objectives_in_one_expression_is_a_one_line_error(run, add_tiny, tmp_path):
    add_tiny("position")
    add_tiny("color", "--objective", "cd")
    result = run("compose", "position=(0.3,0.7) & color=red", "-o", str(tmp_path / "g.png"), *TINY_SAMPLING)
    assert_one_line_error(result, "mixes concepts")


def test_a_classifier_concept_reports_its_held_out_accuracy(run, add_tiny):
    add_tiny("position")
    add_tiny("shape", "--with", "position", "--objective", "classifier")
    metrics = json.loads(run("show", "shape", "--json").output)["metrics"]
    held_out = 256 // 20  # the last 5 % of TINY_SOURCE's 256 images: the accuracy is a count of them
    assert metrics["held_out_accuracy"] * held_out == pytest.approx(round(metrics["held_out_accuracy"] * held_out))


def test_a_denoiser_prior_composes_with_classifiers_and_refuses_mala(run, add_tiny, tmp_path):
    add_tiny("position")  # auto: a first concept is a denoiser
    add_tiny("color", "--with", "position", "--objective", "classifier")
    out = tmp_path / "out"
    result = run("compose", "position=(0.3,0.7) & !color=red", "-n", "2", "--out-dir", str(out),
                 "--classifier-guidance", "4", "--classifier-boost-max", "2", "--corrector-above", "0.2",
                 *TINY_SAMPLING)
    assert result.exit_code == 0, result.output
    sampler = sidecar(out)["sampler"]
    assert sampler["classifier_guidance"] == 4.0 and sampler["prior"] == "position@1"
    assert sampler["corrector_above"] == 0.2  # set explicitly, so recorded (unset, only residual chains record it)
    assert sampler["classifier_boost_below"] == 0.3 and sampler["classifier_boost_max"] == 2.0
    assert sampler["classifier_temperature"] == 2.0  # the CLI's default reading of categorical classifiers
    spent = sidecar(out)["network_evaluations"]["by_network"]  # the classifier's gradient goes through the prior
    assert spent["color@1"]["backward"] == spent["color@1"]["forward"] == spent["position@1"]["backward"] > 0
    refused = run("compose", "color=red", "-n", "2", "-o", str(tmp_path / "g.png"), "--corrector", "mala",
                  *TINY_SAMPLING)
    assert_one_line_error(refused, "MALA corrector needs an energy", "--corrector ula")
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize(("option", "value", "fragment"), [("--classifier-boost-below", "0", "x>0"),
                                                            ("--classifier-boost-max", "0.5", "x>=1"),
                                                            ("--classifier-temperature", "0", "x>0")])
def test_a_classifier_reading_it_cannot_mean_is_refused_in_one_line(run, tmp_path, option, value, fragment):
    result = run("compose", "color=red", "-n", "2", "-o", str(tmp_path / "g.png"), option, value)
    assert_one_line_error(result, option, fragment)
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("value", ["-0.1", "nan"])
def test_a_corrector_floor_below_zero_or_not_a_number_is_refused_in_one_line(run, tmp_path, value):
    result = run("compose", "color=red", "-n", "2", "-o", str(tmp_path / "g.png"), "--corrector-above", value)
    assert_one_line_error(result, "--corrector-above")
    assert not (tmp_path / "g.png").exists()


def test_a_denoiser_cannot_be_added_with_frozen_concepts(run, add_tiny):
    add_tiny("position")
    result = run("add", "color", *TINY_SOURCE, *TINY_TRAINING, "--objective", "denoiser", "--with", "position")
    assert_one_line_error(result, "objective denoiser models whole images", "--objective classifier")
    assert [c["name"] for c in json.loads(run("list", "--json").output)] == ["position"]
