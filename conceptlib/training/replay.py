"""The replay buffer: past negatives, so contrastive-divergence chains continue instead of restarting
(Du & Mordatch 2019)."""

from __future__ import annotations

import torch


class ReplayBuffer:
    """A ring of ``capacity`` images; sampled uniformly with replacement."""

    def __init__(self, capacity: int, image_shape: tuple[int, int, int], device: torch.device) -> None:
        self.capacity = capacity
        self.images = torch.empty((capacity, *image_shape), device=device)
        self.size = 0
        self._next = 0

    def __len__(self) -> int:
        return self.size

    def push(self, images: torch.Tensor) -> None:
        for image_batch in images.detach().split(self.capacity):
            n = image_batch.shape[0]
            index = (torch.arange(n, device=image_batch.device) + self._next) % self.capacity
            self.images[index] = image_batch
            self._next = (self._next + n) % self.capacity
            self.size = min(self.size + n, self.capacity)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, self.size, (n,), generator=generator, device=self.images.device)
        return self.images[index].clone()
