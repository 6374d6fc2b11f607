"""The U-Net scene model's full-resolution refinement: on by default, off for versions stored without it."""

from __future__ import annotations

import torch

from conceptlib.plugins import PluginManager
from conceptlib.schema import Continuous

POSITION = Continuous(names=("x", "y"), spatial=True)
TINY = {"channels": [8, 8, 8], "embed": 16}


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
