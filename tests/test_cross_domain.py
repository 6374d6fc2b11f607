"""Concepts from two sources compose (paper A.2): a face attribute from an image folder with scene concepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import TINY_SAMPLING, TINY_SOURCE, TINY_TRAINING, assert_one_line_error

FACES = [("000001.jpg", 1), ("000002.jpg", -1), ("000003.jpg", 1), ("000004.jpg", -1)] * 2


@pytest.fixture
def faces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A tiny CelebA-layout folder (smiling faces red, the others green) as `concept add` source options."""
    monkeypatch.setenv("CONCEPTLIB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    lines = [str(len(FACES)), "Smiling"]
    for i, (file, smiling) in enumerate(FACES):
        name = f"{i:06d}.jpg" if i >= 4 else file
        Image.new("RGB", (44, 54), (200, 30, 30) if smiling == 1 else (30, 200, 30)).save(
            root / "img_align_celeba" / name)
        lines.append(f"{name} {smiling:2d}")
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    return ["--source", "imagefolder", "--param", f"root={root}", "--param", "image_size=16", "--param", "crop=40"]


def sidecar(out_dir: Path) -> dict:
    return json.loads(next(out_dir.glob("*.json")).read_text())


def test_contrastive_concepts_from_two_sources_compose(run, add_tiny, faces, tmp_path):
    add_tiny("color", "--objective", "cd")
    result = run("add", "smiling", *faces, *TINY_TRAINING, "--objective", "cd")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    result = run("compose", "smiling=yes & color=red", "-n", "2", "--out-dir", str(out), *TINY_SAMPLING)
    assert result.exit_code == 0, result.output
    assert set(sidecar(out)["versions"]) == {"smiling@1", "color@1"}
    sources = {json.loads(run("show", name, "--json").output)["source"] for name in ("smiling", "color")}
    assert sources == {"imagefolder", "scenes"}


def test_a_face_classifier_composes_with_a_scene_prior_and_alone_says_what_is_missing(run, faces, tmp_path):
    assert run("add", "position", *TINY_SOURCE, *TINY_TRAINING).exit_code == 0
    result = run("add", "smiling", *faces, *TINY_TRAINING, "--objective", "classifier")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    result = run("compose", "position=(0.5,0.5) & smiling=yes", "-n", "2", "--out-dir", str(out), *TINY_SAMPLING)
    assert result.exit_code == 0, result.output
    assert sidecar(out)["sampler"]["prior"] == "position@1"
    alone = run("compose", "smiling=yes", "-n", "1", "--out-dir", str(tmp_path / "alone"), *TINY_SAMPLING)
    assert_one_line_error(alone, "models whole images",
                          "--objective denoiser")
