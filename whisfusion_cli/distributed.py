"""Where training computes: the torchrun process group and this process's device, bf16 autocast,
and the decoder as one forward that DistributedDataParallel can wrap.

Under torchrun (RANK/WORLD_SIZE set) the group is nccl on CUDA (one GPU per LOCAL_RANK), gloo on
the CPU; otherwise one process on the device asked for.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import resolve_device

__all__ = ["Denoiser", "Dist", "autocast", "init_distributed"]


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over processes."""
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()


def init_distributed(device: str) -> tuple[Dist, bool]:
    """The process group under torchrun (nccl on CUDA, gloo on CPU); returns (Dist, created here)."""
    dev = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or "RANK" not in os.environ:
        return Dist(0, 1, dev), False
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    created = not torch.distributed.is_initialized()
    if created:
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), dev), created


class Denoiser(nn.Module):
    """The decoder as one forward (adapter K/V + canvas), so DistributedDataParallel can wrap it."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, xa: Tensor, n_frames: Tensor, xt: Tensor) -> Tensor:
        return self.decoder(xt, self.decoder.cross_kv(xa, n_frames))  # (B, L, V)


def autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA GPUs that have it; fp32 elsewhere."""
    on = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast("cuda", torch.bfloat16) if on else nullcontext()
