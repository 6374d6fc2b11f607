"""Running under ``torchrun``: one process per rank, gradients all-reduced, one registry write.

conceptlib has no launcher of its own: ``torchrun ... -m conceptlib add|compose ...`` starts the ranks
and sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Without them every
function here is a no-op for a single process, and ``torch.distributed`` is never imported.

Only tensor collectives are used (``all_reduce``, ``broadcast``), never the object collectives, which
pickle. A fault that one rank detects itself (a NaN loss) is agreed on by an all-reduce of a flag so
every rank stops at the same iteration; any other exception ends that rank's process, torchrun then
stops the others, and rank 0 writes to the registry only after every rank has agreed that it finished.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from conceptlib.errors import ConceptError, DistributedError, TrainingError

LAUNCH_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT_ENV = "CONCEPTLIB_DIST_TIMEOUT"
"""Seconds to wait for the other ranks at start-up and in each collective (default 600)."""
TRACE_ENV = "CONCEPTLIB_DIST_TRACE"
"""A directory: every rank appends the sha256 of its weights after each training step to ``rank<R>.txt``,
so one can check that the ranks stay in step."""

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run; a plain process is rank 0 of 1 with no backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Launched by torchrun (even with one rank): collectives run, hyperparameters record it."""
        return self.backend is not None

    def to_json(self) -> dict[str, object]:
        return {"world_size": self.world_size, "backend": self.backend}


SINGLE = Ranks()
_current = SINGLE
_device = torch.device("cpu")


def launched() -> bool:
    """Whether torchrun (or anything setting its rank variables) started this process.

    ``MASTER_ADDR`` alone does not count: some clusters export it to every job.
    """
    return any(name in os.environ for name in LAUNCH_ENV[:3])


def current() -> Ranks:
    return _current


@contextmanager
def session(device: torch.device) -> Iterator[torch.device]:
    """Join the run's process group for the ``with`` block; yields this rank's device.

    The backend follows the device: NCCL for CUDA (one GPU per local rank), gloo for the CPU.
    """
    global _current, _device
    if not launched():
        yield device
        return
    ranks = _ranks_from_env(device)
    if device.type == "cuda":
        if ranks.local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK {ranks.local_rank} needs a GPU of its own, but this machine has "
                f"{torch.cuda.device_count()}; start at most that many ranks per node (--nproc-per-node)"
            )
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    import torch.distributed as dist

    timeout = timedelta(seconds=_timeout())
    try:
        dist.init_process_group(ranks.backend, rank=ranks.rank, world_size=ranks.world_size, timeout=timeout)
    except Exception as exc:  # the store's and backends' errors share no base class
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DistributedError(
            f"rank {ranks.rank} could not join the run at {os.environ.get('MASTER_ADDR')}:"
            f"{os.environ.get('MASTER_PORT')} ({reason}); check that the rendezvous address is reachable "
            "from every node and that every node starts the same command"
        ) from None
    _current, _device = ranks, device
    try:
        yield device
    finally:
        _current, _device = SINGLE, torch.device("cpu")
        dist.destroy_process_group()


def _ranks_from_env(device: torch.device) -> Ranks:
    missing = [name for name in LAUNCH_ENV if name not in os.environ]
    if missing:
        raise DistributedError(
            f"{', '.join(missing)} not set, but {', '.join(n for n in LAUNCH_ENV if n not in missing)} is: "
            "start distributed runs with torchrun, or unset these variables for a single process"
        )
    try:
        world_size, rank, local_rank = (int(os.environ[n]) for n in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    except ValueError:
        raise DistributedError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers") from None
    if not 0 <= rank < world_size or local_rank < 0:
        raise DistributedError(f"RANK {rank} is outside WORLD_SIZE {world_size}")
    return Ranks(rank, world_size, local_rank, "nccl" if device.type == "cuda" else "gloo")


def _timeout() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, "600"))
    except ValueError:
        raise DistributedError(f"${TIMEOUT_ENV} must be a number of seconds") from None


def stream_seed(seed: int, index: int) -> int:
    """The seed of random stream ``index`` of a run seeded with ``seed``: ``seed`` itself for stream 0.

    Rank ``r`` of a training run draws from stream ``r`` and batch ``b`` of a composition from stream
    ``b``, so rank 0 (and a single process) keeps the seed as given and the others get unrelated seeds.
    """
    if index == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**64, index]).generate_state(1, np.uint64)[0])


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in DistributedDataParallel when the run has ranks: its backward all-reduces gradients.

    Only the network being trained goes through this; frozen concepts and EMA copies stay plain modules.
    """
    if not _current.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [_device.index] if _device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def failed_rank(failed: bool) -> int | None:
    """Agree on a fault: the highest rank that reports one (``None`` when none does). Every rank must call it."""
    if not _current.active:
        return 0 if failed else None
    import torch.distributed as dist

    flag = torch.tensor([_current.rank + 1 if failed else 0], device=_device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    value = int(flag.item())
    return value - 1 if value else None


def all_or_none(what: str, check: Callable[..., None], *args: Any) -> None:
    """``check(*args)`` on every rank; if it raises a ``ConceptError`` on any rank, every rank raises.

    The rank that found the fault raises its own error; the others say which rank stopped them. Every
    rank must call this at the same point of the run.
    """
    error: ConceptError | None = None
    try:
        check(*args)
    except ConceptError as exc:
        if not _current.active:
            raise
        error = exc
    culprit = failed_rank(error is not None)
    if error is not None:
        raise error
    if culprit is not None:
        raise TrainingError(f"rank {culprit} stopped: {what}; every rank stopped and nothing was registered")


def broadcast_int(value: int) -> int:
    """Rank 0's ``value`` on every rank."""
    if not _current.active:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.int64, device=_device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def barrier() -> None:
    if _current.active:
        import torch.distributed as dist

        dist.barrier()


def main_first(run: Callable[[], T]) -> T:
    """``run()`` on rank 0 first, then on the others: what rank 0 creates (a registry) exists for them."""
    if not _current.is_main:
        barrier()
    result = run()
    if _current.is_main:
        barrier()
    return result


def gather_rows(rows: np.ndarray, first: int, total: int) -> np.ndarray:
    """Every rank's ``uint8`` rows, placed at ``first`` of ``total``, on every rank (disjoint slices)."""
    if not _current.active:
        return rows
    import torch.distributed as dist

    union = torch.zeros((total, *rows.shape[1:]), dtype=torch.uint8, device=_device)
    union[first:first + len(rows)] = torch.from_numpy(rows).to(_device)
    dist.all_reduce(union, op=dist.ReduceOp.MAX)  # zeros elsewhere, so the maximum is the union
    return union.cpu().numpy()


def trace(iteration: int, modules: Mapping[str, nn.Module]) -> None:
    """With ``$CONCEPTLIB_DIST_TRACE`` set, append this rank's weight digests after ``iteration``."""
    directory = os.environ.get(TRACE_ENV)
    if not directory:
        return
    digests = []
    for name, module in modules.items():
        digest = hashlib.sha256()
        for key, value in module.state_dict().items():
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        digests.append(f"{name}={digest.hexdigest()}")
    path = Path(directory) / f"rank{_current.rank}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(f"{iteration} {' '.join(digests)}\n")
