"""Resumable training: the state of an unfinished run, kept outside the registry.

A run that stops (Ctrl-C, a diverging loss, a dataset source that fails) registers nothing, but its
last checkpoint lets ``concept add --resume`` continue from there. A checkpoint is one safetensors file
(weights, Adam moments, generator states, replay buffer) and one JSON file (iteration, numpy generator
state, optimizer settings, history): no pickle, so a checkpoint is data, never code. Each file is
written under a temporary name, flushed and renamed, so a crash leaves the previous checkpoint whole,
and the JSON records the tensors' sha256, so a damaged checkpoint is refused instead of resumed.

Ctrl-C during training is deferred to the end of the current iteration, so the checkpoint it saves is
consistent; a second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from conceptlib import distributed
from conceptlib.errors import Interrupted, TrainingError
from conceptlib.files import atomic_write
from conceptlib.registry.engine import sqlite_path

if TYPE_CHECKING:
    from conceptlib.training.replay import ReplayBuffer

FORMAT_VERSION = 1
STATE_FILE = "checkpoint.json"
CHECKPOINTS_ENV = "CONCEPTLIB_CHECKPOINTS"


def checkpoint_root(registry_url: str) -> Path:
    """Where runs of this registry keep checkpoints: ``$CONCEPTLIB_CHECKPOINTS``, else beside a SQLite
    registry file (``registry.db.checkpoints/``), else ``~/.cache/conceptlib/checkpoints``."""
    if os.environ.get(CHECKPOINTS_ENV):
        return Path(os.environ[CHECKPOINTS_ENV]).expanduser()
    path = sqlite_path(registry_url)
    if path is not None:
        return path.with_name(f"{path.name}.checkpoints")
    return Path("~/.cache/conceptlib/checkpoints").expanduser()


@dataclass
class TrainingState:
    """What a training loop carries across a resume to continue bit for bit."""

    modules: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    rng: np.random.Generator
    generator: torch.Generator
    history: list[dict[str, float]]
    buffer: ReplayBuffer | None = None


class DeferredInterrupt:
    """While active (main thread only), the first Ctrl-C sets ``pressed`` instead of raising."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous: Any = None

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class Checkpoint:
    """One run's checkpoint directory; ``None`` disables checkpoints (the loops then only count).

    ``restore`` is called once before the loop and returns the first iteration to run; ``completed``
    after every iteration saves every ``every`` iterations, at the last one (so a failed registration
    need not retrain), and when Ctrl-C was pressed, which it then turns into :class:`Interrupted`.
    """

    def __init__(self, directory: Path | None, every: int = 100, resume: bool = False, total: int = 0,
                 interrupt: DeferredInterrupt | None = None) -> None:
        self.directory = directory
        self.every = every
        self.total = total
        self.interrupt = interrupt
        self.saved: int | None = None
        """The iteration of the checkpoint on disk (restored or written by this run)."""
        self.completed_iterations = 0
        self._state: dict[str, Any] | None = None
        if resume:
            self._state = self._read()
            self.saved = int(self._state["iteration"])

    @classmethod
    def disabled(cls) -> Checkpoint:
        return cls(None)

    def describe(self) -> str:
        """A clause for messages: where the run can be continued from."""
        if self.directory is None or self.saved is None:
            return "no checkpoint was saved"
        return (f"a checkpoint at iteration {self.saved} is in {self.directory}; "
                "continue with 'concept add ... --resume'")

    # ------------------------------------------------------------ restore
    def restore(self, state: TrainingState) -> int:
        """Load the checkpoint read at construction into ``state``; the first iteration to run.

        Under torchrun each rank restores its own checkpoint, and all must continue at the same iteration.
        """
        start = self._restore(state)
        distributed.all_or_none("its checkpoint is from another iteration", _same_start, start,
                                distributed.broadcast_int(start), self.directory)
        return start

    def _restore(self, state: TrainingState) -> int:
        if self._state is None:
            return 1
        saved = self._state
        tensors = self._tensors(saved)
        try:
            for name, module in state.modules.items():
                prefix = f"module.{name}."
                module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
            learning_rates = [group["lr"] for group in state.optimizer.param_groups]
            state.optimizer.load_state_dict(_optimizer_state(saved["optimizer"], tensors))
            for group, lr in zip(state.optimizer.param_groups, learning_rates):
                group["lr"] = lr  # a resumed run may train more gently than the one that stopped
            state.rng.bit_generator.state = saved["numpy_rng"]
            state.generator.set_state(tensors["rng.generator"])
            torch.set_rng_state(tensors["rng.torch"])
            if state.buffer is not None:
                size, following = int(saved["buffer"]["size"]), int(saved["buffer"]["next"])
                state.buffer.images[:size] = tensors["buffer.images"].to(state.buffer.images.device)
                state.buffer.size = size
                state.buffer._next = following  # the write position is part of what makes a resume exact
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise TrainingError(
                f"the checkpoint in {self.directory} does not fit this run ({exc.__class__.__name__}: "
                f"{(str(exc).splitlines() or [''])[0]}); start again without --resume"
            ) from None
        state.history[:] = saved["history"]
        self.completed_iterations = int(saved["iteration"])
        return int(saved["iteration"]) + 1

    def verify(self) -> None:
        """Check the checkpoint read at construction: its tensors are there and match their sha256."""
        if self._state is not None:
            self._tensors(self._state)

    def _read(self) -> dict[str, Any]:
        path = self.directory / STATE_FILE if self.directory is not None else None
        if path is None or not path.is_file():
            raise TrainingError(
                f"nothing to resume: no checkpoint in {self.directory} for this run. A checkpoint belongs to "
                "one name, source, parameters, frozen versions, architecture and settings (only --iterations "
                "and --lr may change); run without --resume to start again"
            )
        try:
            saved = json.loads(path.read_text())
            if saved.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format {saved.get('format_version')!r}")
            int(saved["iteration"])
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise TrainingError(f"the checkpoint {path} is unreadable ({exc}); start again without --resume") from None
        return saved

    def _tensors(self, saved: dict[str, Any]) -> dict[str, torch.Tensor]:
        assert self.directory is not None
        path = self.directory / str(saved["tensors"])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TrainingError(f"the checkpoint's tensors {path} are missing ({exc.strerror}); "
                                "start again without --resume") from None
        if hashlib.sha256(data).hexdigest() != saved["tensors_sha256"]:
            raise TrainingError(f"the checkpoint's tensors {path} are damaged (sha256 mismatch); "
                                "start again without --resume")
        try:
            return st_load(data)
        except (SafetensorError, ValueError) as exc:
            raise TrainingError(f"the checkpoint's tensors {path} are unreadable ({exc})") from None

    # --------------------------------------------------------------- save
    def completed(self, iteration: int, state: TrainingState) -> None:
        """Called after every iteration: save when due, and stop here if Ctrl-C was pressed."""
        self.completed_iterations = iteration
        pressed = self.interrupt is not None and self.interrupt.pressed
        pressed = distributed.failed_rank(pressed) is not None  # Ctrl-C on one rank stops all at this iteration
        due = iteration % self.every == 0 or iteration == self.total or pressed
        if self.directory is not None and due:
            self.save(iteration, state)
        if pressed:
            raise Interrupted(f"interrupted after iteration {iteration}: nothing was registered; {self.describe()}")

    def save(self, iteration: int, state: TrainingState) -> None:
        """Write the state after ``iteration`` (tensors first, then the JSON that points at them)."""
        assert self.directory is not None
        tensors: dict[str, torch.Tensor] = {}
        for name, module in state.modules.items():
            tensors.update({f"module.{name}.{k}": v for k, v in module.state_dict().items()})
        optimizer = state.optimizer.state_dict()
        values: dict[str, dict[str, Any]] = {}
        for index, param_state in optimizer["state"].items():
            for key, value in param_state.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{index}.{key}"] = value
                else:
                    values.setdefault(str(index), {})[key] = value
        tensors["rng.generator"] = state.generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        buffer = None
        if state.buffer is not None:
            tensors["buffer.images"] = state.buffer.images[: state.buffer.size]
            buffer = {"size": state.buffer.size, "next": state.buffer._next}
        data = st_save({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()})
        digest = hashlib.sha256(data).hexdigest()
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"state-{digest[:24]}.safetensors"  # named by content: never rewritten under a JSON that names it
        _write_atomically(self.directory / name, data)
        document = {
            "format_version": FORMAT_VERSION,
            "iteration": iteration,
            "saved_at": datetime.now(timezone.utc).isoformat(),
            "tensors": name,
            "tensors_sha256": digest,
            "numpy_rng": state.rng.bit_generator.state,
            "optimizer": {"param_groups": optimizer["param_groups"], "values": values},
            "buffer": buffer,
            "history": state.history,
        }
        _write_atomically(self.directory / STATE_FILE, json.dumps(document).encode())
        for old in self.directory.glob("state-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)
        self.saved = iteration

    def discard(self) -> None:
        """Remove the checkpoint once its run is registered."""
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.directory.parent.rmdir()  # only if no other run left a checkpoint there


def _same_start(start: int, first: int, directory: Path | None) -> None:
    if start != first:
        raise TrainingError(
            f"the checkpoint in {directory} continues at iteration {start}, rank 0's at {first}: the ranks "
            "stopped at different points; start again without --resume"
        )


def _optimizer_state(saved: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """An optimizer ``state_dict`` rebuilt from the checkpoint's tensors and JSON."""
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = tensor
    for index, values in saved.get("values", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": saved["param_groups"]}


def _write_atomically(path: Path, data: bytes) -> None:
    """``data`` on disk (flushed to it) under ``path``, or ``path`` as it was."""

    def write(temporary: Path) -> None:
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(path, write)
