"""Network evaluations are counted at the networks, as samplers spend them (forward and backward)."""

from __future__ import annotations

import torch
from torch import nn

from conceptlib.network_calls import counting


class Denoiser(nn.Module):
    """A denoiser whose energy (``forward``) calls its own ``denoise``: one evaluation, not two."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5), requires_grad=False)

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.denoise(x)).pow(2).flatten(1).sum(1)


def test_rows_are_counted_once_per_entry_and_backward_only_when_a_gradient_reaches_the_output():
    net = Denoiser()
    x = torch.randn(6, 3, 4, 4)
    with counting([("d@1", net)]) as calls:
        net.denoise(x)  # 6 rows forward, no gradient
        net(x[:2])  # the energy: 2 rows, its inner denoise not counted again
        energy = net(x.requires_grad_(True))
        torch.autograd.grad(energy.sum(), x)  # 6 rows backward
    assert calls.forward == {"d@1": 6 + 2 + 6} and calls.backward == {"d@1": 6}
    assert calls.per_sample(2) == {"forward": 7.0, "backward": 3.0,
                                   "by_network": {"d@1": {"forward": 7.0, "backward": 3.0}}}


def test_counting_leaves_the_network_as_it_was():
    net = Denoiser()
    with counting([("d@1", net)]):
        pass
    assert "denoise" not in net.__dict__ and not net._forward_hooks and not net._forward_pre_hooks
    with counting([("d@1", net)]) as calls:
        pass
    net.denoise(torch.ones(3, 1))
    assert calls.forward == {}
