"""Resumable training: the state of an unfinished run, kept outside the registry.

A run that stops (Ctrl-C, a diverging loss, a dataset source that fails) registers nothing, but its
last checkpoint lets ``concept add --resume`` continue from there. A checkpoint is one safetensors file
(weights, Adam moments, generator states, replay buffer) and one JSON file (iteration, numpy generator
state, optimizer settings, history): no pickle, so a checkpoint is data, never code. Each file is
written under a temporary name, flushed and renamed, so a crash leaves the previous checkpoint whole,
and the JSON records the tensors' sha256, so a damaged checkpoint is refused instead of resumed.

A checkpoint is bound to its run: the JSON records the run's key (registry, concept, source and parameters,
architecture, settings) and the sha256 of every frozen concept's weights, and a resume that does not match
both (a checkpoint copied from another run's folder, frozen weights that changed since) is refused. The
JSON is read as untrusted: bounded in size and nesting, every field checked, the tensors file named only
by a plain ``state-<sha256>.safetensors`` in the checkpoint's own directory.

Ctrl-C during training is deferred to the end of the current iteration, so the checkpoint it saves is
consistent; a second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import stat
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

from conceptlib import distributed, untrusted
from conceptlib.errors import CheckpointError, Interrupted
from conceptlib.files import atomic_write
from conceptlib.limits import MAX_CHECKPOINT_BYTES, MAX_CHECKPOINT_JSON_BYTES, MAX_ITERATIONS
from conceptlib.registry.engine import sqlite_path

if TYPE_CHECKING:
    from conceptlib.training.replay import ReplayBuffer

FORMAT_VERSION = 2
"""2: bound to its run (``run``); checkpoints of format 1 are refused (start again without --resume)."""
STATE_FILE = "checkpoint.json"
TENSORS_NAME = re.compile(r"state-[0-9a-f]{24}\.safetensors")
START_AGAIN = "start again without --resume"
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
                 interrupt: DeferredInterrupt | None = None, run: dict[str, Any] | None = None) -> None:
        self.directory = directory
        self.every = every
        self.total = total
        self.interrupt = interrupt
        self.run = run or {}
        """What binds a checkpoint to its run (``{"key": ..., "frozen": {ref: weights sha256}}``); a resume
        refuses a checkpoint whose record differs."""
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
            buffer = untrusted.mapping(saved["buffer"]) if state.buffer is not None else {}
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
                capacity = len(state.buffer.images)
                size = untrusted.integer(buffer.get("size"), 0, capacity, "buffer size")
                following = untrusted.integer(buffer.get("next"), 0, capacity, "buffer position")
                state.buffer.images[:size] = tensors["buffer.images"].to(state.buffer.images.device)
                state.buffer.size = size
                state.buffer._next = following  # the write position is part of what makes a resume exact
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as exc:
            raise CheckpointError(
                f"the checkpoint in {self.directory} does not fit this run ({exc.__class__.__name__}: "
                f"{(str(exc).splitlines() or [''])[0][:200]}); {START_AGAIN}"
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
            raise CheckpointError(
                f"nothing to resume: no checkpoint in {self.directory} for this run. A checkpoint belongs to "
                "one name, source, parameters, frozen versions, architecture and settings (only --iterations "
                "and --lr may change); run without --resume to start again"
            )
        try:
            saved = untrusted.mapping(untrusted.load_json(_read_file(path, MAX_CHECKPOINT_JSON_BYTES),
                                                          MAX_CHECKPOINT_JSON_BYTES))
            if saved.get("format_version") != FORMAT_VERSION:
                raise untrusted.Malformed(f"format {str(saved.get('format_version'))[:20]}, this conceptlib writes "
                                          f"{FORMAT_VERSION}")
            iteration = untrusted.integer(saved.get("iteration"), 1, MAX_ITERATIONS, "iteration")
            if len(untrusted.sequence(saved.get("history"))) != iteration:
                raise untrusted.Malformed(f"a history of {len(saved['history'])} iterations for iteration {iteration}")
            if not TENSORS_NAME.fullmatch(str(saved.get("tensors"))):
                raise untrusted.Malformed("its tensors are not named state-<sha256>.safetensors")
            untrusted.text(saved.get("tensors_sha256"))
            untrusted.mapping(saved.get("optimizer"))
        except (untrusted.Malformed, OSError) as exc:
            raise CheckpointError(f"the checkpoint {path} is unreadable ({exc}); {START_AGAIN}") from None
        if self.run:  # a checkpoint read without saying which run wants it (to inspect it) is not bound
            self._check_run(saved.get("run"))
        if self.total and iteration > self.total:
            raise CheckpointError(
                f"the checkpoint in {self.directory} is at iteration {iteration}, past --iterations {self.total}: "
                f"pass --iterations {iteration} or more, or {START_AGAIN}"
            )
        return saved

    def _check_run(self, saved: Any) -> None:
        """Refuse a checkpoint of another run, or of this run against frozen weights that have changed since."""
        saved = saved if isinstance(saved, dict) else {}
        if saved.get("key") != self.run.get("key"):
            raise CheckpointError(
                f"the checkpoint in {self.directory} was made by another run (another concept, source, settings or "
                f"registry: it was copied or moved here); {START_AGAIN}"
            )
        frozen, now = saved.get("frozen"), self.run.get("frozen", {})
        changed = [ref for ref in now if not isinstance(frozen, dict) or frozen.get(ref) != now[ref]]
        if changed or (isinstance(frozen, dict) and set(frozen) != set(now)):
            names = ", ".join(changed) or "the frozen concepts"
            raise CheckpointError(
                f"the checkpoint in {self.directory} was made against other weights of {names} than the registry "
                f"holds now; {START_AGAIN}"
            )

    def _tensors(self, saved: dict[str, Any]) -> dict[str, torch.Tensor]:
        assert self.directory is not None
        path = self.directory / str(saved["tensors"])
        try:
            data = _read_file(path, MAX_CHECKPOINT_BYTES)
        except (OSError, untrusted.Malformed) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise CheckpointError(f"the checkpoint's tensors {path} are missing or unusable ({reason}); "
                                  f"{START_AGAIN}") from None
        if hashlib.sha256(data).hexdigest() != saved["tensors_sha256"]:
            raise CheckpointError(f"the checkpoint's tensors {path} are damaged (sha256 mismatch); {START_AGAIN}")
        try:
            return st_load(data)
        except (SafetensorError, ValueError) as exc:
            raise CheckpointError(f"the checkpoint's tensors {path} are unreadable ({exc}); {START_AGAIN}") from None

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
            "run": self.run,
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


def _read_file(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (not a link, FIFO or device), refused past ``limit`` bytes."""
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise untrusted.Malformed(f"{path.name} is not a regular file")
    if info.st_size > limit:
        raise untrusted.Malformed(f"{path.name} is {info.st_size} bytes, more than {limit}")
    with path.open("rb") as handle:
        return handle.read(limit + 1)


def _same_start(start: int, first: int, directory: Path | None) -> None:
    if start != first:
        raise CheckpointError(
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
