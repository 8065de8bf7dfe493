"""Choosing the device, and torch.distributed set-up when launched by torchrun."""
from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import UserError


def resolve_device(name: str, impl: str, local_rank: int | None = None):
    """auto -> cuda, then mps, then cpu. Returns a torch.device, or None for the NumPy engine."""
    if impl == "naive":
        if name in ("cuda", "mps"):
            raise UserError(f"--impl naive runs on the CPU with NumPy; drop --device {name} or use --impl library")
        return None
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available; use --device cpu (or auto)")
        return torch.device("cuda", local_rank or 0)
    if name == "mps" and not _mps_available():
        raise UserError("--device mps: Apple's MPS backend is not available here; use --device cpu (or auto)")
    return torch.device(name)


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


@dataclass(frozen=True)
class World:
    """This process's place among the torchrun processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(world: World, device) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def make_reducers(world: World, device):
    """reduce_sum(list of floats) and gather_state(list of (L, b, H) arrays) across ranks."""
    if not world.distributed:
        return (lambda values: values), (lambda states: states)
    import numpy as np
    import torch
    import torch.distributed as dist

    comm_device = device if device.type == "cuda" else torch.device("cpu")

    def reduce_sum(values):
        t = torch.tensor(values, dtype=torch.float64, device=comm_device)
        dist.all_reduce(t)
        return t.tolist()

    def gather_state(states):
        out = []
        for s in states:
            local = torch.as_tensor(np.ascontiguousarray(s), device=comm_device)
            parts = [torch.empty_like(local) for _ in range(world.size)]
            dist.all_gather(parts, local)
            out.append(torch.cat(parts, dim=1).cpu().numpy())
        return out

    return reduce_sum, gather_state
