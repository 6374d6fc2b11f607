"""The CLI as a new user meets it: at 80 columns, with help on every option, warnings where they would trip.

Layout tests run the commands through CliRunner with ``COLUMNS=80`` (rich reads it at print time) and
check that no line is wider and no cell was cut with an ellipsis.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

from conceptlib.cautions import ACCURACY_WARNING, Typicality, robust_z
from conceptlib.cli import cli
from conceptlib.console import distinct_names, print_listing, records
from conceptlib.plots import CURVE_POINTS, PANEL, concept_figure, loss_curve, nice_ticks
from tests.conftest import SHIPPED_REGISTRY, TINY_SAMPLING, TINY_SOURCE, TINY_TRAINING, assert_one_line_error

WIDTH = 80
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def eighty_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(WIDTH))


def flat(output: str) -> str:
    """Output with line breaks and runs of spaces as single spaces: warnings wrap at the width."""
    return " ".join(output.split())


def assert_fits(output: str) -> None:
    """Every line within 80 columns and no cell cut short."""
    wide = [line for line in output.splitlines() if len(line.rstrip()) > WIDTH]
    assert not wide, "\n".join(wide)
    assert "…" not in output, output


# ---------------------------------------------------------------- a first look
def test_bare_concept_shows_a_short_overview_and_exits_0(run):
    result = run()
    assert result.exit_code == 0, result.output
    assert "error" not in result.output
    assert 'concept compose "position=(0.3,0.7) & color=red"' in result.output
    assert "Commands: add, alias, compose" in result.output
    assert len(result.output.splitlines()) <= 15
    assert_fits(result.output)


def test_bare_concept_source_shows_its_help_and_exits_0(run):
    result = run("source")
    assert result.exit_code == 0, result.output
    assert "error" not in result.output and "sample" in result.output
    assert_fits(result.output)


def test_a_bad_command_is_still_a_one_line_usage_error(run):
    assert_one_line_error(run("frobnicate"), "No such command")


def every_command(group: click.Group = cli, path: str = "concept"):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from every_command(command, f"{path} {name}")
        else:
            yield f"{path} {name}", command


@pytest.mark.parametrize(("path", "command"), list(every_command()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_option_says_what_it_does(path, command):
    silent = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
    assert not silent, f"{path}: {silent}"


@pytest.mark.parametrize(("path", "command"), list(every_command()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_help_page_fits_80_columns(run, path, command):
    result = run(*path.split()[1:], "--help")
    assert result.exit_code == 0, result.output
    assert_fits(result.output)


def test_compose_help_states_the_expression_grammar(run):
    shown = run("compose", "--help").output
    for form in ("a | b", "a & b", "a & !b", "0.5*a", "(a | b) & c", "NAME[@V]=VALUE", "((0.3,0.7))"):
        assert form in shown, form


def test_add_help_names_the_accuracy_below_which_it_warns(run):
    assert f"below {ACCURACY_WARNING:g} only warns" in flat(run("add", "--help").output)


# ------------------------------------------------------------------- listings
def test_sources_fit_80_columns_and_keep_bracketed_words(run):
    result = run("sources")
    assert_fits(result.output)
    assert "Needs conceptlib[mujoco]." in flat(result.output)  # not eaten as rich markup
    assert len(result.output.splitlines()) < 60  # a table of one-word lines took ~90
    for name in ("scenes", "mujoco", "imagefolder", "unet", "classifier"):
        assert any(line.startswith(f"{name}  ") for line in result.output.splitlines()), name


def test_list_and_history_fit_80_columns_with_whole_dates_and_lineage(run, add_tiny):
    add_tiny("position")
    add_tiny("color", "--with", "position")
    assert run("alias", "color", "stable", "1").exit_code == 0
    assert_fits(run("list").output)
    shown = run("history", "color").output
    assert_fits(shown)
    created = json.loads(run("history", "color", "--json").output)[0]["created_at"]
    assert created[:10] + " " + created[11:16] in shown
    assert "position@1" in shown and "1* @stable" in shown


def test_show_folds_into_records_that_fit_80_columns(run, add_tiny):
    add_tiny("position")
    result = run("show", "position")
    assert_fits(result.output)
    assert result.output.splitlines()[0] == "position"
    assert "loss_curve: 3 points (--plot draws them)" in flat(result.output).replace('"', "")


def test_infer_each_keeps_file_names_apart_at_80_columns(run, add_tiny, tmp_path, monkeypatch):
    add_tiny("shape")
    monkeypatch.chdir(tmp_path)
    folder = Path("renders") / "a_rather_long_directory_name_that_every_image_shares"
    folder.mkdir(parents=True)
    names = [f"scene_with_a_long_name_{i:03d}.png" for i in range(3)]
    for name in names:
        Image.new("RGB", (16, 16), (120, 120, 120)).save(folder / name)
    result = run("infer", "shape", *(str(folder / n) for n in names), "--each", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert_fits(result.output)  # the table, the progress bar and any warning
    for name in names:
        assert any(line.startswith(name) for line in result.output.splitlines()), result.output


def test_a_listing_too_wide_for_a_table_becomes_records():
    console = Console(width=40, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    print_listing(console, ("name", "description"), [("scenes", "word " * 30)])
    text = console.export_text()
    assert text.splitlines()[0] == "scenes"
    assert all(len(line) <= 40 for line in text.splitlines())
    print_listing(console, ("name", "note"), [("a", "short")])
    assert "─" in console.export_text()  # it fits: a table


def test_records_break_a_word_longer_than_the_line():
    lines = records(("name", "hash"), [("v1", "f" * 100)], 30)
    assert all(len(line) <= 30 for line in lines)
    assert "".join(line.replace("hash", "").strip() for line in lines[1:]) == "f" * 100


def test_distinct_names_drop_only_the_shared_directory():
    paths = [Path("/tmp/a/b/x.png"), Path("/tmp/a/c/x.png")]
    assert distinct_names(paths) == ["b/x.png", "c/x.png"]
    assert distinct_names([Path("/tmp/a/x.png")]) == ["x.png"]


# ---------------------------------------------------------------- message slips
@pytest.mark.parametrize(
    ("expression", "line"),
    [("(shape=circle & shape=square",
      "error: column 29: unexpected end of expression, expected ')' to close the '(' at column 1"),
     ("", "error: empty expression; write a concept such as 'color=red'"),
     ("1e400*shape=circle", "error: column 1: number 1e400 is too large")],
)
def test_expression_errors_read_plainly(run, add_tiny, tmp_path, expression, line):
    add_tiny("shape")
    result = run("compose", expression, "-o", str(tmp_path / "g.png"))
    assert_one_line_error(result)
    assert line in result.output.splitlines()


def test_a_one_axis_condition_is_not_named_twice(run, add_tiny, tmp_path):
    add_tiny("size")
    result = run("compose", "size=0.7", "-o", str(tmp_path / "g.png"), *TINY_SAMPLING)
    assert_one_line_error(result, "size must lie in [0, 0.5]; got 0.7")
    assert "size: size" not in result.output


def test_an_unknown_version_says_which_versions_exist(run, add_tiny):
    add_tiny("shape")
    assert_one_line_error(run("show", "shape@4"), "no version 4 (it has version 1)")
    add_tiny("shape", "--seed", "1")
    assert_one_line_error(run("show", "shape@4"), "(it has versions 1 to 2)")


def test_an_error_found_before_work_starts_shows_no_progress_bar(run):
    result = run("add", "x", "--source", "nowhere", *TINY_TRAINING)
    assert_one_line_error(result, "unknown source 'nowhere'")
    assert result.output.splitlines() == [line for line in result.output.splitlines() if line.startswith("error:")]


def test_an_unknown_architecture_setting_is_refused_with_the_known_ones(run):
    result = run("add", "shape", *TINY_SOURCE, *TINY_TRAINING, "--arch-config", "bogus=1")
    assert_one_line_error(result, "has no setting 'bogus'", "channels, condition_frequencies, embed")
    assert "no registry at" in run("list", "--json").output  # refused before the registry was created


# ---------------------------------------------------------------- warnings
def test_a_condition_outside_the_trained_range_is_sampled_with_a_warning(run, add_tiny, tmp_path, monkeypatch):
    add_tiny("size")  # the scenes source draws sizes from 0.10 to 0.15
    monkeypatch.chdir(tmp_path)  # "wrote ... to g.png": a path as long as pytest's would not fit any terminal
    result = run("compose", "size=0.45", "-n", "1", "-o", "g.png", *TINY_SAMPLING)
    assert result.exit_code == 0, result.output
    assert_fits(result.output)
    assert "warning: size=0.45 lies outside the range size@1 was trained on (0.1 to 0.15)" in flat(result.output)
    inside = run("compose", "size=0.12", "-n", "1", "-o", str(tmp_path / "h.png"), *TINY_SAMPLING)
    assert inside.exit_code == 0 and "warning" not in inside.output


def test_a_concept_below_the_accuracy_threshold_registers_with_a_warning(run, add_tiny):
    add_tiny("position")
    result = add_tiny("color", "--with", "position", "--objective", "classifier")
    accuracy = json.loads(run("show", "color", "--json").output)["metrics"]["held_out_accuracy"]
    assert accuracy < ACCURACY_WARNING  # three iterations learn next to nothing
    assert f"warning: color@1 reads only {accuracy:.2f} of its held-out images right" in flat(result.output)


def test_min_accuracy_refuses_to_register_and_keeps_the_checkpoint(run, add_tiny):
    add_tiny("position")
    result = run("add", "color", *TINY_SOURCE, *TINY_TRAINING, "--with", "position", "--objective", "classifier",
                 "--min-accuracy", "0.99")
    assert_one_line_error(result, "below --min-accuracy 0.99; nothing was registered", "--resume")
    assert "color" not in {c["name"] for c in json.loads(run("list", "--json").output)}


@pytest.mark.parametrize("args", [("position",), ("color", "--with", "position")])  # a denoiser, a residual
def test_min_accuracy_on_a_concept_without_one_is_refused_before_training(run, add_tiny, args):
    add_tiny("position")
    result = run("add", *args, *TINY_SOURCE, *TINY_TRAINING, "--min-accuracy", "0.5")
    assert_one_line_error(result, "--min-accuracy needs a held-out accuracy")
    assert "training" not in result.output


def test_typicality_flags_images_far_from_held_out_ones_either_way():
    reference = np.random.default_rng(0).normal(3.4, 0.2, 64)
    z = robust_z(np.array([1.4, 3.4, 9.2]), reference)
    assert abs(z[1]) < 1 and z[0] < -4 and z[2] > 4  # a blank image is atypical by being too likely
    found = Typicality(z, 2.5, "shape@1", "position@1")
    assert [w.split()[0] for w in found.warnings(["gray.png", "scene.png", "noise.png"])] == ["gray.png",
                                                                                              "noise.png"]


@pytest.mark.skipif(not SHIPPED_REGISTRY.exists(), reason="the shipped registry.db is not in this checkout")
def test_infer_warns_about_a_blank_image_but_not_a_scene_with_the_shipped_concepts(run, tmp_path):
    """Read-only use of the shipped registry: shape@1 still names a shape for a blank gray image. It learned
    magenta shapes only (the continual protocol), so the scene is one of those."""
    Image.new("RGB", (32, 32), (128, 128, 128)).save(tmp_path / "gray.png")
    sampled = run("source", "sample", "scenes", "-n", "1", "--param", "colors=magenta",
                  "--out-dir", str(tmp_path / "s"))
    assert sampled.exit_code == 0
    runner = CliRunner()
    result = runner.invoke(cli, ["--registry", str(SHIPPED_REGISTRY), "infer", "shape", str(tmp_path / "gray.png"),
                                 str(tmp_path / "s" / "scenes_00000.png"), "--each", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.output.count("warning:") == 1, result.output
    assert "warning: gray.png looks unlike the images shape@1 was trained on" in flat(result.output)
    assert_fits(result.output.split("warning:")[1])


# ---------------------------------------------------------------- pictures
def test_add_draws_its_loss_curve_beside_the_checkpoints(run, add_tiny, registry_path):
    result = add_tiny("position")
    figure = registry_path.with_name("registry.db.checkpoints") / "position@1-loss.png"
    assert f"loss curve: {figure}" in result.output
    curve = json.loads(run("show", "position", "--json").output)["metrics"]["loss_curve"]
    assert curve["iteration"] == [1.0, 2.0, 3.0] and len(curve["loss"]) == 3
    assert Image.open(figure).size == (PANEL[0], PANEL[1] + 24)


def test_show_plot_draws_the_loss_curve_with_the_energy_histograms(run, add_tiny, tmp_path):
    add_tiny("shape")
    result = run("show", "shape", "--plot", str(tmp_path / "shape.png"), "-n", "16", "--device", "cpu")
    assert result.exit_code == 0, result.output
    picture = np.asarray(Image.open(tmp_path / "shape.png").convert("RGB"))
    assert picture.shape[:2] == (2 * PANEL[1] + 24, PANEL[0])
    for color in ((31, 119, 180), (255, 127, 14), (140, 140, 140)):  # the curve and the three populations
        assert (picture == color).all(axis=2).any(), color


def test_a_loss_curve_keeps_at_most_its_points_as_window_means():
    history = [{"iteration": float(i), "loss": float(i)} for i in range(1, 1001)]
    curve = loss_curve(history)
    assert len(curve["loss"]) == CURVE_POINTS and curve["iteration"][-1] == 1000.0
    assert curve["iteration"][:2] == [5.0, 10.0] and curve["loss"][:2] == [3.0, 8.0]  # windows of five


def test_nice_ticks_are_round_and_inside_the_range():
    assert nice_ticks(0.0, 1.0) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert nice_ticks(1, 300) == pytest.approx([100, 200, 300])
    assert nice_ticks(-0.37, 0.02) == pytest.approx([-0.3, -0.2, -0.1, 0.0])


def test_a_version_without_a_curve_gets_a_note_not_an_empty_plot():
    assert concept_figure("old@1", None, None).size == (PANEL[0], PANEL[1] + 24)


def test_source_sample_writes_a_captioned_contact_sheet(run, tmp_path):
    out = tmp_path / "s"
    result = run("source", "sample", "scenes", "-n", "3", "--out-dir", str(out), "--param", "image_size=16")
    assert result.exit_code == 0, result.output
    sheet = Image.open(out / "contact.png")
    assert sheet.width > 3 * 16 * 4 and sheet.height > 16 * 4  # three tiles side by side, with captions below


def test_eval_grid_tiles_are_captioned_with_the_asked_expression():
    from conceptlib.evaluation import PROTOCOLS, Conditions, asked_expressions
    from conceptlib.expr import parse
    from conceptlib.schema import Categorical, Continuous

    trial = PROTOCOLS["position & !color"].make(Conditions(np.random.default_rng(0), {}), 3)
    schemas = {"position": Continuous(("x", "y")), "color": Categorical(("red", "green", "blue", "yellow",
                                                                          "magenta", "cyan"))}
    asked = asked_expressions(trial, schemas)
    assert len(asked) == 3
    for index, text in enumerate(asked):
        x, y = trial.conditions[next(iter(trial.conditions))][index]
        color = schemas["color"].values[int(trial.targets["not_color"][index])]
        assert text == f"position=({round(float(x), 2)!r},{round(float(y), 2)!r}) & !color={color}"
        parse(text)


def test_a_captioned_grid_puts_text_under_every_tile(tmp_path):
    from conceptlib.imaging import save_grid

    images = np.zeros((2, 8, 8, 3), np.uint8)
    save_grid(images, tmp_path / "plain.png", columns=2)
    save_grid(images, tmp_path / "captioned.png", columns=2, captions=["shape=circle", "shape=square"])
    captioned = np.asarray(Image.open(tmp_path / "captioned.png").convert("L"))
    below = captioned[8 * 4 + 6 :, :]  # under the 4x tiles
    assert (below < 128).any()  # dark text on white


# ---------------------------------------------------------------- progress
@pytest.mark.parametrize("each", [False, True])
def test_inference_reports_progress_to_the_last_call(each):
    import torch

    from conceptlib.inference import InferenceConfig, infer, infer_each
    from tests.test_inference import POSITION, BrightSpot, concept, spot

    calls: list[tuple[int, int]] = []
    run_inference = infer_each if each else infer
    run_inference(concept(BrightSpot(), POSITION), torch.cat([spot(1, 1), spot(5, 5)]),
                  InferenceConfig(grid=4, refine_steps=5), on_progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] == len(calls), calls
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_progress_bars_fit_80_columns_with_whole_counts_and_every_metric():
    from conceptlib.progress import job_progress

    console = Console(width=WIDTH, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    with job_progress(console) as progress:
        progress.phase("loading dataset")(20000, 20000)
        progress.training(4000)(4000, {"loss": 0.5812, "energy_pos": -1.25, "energy_neg": 3.5, "grad_norm": 3.07})
    text = console.export_text()
    assert_fits(text)
    assert "20000/20000" in text and "4000/4000" in text
    for stat in ("loss=+0.5812", "E+=-1.2500", "E-=+3.5000", "|g|=+3.0700"):
        assert stat in text, text


# ---------------------------------------------------------------- make
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_installs_no_dev_extras_and_make_test_reports_skips(tmp_path):
    def commands(target: str) -> str:
        return subprocess.run(["make", "-n", "-B", target, f"VENV={tmp_path / 'venv'}"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout

    demo = commands("demo")
    assert "pip install" in demo and "[dev]" not in demo and "scripts/demo.sh" in demo
    test = commands("test")
    assert '-e ".[dev]"' in test and "pytest -rs" in test
