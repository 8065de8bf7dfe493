"""Choosing the device, and torch.distributed set-up when launched by torchrun.

Under torchrun every process runs the same `charrnn train`; torchrun tells each
one its place through RANK, WORLD_SIZE and LOCAL_RANK. Gradients are averaged
by DistributedDataParallel; the few other numbers the processes must share
(throughput, validation loss, when to stop, the carried state for a
checkpoint) go through the collectives made by `make_reducers`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import UserError


def resolve_device(name: str, impl: str, local_rank: int | None = None):
    """auto -> cuda, then mps, then cpu. Returns a torch.device, or None for the NumPy engine.

    `local_rank` (torchrun's LOCAL_RANK) picks the GPU: process k of a node uses cuda:k.
    """
    if impl == "naive":
        if name in ("cuda", "mps"):
            raise UserError(f"--impl naive runs on the CPU with NumPy; drop --device {name} or use --impl library")
        return None
    try:
        import torch
    except ImportError:
        raise UserError(f"--impl {impl} needs PyTorch, which is not installed; install torch or use --impl naive") from None

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available; use --device cpu (or auto)")
        index = local_rank or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {index} has no GPU: this node has {torch.cuda.device_count()}; "
                            "start at most that many processes per node (torchrun --nproc-per-node)")
        return torch.device("cuda", index)
    if name == "mps" and not _mps_available():
        raise UserError("--device mps: Apple's MPS backend is not available here; use --device cpu (or auto)")
    if name == "mps" and local_rank is not None:
        raise UserError("torchrun with --device mps is not supported (no collective backend for MPS); use --device cpu")
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

    def shard_rows(self, batch_size: int) -> tuple[int, int, int]:
        """(start, stop, total): the contiguous streams of the global batch this process owns."""
        from .batching import share_of

        return (*share_of(batch_size, self.rank, self.size), batch_size)


def world_from_env() -> World:
    """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them; rank 0 of 1 when they are absent."""
    try:
        world = World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                      int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers; launch with torchrun") from None
    if world.size < 1 or not 0 <= world.rank < world.size:
        raise UserError(f"RANK {world.rank} is outside WORLD_SIZE {world.size}; launch with torchrun")
    return world


def init_distributed(world: World, device) -> None:
    """Join the process group: NCCL between GPUs, gloo between CPU processes."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's own buffers go to this process's GPU, not cuda:0
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")


def close_distributed(finished: bool) -> None:
    """Leave the process group. After a finished run, wait for every process first: rank 0 may
    still be writing the last checkpoint, and a process that tears gloo down and exits meanwhile
    was seen to abort ("terminate called without an active exception"). After an error, no
    barrier: the others may be stuck in a collective, and torchrun ends them."""
    import torch.distributed as dist

    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def make_reducers(world: World, device):
    """reduce_sum and reduce_max (list of floats -> list of floats, the same on every process)
    and gather_state (this process's (L, b, H) arrays -> the global batch's (L, B, H) arrays).

    Every process must call each of them at the same points, in the same order:
    they are collectives. Outside torchrun they return their input.
    """
    if not world.distributed or device is None:
        return (lambda values: values), (lambda values: values), (lambda states: states)
    import numpy as np
    import torch
    import torch.distributed as dist

    comm_device = device if device.type == "cuda" else torch.device("cpu")

    def reduce(values, op):
        t = torch.tensor(values, dtype=torch.float64, device=comm_device)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def gather_state(states):
        out = []
        for s in states:
            local = torch.as_tensor(np.ascontiguousarray(s), device=comm_device)
            parts = [torch.empty_like(local) for _ in range(world.size)]
            dist.all_gather(parts, local)
            out.append(torch.cat(parts, dim=1).cpu().numpy())  # ranks own contiguous rows, in rank order
        return out

    def reduce_sum(values):
        return reduce(values, dist.ReduceOp.SUM)

    def reduce_max(values):
        return reduce(values, dist.ReduceOp.MAX)

    return reduce_sum, reduce_max, gather_state
