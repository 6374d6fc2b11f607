"""The paper's energy networks (A.4): shapes, spectral norm, FiLM per block, and a CD run through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conceptlib.errors import ConceptError
from conceptlib.plugins import PluginManager
from conceptlib.schema import Categorical, ConditionSchema, Continuous
from conceptlib_nets import PAPER64_CONFIG, PAPER128_CONFIG
from conceptlib_nets.paper import FiLMResBlock, PaperEnergyNet
from tests.conftest import Run

COLOR = Categorical(values=("red", "green", "blue"))
POSITION = Continuous(names=("x", "y"), spatial=True)
TINY = {"channels": [8, 8, 16], "embed": 16}


def net(schema: ConditionSchema = COLOR, size: int = 16, defaults: dict[str, Any] = PAPER64_CONFIG, **config: Any):
    torch.manual_seed(0)
    return PaperEnergyNet(schema, size, {**defaults, **TINY, **config})


def colors(*names: str) -> torch.Tensor:
    return torch.tensor([COLOR.encode(name) for name in names])


def test_default_configs_follow_figure_17() -> None:
    assert PAPER64_CONFIG["channels"] == [64, 64, 128, 128, 256] and PAPER64_CONFIG["pool"] == "mean"
    assert PAPER128_CONFIG["channels"] == [64, 64, 128, 256, 512, 1024] and PAPER128_CONFIG["pool"] == "sum"
    model = PaperEnergyNet(COLOR, 64, PAPER64_CONFIG)
    assert [block.down for block in model.blocks] == [True] * 4
    assert model(torch.rand(2, 3, 64, 64), colors("red", "blue")).shape == (2,)


def test_the_128_net_halves_five_times_then_keeps_its_width() -> None:
    model = net(size=128, defaults=PAPER128_CONFIG, channels=[4, 4, 4, 4, 4, 8])
    assert [block.down for block in model.blocks] == [True] * 5 + [False]
    assert model(torch.rand(2, 3, 128, 128), colors("red", "green")).shape == (2,)


def test_the_input_gradient_is_finite_and_not_zero() -> None:
    x = torch.rand(3, 3, 16, 16, requires_grad=True)
    (grad,) = torch.autograd.grad(net()(x, colors("red", "green", "blue")).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_spectral_norm_bounds_every_convolution_and_the_output_layer() -> None:
    model = net()
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m not in model.embed]
    normed = [m for m in layers if hasattr(m, "parametrizations")]
    assert model.out in normed and all(m in normed for m in layers if isinstance(m, nn.Conv2d))
    for layer in normed:
        sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=0.05)


def test_every_residual_block_is_conditioned_through_film() -> None:
    model = net().eval()  # no power iteration between calls: energies comparable exactly
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(model(x, colors("red", "red")), model(x, colors("blue", "blue")))  # FiLM starts as identity
    for block in model.blocks:
        assert isinstance(block, FiLMResBlock)
        with torch.no_grad():
            before = model(x, colors("red", "red")) - model(x, colors("blue", "blue"))
            nn.init.normal_(block.film.weight, std=0.5)
            after = model(x, colors("red", "red")) - model(x, colors("blue", "blue"))
            nn.init.zeros_(block.film.weight)
        assert not torch.allclose(before, after)


def test_a_spatial_condition_is_also_drawn_as_a_bump_map() -> None:
    assert net(POSITION).stem.in_channels == 4 and net(COLOR).stem.in_channels == 3
    assert net(POSITION, bump_sigma=0).stem.in_channels == 3
    model, x = net(POSITION), torch.rand(1, 3, 16, 16)
    assert model(x, torch.tensor([[0.2, 0.2]])) != model(x, torch.tensor([[0.8, 0.8]]))


def test_energies_do_not_change_between_calls_in_eval_mode() -> None:
    model = net().eval()
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(model(x, colors("red", "blue")), model(x, colors("red", "blue")))


@pytest.mark.parametrize(
    ("config", "named"), [({"channels": [8, 8, 8, 8, 8, 8]}, "at least 32"), ({"pool": "max"}, "pool")]
)
def test_a_config_the_image_cannot_take_is_a_clear_error(config: dict[str, Any], named: str) -> None:
    with pytest.raises(ConceptError, match=named):
        net(**config)


def test_both_are_registered_as_architectures() -> None:
    plugins = PluginManager()
    assert plugins.architecture("paper64").default_config == PAPER64_CONFIG
    assert plugins.architecture("paper128").default_config == PAPER128_CONFIG


def test_cli_trains_paper64_by_contrastive_divergence_and_samples_it(run: Run, tmp_path: Path) -> None:
    source = ["--source", "scenes", "--param", "n=64", "--param", "image_size=16"]
    tiny = ["--arch-config", "channels=[8,8,16]", "--arch-config", "embed=16"]
    result = run("add", "color", *source, "--arch", "paper64", "--objective", "cd", *tiny,
                 "--iterations", "2", "--batch-size", "8", "--steps", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    shown = json.loads(run("show", "color", "--json").output)
    assert shown["architecture"] == "paper64" and shown["architecture_config"]["channels"] == [8, 8, 16]
    result = run("compose", "color=red", "-n", "2", "--steps", "2", "--device", "cpu", "-o", str(tmp_path / "g.png"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g.png").exists()
