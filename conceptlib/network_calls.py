"""How many network evaluations a job spends, counted as it runs rather than from a formula.

Every sampler path spends them differently: the annealed sampler's corrector levels, a classifier read on
the prior's denoised estimate (a forward of the denoiser and the classifier, then a backward through both),
a residual chain (each member once per assignment, cached), a mixture's alternatives, Langevin on an
energy (a forward and a backward per step). Counting at the networks themselves gets all of them right,
and keeps counting right when a sampler changes: a network's rows are counted forward when it is entered
(once, not again for calls it makes into itself, such as a denoiser's energy calling its own ``denoise``)
and backward when a gradient reaches its output. A recomputation (chunked evaluation computes an energy's
gradient inside its forward) counts as what it is: another forward and backward.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class NetworkCalls:
    """Rows each network (by name) was run on, forward and backward, while counting."""

    forward: dict[str, int] = field(default_factory=dict)
    backward: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, name: str, rows: int) -> None:
        with self._lock:
            counts = self.forward if kind == "forward" else self.backward
            counts[name] = counts.get(name, 0) + rows

    def per_sample(self, n: int) -> dict[str, Any]:
        """What a sidecar records: evaluations per sample, forward and backward, in all and by network."""
        def share(rows: int) -> float:
            return round(rows / max(n, 1), 3)

        names = sorted(set(self.forward) | set(self.backward))
        return {
            "forward": share(sum(self.forward.values())),
            "backward": share(sum(self.backward.values())),
            "by_network": {name: {"forward": share(self.forward.get(name, 0)),
                                  "backward": share(self.backward.get(name, 0))} for name in names},
        }


@contextmanager
def counting(networks: Iterable[tuple[str, nn.Module]]) -> Iterator[NetworkCalls]:
    """Count every call of each named network (its ``__call__`` and its ``denoise``) inside the block."""
    calls = NetworkCalls()
    with ExitStack() as stack:
        seen: set[int] = set()
        for name, module in networks:
            if id(module) not in seen:
                seen.add(id(module))
                stack.enter_context(_counted(name, module, calls))
        yield calls


@contextmanager
def _counted(name: str, module: nn.Module, calls: NetworkCalls) -> Iterator[None]:
    depth = threading.local()  # chunked evaluation runs a network on several threads at once

    def enter(args: tuple[Any, ...]) -> None:
        level = getattr(depth, "level", 0)
        depth.level = level + 1
        if level == 0 and args and isinstance(args[0], torch.Tensor):
            calls.add("forward", name, args[0].shape[0])

    def leave(output: Any) -> None:
        depth.level -= 1
        if depth.level == 0 and isinstance(output, torch.Tensor) and output.requires_grad:
            rows = output.shape[0] if output.dim() else 1
            output.register_hook(lambda grad: calls.add("backward", name, rows))

    handles = [module.register_forward_pre_hook(lambda _m, args: enter(args)),
               module.register_forward_hook(lambda _m, _args, output: leave(output))]
    denoise: Callable[..., torch.Tensor] | None = getattr(module, "denoise", None)
    if denoise is not None:
        def counted_denoise(*args: Any, **kwargs: Any) -> torch.Tensor:
            enter(args)
            try:
                output = denoise(*args, **kwargs)
            except BaseException:
                depth.level -= 1
                raise
            leave(output)
            return output

        module.denoise = counted_denoise  # type: ignore[method-assign]  # shadows the method on this instance only
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        if denoise is not None:
            del module.denoise
