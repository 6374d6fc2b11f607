"""A small, fast conditional energy network for 32x32 and 64x64 scenes.

Three choices, each measured on a 2-core CPU (docs/design.md), shape it:
- Kaiming init and a zero-initialised output layer, so the input gradient is not ~1e-4 per pixel at
  the start (PyTorch's default init shrank image differences ~800x through the layers);
- spatial conditions (a point on the image plane) enter as a Gaussian bump map, an extra input
  channel, which learned in ~150 iterations where constant condition planes never did;
- other conditions modulate every block through FiLM (a per-channel scale and shift).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.nn import functional as F

from conceptlib.schema import ConditionSchema, is_image_point
from conceptlib_nets.layers import FiLMConv, bump_map


class SmallEnergyNet(nn.Module):
    def __init__(self, schema: ConditionSchema, image_size: int, config: Mapping[str, Any]) -> None:
        super().__init__()
        channels = list(config["channels"])
        embed = int(config["embed"])
        self.image_size = image_size
        self.cond_dim = schema.dim
        self.spatial = is_image_point(schema)
        self.bump_sigma = float(config["bump_sigma"])
        self.embed = nn.Sequential(nn.Linear(schema.dim, embed), nn.SiLU(), nn.Linear(embed, embed))
        downsamplings = max(1, int(math.log2(image_size // 8)))
        blocks = [FiLMConv(3 + int(self.spatial), channels[0], embed, stride=1, kaiming=True)]
        for i in range(downsamplings):
            c_in = channels[min(i, len(channels) - 1)]
            c_out = channels[min(i + 1, len(channels) - 1)]
            blocks.append(FiLMConv(c_in, c_out, embed, stride=2, kaiming=True))
        self.blocks = nn.ModuleList(blocks)
        side = image_size // 2**downsamplings
        self.out = nn.Linear(channels[-1] * side * side, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = x * 2 - 1
        if self.spatial:
            h = torch.cat([h, bump_map(c, self.image_size, self.bump_sigma) * 2 - 1], dim=1)
        e = self.embed(c)
        for block in self.blocks:
            h = block(h, e)
        return self.out(h.flatten(1)).squeeze(1)

    @torch.no_grad()
    def for_condition(self, c: torch.Tensor) -> SharedConditionEnergy:
        """``x -> self(x, c)`` for one condition ``c`` ``(1, dim)`` shared by the batch, for sampling.

        Everything that depends only on ``c`` is done once here instead of at every Langevin step:
        FiLM's scale and shift are folded into each convolution's weights and bias, the input's
        ``2x - 1`` into the first convolution, and the bump map is rendered once. What remains per
        step is three convolutions and three SiLUs (faster than ``forward``: docs/speed.md).
        """
        e = self.embed(c)
        layers = []
        for i, block in enumerate(self.blocks):
            scale, shift = block.film(e).chunk(2, dim=1)
            gain = 1 + scale[0]
            weight = block.conv.weight * gain[:, None, None, None]
            bias = block.conv.bias * gain + shift[0]
            if i == 0:  # conv(2x - 1) = conv(2x) - sum(W) once padding is 0.5 (i.e. 0 after 2x - 1)
                bias = bias - weight[:, :3].sum((1, 2, 3))
                weight = torch.cat([2 * weight[:, :3], weight[:, 3:]], dim=1)
            layers.append((weight.contiguous(memory_format=torch.channels_last), bias, block.conv.stride[0]))
        bump = None
        if self.spatial:
            bump = F.pad(bump_map(c, self.image_size, self.bump_sigma) * 2 - 1, (1, 1, 1, 1))
        side = self.image_size // 2 ** (len(self.blocks) - 1)
        out = self.out.weight.view(-1, side, side).permute(1, 2, 0).reshape(-1)  # NHWC order
        return SharedConditionEnergy(layers, bump, out, self.out.bias)


class SharedConditionEnergy(nn.Module):
    """A :class:`SmallEnergyNet` specialised to one condition: plain convolutions in channels-last layout.

    Its input gradient is written out by hand (:class:`_InputGradient`) rather than left to autograd,
    which asks oneDNN for a convolution backward pass at every layer. The first layer's gradient, onto
    the image's three channels only (not the bump or the padding), is one matmul and a ``fold``; the
    strided layers' are transposed convolutions; only the pre-activations are kept for it.
    ``hand_written_gradient = False`` (on the class) leaves it to autograd, to measure the difference.
    """

    hand_written_gradient = True

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor, int]], bump: torch.Tensor | None,
                 out: torch.Tensor, out_bias: torch.Tensor) -> None:
        super().__init__()
        self.strides = [stride for _, _, stride in layers]
        self.weights = nn.ParameterList([nn.Parameter(w, requires_grad=False) for w, _, _ in layers])
        self.biases = nn.ParameterList([nn.Parameter(b, requires_grad=False) for _, b, _ in layers])
        self.register_buffer("bump", bump)
        self.register_buffer("out", out)
        self.register_buffer("out_bias", out_bias)
        # (3 * 3 * 3, C): the first convolution's taps onto the image channels, for its gradient as matmul + fold
        self.register_buffer("first_taps", layers[0][0][:, :3].permute(1, 2, 3, 0).reshape(27, -1).contiguous())

    def _pre_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = F.pad(x.contiguous(memory_format=torch.channels_last), (1, 1, 1, 1), value=0.5)
        if self.bump is not None:
            h = torch.cat([h, self.bump.expand(h.shape[0], -1, -1, -1)], dim=1)
        pre = []
        for i, (weight, bias, stride) in enumerate(zip(self.weights, self.biases, self.strides)):
            pre.append(F.conv2d(h if i == 0 else F.silu(pre[-1]), weight, bias, stride=stride,
                                padding=0 if i == 0 else 1))
        return pre

    def _energy(self, last: torch.Tensor) -> torch.Tensor:
        h = F.silu(last)
        return h.permute(0, 2, 3, 1).reshape(h.shape[0], -1) @ self.out + self.out_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hand_written_gradient and torch.is_grad_enabled() and x.requires_grad:
            return _InputGradient.apply(x, self)
        return self._energy(self._pre_activations(x)[-1])

    def input_gradient(self, pre: list[torch.Tensor], grad_energy: torch.Tensor) -> torch.Tensor:
        """``d E / d x`` scaled per sample by ``grad_energy`` ``(B,)``, from the saved pre-activations."""
        last = pre[-1]
        b, c, height, width = last.shape
        g = (grad_energy[:, None] * self.out).view(b, height, width, c).permute(0, 3, 1, 2)
        for i in range(len(pre) - 1, 0, -1):
            g = torch.ops.aten.silu_backward(g, pre[i])
            stride, size = self.strides[i], pre[i - 1].shape[-1]
            extra = size - ((pre[i].shape[-1] - 1) * stride - 2 + 3)  # 3x3, padding 1: restores the input size
            g = F.conv_transpose2d(g, self.weights[i], stride=stride, padding=1, output_padding=extra)
        g = torch.ops.aten.silu_backward(g, pre[0])
        b, c, height, width = g.shape
        columns = self.first_taps @ g.permute(0, 2, 3, 1).reshape(b, height * width, c).transpose(1, 2)
        return F.fold(columns, (height, width), 3, padding=1)


class _InputGradient(torch.autograd.Function):
    """The specialised network's energy with a hand-written input gradient (one derivative only)."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor, net: SharedConditionEnergy) -> torch.Tensor:
        pre = net._pre_activations(x)
        ctx.net = net  # type: ignore[attr-defined]
        ctx.save_for_backward(*pre)
        return net._energy(pre[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_energy: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.net.input_gradient(list(ctx.saved_tensors), grad_energy), None
