"""Frozen concepts evaluated fast while sampling: the same energies, with less and better-laid-out work.

A Langevin step through a concept network is a forward pass plus the input gradient; on this project's
2-core CPU the convolutions in it run at a fraction of the machine's peak, and the time not spent in them
goes to elementwise passes over activations that have outgrown the cache (benchmarks/speed.py measures
each choice below; benchmarks/results/speed.md has the figures). So, for frozen concepts only:

- the network's own ``for_condition(c)``, when it has one, for a condition shared by the whole batch: an
  equivalent module with everything that depends on ``c`` done once per chain (e.g. FiLM folded into the
  convolution weights) instead of once per step;
- channels-last memory on the CPU, oneDNN's native layout, so no reorders around each convolution;
- the energy and its input gradient computed together, a cache-sized chunk of the batch at a time, with
  the gradient handed to autograd when the sampler asks for it (per-sample energies make chunks exact);
- on the CPU, chunks run in parallel, one per thread of ``torch.get_num_threads()``, each thread's
  operations single-threaded: the same cores as intra-op threading, without a barrier after every
  small operation (measured 1.5-3x faster than two intra-op threads on small convolutions);
- a whole expression of such concepts in one pass (:func:`conceptlib.energy.compose` hands ``evaluate``
  their sum, NOT, OR and weights as one function): each thread takes its chunk through every concept,
  one parallel region per step instead of one per concept (1.1-1.25x at batch 64 with 3-5 concepts).

Two more pieces live elsewhere: ``small``'s specialised network writes its input gradient by hand
(``conceptlib_nets/small.py``), and freed memory is kept for reuse so that a step does not page-fault its
activations back in (:mod:`conceptlib.memory`).

Evaluating the concepts of an expression in one stacked call (grouped convolutions from stacked weights,
or ``torch.func.vmap`` over stacked parameters) was measured slower than separate calls on this CPU and
is not used.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

UPDATE_ON_ONE_THREAD = True
"""See :func:`one_thread`; benchmarks/speed.py turns it off to measure it."""
CPU_CHUNK = 32
"""Most images per chunk on the CPU: the activations of one chunk stay in cache (benchmarks/speed.py)."""

T = TypeVar("T")
_pool: tuple[int, ThreadPoolExecutor] | None = None
"""The chunk threads and their number, made on first use."""


def _forget_pool() -> None:
    global _pool
    _pool = None  # a forked child has none of its parent's threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def chunk_size(device: torch.device, n: int) -> int:
    """On the CPU, at most ``CPU_CHUNK`` images and at least one chunk per thread; elsewhere one chunk."""
    if device.type != "cpu":
        return n
    return max(1, min(CPU_CHUNK, -(-n // torch.get_num_threads())))


def run_parallel(work: Callable[[slice], T], chunks: Sequence[slice], device: torch.device) -> list[T]:
    """``work`` on every chunk, in order; on the CPU, one chunk per thread with single-threaded operations.

    ``torch.set_num_threads`` is process-wide, so it is 1 while the chunks run and restored after.
    """
    global _pool
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or len(chunks) == 1:
        return [work(rows) for rows in chunks]
    if _pool is None or _pool[0] != threads:
        _pool = (threads, ThreadPoolExecutor(threads, thread_name_prefix="conceptlib-chunk"))
    torch.set_num_threads(1)
    try:
        return list(_pool[1].map(work, chunks))
    finally:
        torch.set_num_threads(threads)


@contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """Intra-op threads set to 1 on the CPU while a sampler updates its chain between energy evaluations.

    The update is a few memory-bound passes; run on OpenMP's threads, it leaves libgomp's worker spinning
    for its next task (~3 ms by default) on a core that the chunk threads of the next evaluation need:
    measured ~3 ms of start latency (0.2-0.35 ms without) and 1.06-1.29x images/s, most at batch 64
    (benchmarks/openmp_spin.py). ``OMP_WAIT_POLICY=PASSIVE`` gives the same, but must be set before torch
    loads and changes every OpenMP region in the process.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or not UPDATE_ON_ONE_THREAD:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def prefer_channels_last(model: nn.Module, device: torch.device) -> nn.Module:
    """Store 4-d weights channels-last on the CPU, so convolutions skip layout reorders (in place)."""
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model


def for_condition(model: nn.Module, condition: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The network's specialisation to ``condition`` ``(1, dim)``, if it offers one and is frozen."""
    specialise = getattr(model, "for_condition", None)
    if specialise is None or condition.shape[0] != 1 or _trainable(model):
        return None
    return specialise(condition)


def evaluate(fn: Callable[..., torch.Tensor], x: torch.Tensor, *per_sample: torch.Tensor) -> torch.Tensor:
    """``fn(x, *per_sample)`` ``(B,)`` for a frozen network, chunk by chunk, its input gradient precomputed.

    ``per_sample`` tensors have one row per image and are sliced with ``x``. Falls back to one plain
    call when anything but ``x`` needs a gradient (a trained network, a condition being optimised).
    """
    if (isinstance(fn, nn.Module) and _trainable(fn)) or any(t.requires_grad for t in per_sample):
        return fn(x, *per_sample)
    return _EnergyAndGradient.apply(x, fn, chunk_size(x.device, x.shape[0]), *per_sample)


def _trainable(model: nn.Module) -> bool:
    return any(p.requires_grad for p in model.parameters())


class _EnergyAndGradient(torch.autograd.Function):
    """Energies whose input gradient is computed in the forward pass, chunk by chunk.

    The backward only scales the stored gradient, so it supports one derivative (what samplers and
    frozen scores need), not a second one.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor, fn: Callable[..., torch.Tensor], chunk: int,
                *per_sample: torch.Tensor) -> torch.Tensor:
        want_gradient = ctx.needs_input_grad[0]
        gradient = torch.empty_like(x, memory_format=torch.contiguous_format) if want_gradient else None

        def work(rows: slice) -> torch.Tensor:
            part = x[rows].detach()
            with torch.set_grad_enabled(want_gradient):  # grad mode is per thread
                energy = fn(part.requires_grad_(want_gradient), *(t[rows] for t in per_sample))
                if gradient is not None:  # each thread writes its rows: no concatenation on OpenMP's threads after
                    gradient[rows] = torch.autograd.grad(energy.sum(), part)[0]
            return energy.detach()

        chunks = [slice(start, start + chunk) for start in range(0, x.shape[0], chunk)]
        energies = run_parallel(work, chunks, x.device)
        ctx.extra = len(per_sample)  # type: ignore[attr-defined]
        if gradient is not None:
            ctx.save_for_backward(gradient)  # type: ignore[misc]
        return torch.cat(energies)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_energy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (gradient,) = ctx.saved_tensors
        if not bool((grad_energy == 1).all()):  # a sampler's E.sum() takes the gradient as it is
            gradient = grad_energy.view(-1, *[1] * (gradient.dim() - 1)) * gradient
        return (gradient, None, None, *[None] * ctx.extra)
