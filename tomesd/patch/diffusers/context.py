"""Per patched model: the latent size of the current forward and the key of its destination draw."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...merge import hash32


class LatentContext:
    """What every block of one model needs from the model's own input: the latent's height and width
    (Python ints: shapes, so static under ``torch.compile``), its frame count, and :attr:`key`, an int64
    tensor hashing the seed and the timestep, from which each block draws its destinations.

    Args:
        seed: the patch's ``seed`` option.
        frame_dim: the latent's frame dimension (video models) or None.
        sample_arg: the model's forward argument holding the latent (when passed by keyword).
        timestep_position: the positional index of the forward's ``timestep`` argument (None: keyword only).
        sample_rank: the least rank of a tensor taken as the latent (smaller ones are ignored).
    """

    def __init__(self, seed: int, frame_dim: int | None = None, sample_arg: str = "sample",
                 timestep_position: int | None = 1, sample_rank: int = 4) -> None:
        self.seed = seed
        self.sample_arg = sample_arg
        self.timestep_position = timestep_position
        self.sample_rank = sample_rank
        self._seed_hash = int(hash32(torch.tensor(seed)))  # once, at patch time
        self.frame_dim = frame_dim
        self.height = self.width = 0
        self.frames = 1
        self.started = False  # False until the model's forward has set the latent size
        self._timestep: Any = None
        self._device: torch.device | None = None
        self._key: Tensor | None = None

    def begin(self, sample: Tensor, timestep: Any) -> None:
        """Start a forward of the model on ``sample``: remember its size and timestep. No tensor work
        here: under ``torch.compile`` the model's own pre-hook runs outside its graph, so the key is
        derived lazily, inside the graph, by the first block that needs it."""
        self.height, self.width = sample.shape[-2:]
        self.frames = sample.shape[self.frame_dim] if self.frame_dim is not None else 1
        self._timestep, self._device, self._key, self.started = timestep, sample.device, None, True

    @property
    def key(self) -> Tensor:
        """(1,) int64 hash of the seed and the current timestep: equal timesteps draw equal destinations,
        whatever happened before."""
        if self._key is None:
            self._key = hash32(_timestep_key(self._timestep, self._device) ^ self._seed_hash)
        return self._key


def _timestep_key(timestep: Any, device: torch.device) -> Tensor:
    """(1,) int64: the timestep (the first entry of a tensor; 0 when absent) in thousandths, on ``device``.
    Tensor arithmetic only, never ``.item()``: no host sync, traceable."""
    if timestep is None:
        return torch.zeros(1, dtype=torch.long, device=device)
    if not isinstance(timestep, Tensor):  # a Python number: a constant of the graph
        return torch.full((1,), round(float(timestep) * 1000), dtype=torch.long, device=device)
    first = timestep.reshape(-1)[:1].to(device=device, dtype=torch.float32)
    if first.numel() == 0:
        return torch.zeros(1, dtype=torch.long, device=device)
    return (first * 1000).round().long()
