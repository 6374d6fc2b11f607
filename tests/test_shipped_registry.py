"""The registry shipped at the repo root: the default concepts, learned continually, usable at once."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from conceptlib.cli import cli
from tests.conftest import SHIPPED_REGISTRY

pytestmark = pytest.mark.skipif(not SHIPPED_REGISTRY.exists(), reason="no registry.db at the repo root")


@pytest.fixture
def shipped(tmp_path):
    """A copy, so even SQLite's side files never appear beside the shipped one."""
    copy = tmp_path / "registry.db"
    shutil.copy(SHIPPED_REGISTRY, copy)
    return copy


def test_it_holds_the_default_concepts_each_later_one_trained_against_the_earlier(shipped):
    runner = CliRunner()
    listed = json.loads(runner.invoke(cli, ["--registry", str(shipped), "list", "--json"]).output)
    assert {c["name"] for c in listed} == {"position", "shape", "color", "size"}
    lineage = {}
    for name in ("position", "shape", "color", "size"):
        shown = json.loads(runner.invoke(cli, ["--registry", str(shipped), "show", name, "--json"]).output)
        lineage[name] = set(shown["lineage"])
        assert shown["source"] == "scenes"
    assert lineage == {"position": set(), "shape": {"position@1"}, "color": {"position@1", "shape@1"},
                       "size": {"position@1", "shape@1", "color@1"}}
    assert SHIPPED_REGISTRY.stat().st_size < 8_000_000  # a few MB, as shipped in git


def test_it_is_built_by_the_continual_protocol_each_stage_on_its_own_data(shipped):
    """Position saw magenta squares only and shape magenta shapes only; later concepts are residuals."""
    runner = CliRunner()
    shown = {name: json.loads(runner.invoke(cli, ["--registry", str(shipped), "show", name, "--json"]).output)
             for name in ("position", "shape", "color", "size")}
    assert (shown["position"]["source_params"]["shapes"], shown["position"]["source_params"]["colors"]) == \
        ("square", "magenta")
    assert shown["shape"]["source_params"]["colors"] == "magenta"
    assert len(shown["color"]["source_params"]["colors"].split(",")) == 6
    assert len({v["dataset_hash"] for v in shown.values()}) == 3  # color and size share the full data
    assert [shown[n]["hyperparameters"]["objective"] for n in shown] == ["denoiser", *["residual"] * 3]


def test_the_readme_expression_composes_from_a_fresh_clone(shipped, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["--registry", str(shipped), "compose", "position=(0.3,0.7) & color=red",
                                      "-n", "2", "--levels", "3", "--device", "cpu", "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    sidecar = json.loads((out / "sample_00000.json").read_text())
    assert set(sidecar["versions"]) == {"position@1", "color@1"}
    assert sidecar["sampler"]["prior"] == "position@1"


def test_a_later_stage_judges_typicality_by_its_own_data_not_by_what_the_root_saw(shipped, tmp_path):
    """position@1 saw magenta squares only; color@1 saw every scene, so a green circle is typical of it."""
    runner = CliRunner()
    sampled = runner.invoke(cli, ["source", "sample", "scenes", "-n", "2", "--param", "colors=green",
                                  "--param", "shapes=circle", "--out-dir", str(tmp_path / "s")])
    assert sampled.exit_code == 0, sampled.output
    result = runner.invoke(cli, ["--registry", str(shipped), "infer", "color", str(tmp_path / "s" / "scenes_00000.png"),
                                 str(tmp_path / "s" / "scenes_00001.png"), "--each", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output and result.output.count("green") >= 2, result.output
