"""The U-Net scene model's full-resolution refinement and scalar-condition features: on by default, off for
versions stored without them."""

from __future__ import annotations

import pytest
import torch

from conceptlib.plugins import PluginManager
from conceptlib.schema import Categorical, Continuous
from conceptlib_nets.layers import ConditionFeatures

POSITION = Continuous(names=("x", "y"), spatial=True)
TINY = {"channels": [8, 8, 8], "embed": 16}
SIZE = Continuous(names=("size",), low=0.0, high=0.5)


def build(config: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return PluginManager().architecture("unet").build(POSITION, 16, config)


def inputs(n: int = 4) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    return (torch.rand((n, 3, 16, 16), generator=generator), torch.rand((n, 2), generator=generator),
            torch.full((n,), 0.2), torch.ones(n))


def test_new_unets_refine_at_full_resolution_and_start_as_the_patch_trunk_alone():
    unet = PluginManager().architecture("unet")
    model = build(unet.config(TINY))
    assert unet.config()["refine"] == 16 and model.refine is not None
    x, c, sigma, keep = inputs()
    with torch.no_grad():
        refined = model.denoise(x, c, sigma, keep)
        model.refine = None
        trunk = model.denoise(x, c, sigma, keep)
    assert torch.equal(refined, trunk)  # the last refinement layer is zero-initialised


def test_the_refinement_learns_from_the_denoising_loss():
    model = build(PluginManager().architecture("unet").config(TINY))
    x, c, sigma, keep = inputs()
    model.denoise(x + 0.2 * torch.randn_like(x), c, sigma, keep).sub(x).pow(2).mean().backward()
    assert model.refine[1].weight.grad.abs().sum() > 0


def test_a_stored_config_without_refine_rebuilds_the_network_those_weights_came_from():
    stored = {"channels": [8, 8, 8], "embed": 16, "patch": 2, "bump_sigma": 0.08, "sigma_data": 0.25}
    torch.manual_seed(0)
    old = PluginManager().architecture("unet").build_stored(POSITION, 16, stored)
    assert old.refine is None
    assert not any(name.startswith("refine") for name in old.state_dict())
    weights = build({**TINY, "refine": 0}).state_dict()
    old.load_state_dict(weights, strict=True)


def test_scalar_conditions_become_fourier_features_and_image_points_and_categories_pass_through():
    size = ConditionFeatures(SIZE, 4)
    assert size.dim == 9
    radii = size(torch.tensor([[0.10], [0.15]]))  # the scenes source's default radii, 0.1 of the schema apart
    assert (radii[0] - radii[1]).abs().max() > 0.5  # raw, the embedding would see them differ by 0.05
    assert radii[0, 0].item() == pytest.approx(-0.6)
    point = torch.rand(3, 2)
    assert torch.equal(ConditionFeatures(POSITION, 4)(point), point)
    one_hot = torch.eye(3)
    assert torch.equal(ConditionFeatures(Categorical(values=("a", "b", "c")), 4)(one_hot), one_hot)
    placement = ConditionFeatures(Continuous(names=("x", "y", "size"), spatial=True), 4)
    c = torch.tensor([[0.3, 0.7, 0.1]])
    assert placement.dim == 2 + 9 and torch.equal(placement(c)[:, :2], c[:, :2])


@pytest.mark.parametrize("architecture", ["unet", "residual"])
def test_a_stored_config_without_condition_frequencies_reads_scalar_conditions_raw(architecture):
    arch = PluginManager().architecture(architecture)
    assert arch.config(TINY)["condition_frequencies"] == 4
    stored = {k: v for k, v in arch.config(TINY).items() if k != "condition_frequencies"}
    torch.manual_seed(0)
    old = arch.build_stored(SIZE, 16, stored)
    assert old.condition_features.dim == 1 and old.condition_embed[0].in_features == 1
    c = torch.tensor([[0.12]])
    assert torch.equal(old.condition_features(c), c)
    torch.manual_seed(0)
    same = arch.build(SIZE, 16, {**arch.config(TINY), "condition_frequencies": 0})
    old.load_state_dict(same.state_dict(), strict=True)
    assert arch.build(SIZE, 16, arch.config(TINY)).condition_embed[0].in_features == 9
