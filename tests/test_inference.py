"""Inference by energy minimisation: grid search, refinement, many observations, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conceptlib.concepts import LoadedConcept
from conceptlib.inference import InferenceConfig, infer, infer_each
from conceptlib.registry import VersionInfo
from conceptlib.schema import Categorical, Continuous
from tests.conftest import TINY_SOURCE, TINY_TRAINING, assert_one_line_error


class BrightSpot(nn.Module):
    """A hand-made energy: low when the condition (x, y) sits on the image's brightest pixel."""

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        flat = x.mean(1).flatten(1).argmax(1)
        where = torch.stack([(flat % size).float() + 0.5, (flat // size).float() + 0.5], 1) / size
        return (c - where).pow(2).sum(1) * 100


class ChannelMatch(nn.Module):
    """Low energy for the color channel (one-hot over r, g, b) that is brightest."""

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return -(x.mean((2, 3)) * c).sum(1)


def concept(model: nn.Module, schema) -> LoadedConcept:
    version = VersionInfo(
        concept="c", number=1, created_at=None, schema=schema, architecture="x", architecture_config={},
        source="s", source_params={}, attribute="c", dataset_hash="", hyperparameters={"image_size": 8}, seed=0,
        metrics={}, weights_sha256="", status="ready", lineage=(), aliases=(), is_current=True,
    )
    return LoadedConcept(version, model)


def spot(x: int, y: int) -> torch.Tensor:
    image = torch.zeros(1, 3, 8, 8)
    image[0, :, y, x] = 1.0
    return image


POSITION = Continuous(("x", "y"), spatial=True)


def test_grid_then_refinement_finds_a_continuous_condition():
    found = infer(concept(BrightSpot(), POSITION), spot(2, 5), InferenceConfig(grid=5, refine_steps=0))
    assert found.value == (0.25, 0.75)  # the grid point nearest (2.5/8, 5.5/8)
    refined = infer(concept(BrightSpot(), POSITION), spot(2, 5), InferenceConfig(grid=5, refine_steps=200,
                                                                                 refine_lr=0.01))
    assert refined.value == pytest.approx((2.5 / 8, 5.5 / 8), abs=0.01)
    assert refined.energy <= found.energy


def test_categorical_inference_ranks_every_name():
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1.0
    found = infer(concept(ChannelMatch(), Categorical(("red", "green", "blue"))), red)
    assert found.value == "red"
    assert found.candidates[0][0] == "red" and len(found.candidates) == 3


def test_many_observations_are_summed():
    images = torch.cat([spot(1, 1), spot(1, 1), spot(6, 6)])
    config = InferenceConfig(grid=8, refine_steps=0)
    together = infer(concept(BrightSpot(), POSITION), images, config)
    mean = (1.5 + 1.5 + 6.5) / 3 / 8  # a quadratic energy summed over observations is lowest at their mean
    assert np.abs(np.array(together.value) - mean).max() < 1 / 14
    each = infer_each(concept(BrightSpot(), POSITION), images, config)
    assert len(each) == 3 and each[0].value != each[2].value


def test_cli_infers_a_trained_concept_from_png_files(run, add_tiny, tmp_path):
    add_tiny("color")
    paths = []
    for i, rgb in enumerate([(220, 30, 30), (30, 200, 30)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((16, 16, 3), rgb, dtype=np.uint8)).save(path)
        paths.append(str(path))
    result = run("infer", "color", *paths, "--each", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)  # the progress bar and any warnings go to stderr
    assert len(rows) == 2 and all(row["value"] in ("red", "green", "blue", "yellow", "magenta", "cyan")
                                  for row in rows)
    assert rows[0]["concept"] == "color@1"


def test_cli_infer_refuses_a_file_that_is_not_an_image(run, add_tiny, tmp_path):
    add_tiny("color")
    bogus = tmp_path / "notes.png"
    bogus.write_text("not a picture")
    assert_one_line_error(run("infer", "color", str(bogus), "--device", "cpu"), "is not an image")
    assert_one_line_error(run("infer", "color", str(tmp_path / "missing.png"), "--device", "cpu"), "no image at")


def test_cd_concepts_are_inferred_from_their_plain_energy(run, tmp_path):
    result = run("add", "position", *TINY_SOURCE, *TINY_TRAINING, "--objective", "cd")
    assert result.exit_code == 0, result.output
    path = tmp_path / "x.png"
    Image.fromarray(np.full((16, 16, 3), 128, dtype=np.uint8)).save(path)
    result = run("infer", "position", str(path), "--grid", "3", "--refine-steps", "2", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    value = json.loads(result.stdout)[0]["value"]
    assert len(value) == 2 and all(0.0 <= v <= 1.0 for v in value)


def test_inference_stays_inside_the_range_the_concept_was_trained_on():
    """Outside its training range a concept's energy is extrapolation: a corner of the schema's box once
    won every image (position error 0.55), so the grid and the refinement keep to the trained range."""
    from types import SimpleNamespace

    from conceptlib.schema import Continuous

    class Downhill(nn.Module):
        """Lower energy the larger the condition: unconstrained, the argmin is the box's far corner."""

        def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return -c.sum(1) + 0 * x.mean((1, 2, 3))

    version = SimpleNamespace(schema=Continuous(names=("x", "y"), low=0.0, high=1.0), attribute="position",
                              metrics={"condition_low": [0.2, 0.3], "condition_high": [0.8, 0.7]}, source_params={},
                              hyperparameters={})
    found = infer(LoadedConcept(version, Downhill()), torch.zeros(1, 3, 8, 8), InferenceConfig(grid=5)).value
    assert found == pytest.approx((0.8, 0.7))


class BlobDenoiser(nn.Module):
    """A noise-conditioned toy: ``D`` pulls the image toward a soft spot at the condition, so its denoising
    error is lowest when the condition sits on the image's spot."""

    noise_conditioned = True

    def denoise(self, x, c, sigma, keep):
        size = x.shape[-1]
        grid = (torch.arange(size, dtype=x.dtype) + 0.5) / size
        blob = torch.exp(-((grid[None, None, :] - c[:, 0, None, None]) ** 2
                           + (grid[None, :, None] - c[:, 1, None, None]) ** 2) / 0.02)
        return 0.5 * x + 0.5 * blob[:, None] * keep[:, None, None, None]


def test_infer_each_batches_exactly_what_one_call_per_image_computes():
    """Batched across images, every inference equals a lone call's: same noise per image, Adam elementwise."""
    version = VersionInfo(
        concept="c", number=1, created_at=None, schema=POSITION, architecture="x", architecture_config={},
        source="s", source_params={}, attribute="c", dataset_hash="",
        hyperparameters={"image_size": 8, "objective": "denoiser"}, seed=0, metrics={}, weights_sha256="",
        status="ready", lineage=(), aliases=(), is_current=True,
    )
    toy = LoadedConcept(version, BlobDenoiser())
    truth = torch.tensor([[0.2, 0.3], [0.7, 0.8], [0.45, 0.4], [0.8, 0.25]])
    images = BlobDenoiser().denoise(torch.zeros(4, 3, 8, 8), truth, None, torch.ones(4)) * 2  # blobs at truth
    config = InferenceConfig(grid=4, refine_steps=20, refine_lr=0.02)
    batched = infer_each(toy, images, config, batch=7)  # a batch size that splits grids and images unevenly
    for i, found in enumerate(batched):
        alone = infer(toy, images[i : i + 1], config)
        assert found.value == pytest.approx(alone.value, abs=1e-5)
        assert found.energy == pytest.approx(alone.energy, rel=1e-5)
        assert [c for c, _ in found.candidates] == [c for c, _ in alone.candidates]
    assert np.abs(np.array([f.value for f in batched]) - truth.numpy()).max() < 0.1  # and they are right
