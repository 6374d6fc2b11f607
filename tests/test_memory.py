"""Freed memory kept for reuse: glibc's malloc tuned once, on the CPU, unless the user says not to."""

from __future__ import annotations

import ctypes

import pytest
import torch

from conceptlib import memory


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

        def mallopt(option: int, value: int) -> int:
            self.calls.append((option, value))
            return 1

        self.mallopt = mallopt


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(memory, "_state", None)
    monkeypatch.setattr(memory.sys, "platform", "linux")
    monkeypatch.delenv(memory.MALLOC_ENV, raising=False)


def test_tunes_glibc_once_with_thresholds_a_chunk_fits_under(fresh, monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    assert memory.keep_freed_memory(torch.device("cpu")) is True
    assert memory.keep_freed_memory(torch.device("cpu")) is True
    assert libc.calls == [(-3, 32 * 2**20), (-1, 2**30)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, once
    assert memory.MMAP_THRESHOLD > 32 * 32 * 32 * 32 * 4  # a 32-image chunk's largest activation fits under it


def test_system_leaves_malloc_alone(fresh, monkeypatch):
    monkeypatch.setenv(memory.MALLOC_ENV, "system")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: pytest.fail("libc loaded"))
    assert memory.keep_freed_memory(torch.device("cpu")) is False


def test_gpu_and_libcs_without_mallopt_are_left_alone(fresh, monkeypatch):
    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())  # no mallopt (musl)
    assert memory.keep_freed_memory(torch.device("cuda")) is False
    assert memory._state is None  # the GPU never decides it
    assert memory.keep_freed_memory(torch.device("cpu")) is False


def test_other_platforms_are_left_alone(fresh, monkeypatch):
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: pytest.fail("libc loaded"))
    assert memory.keep_freed_memory(torch.device("cpu")) is False
