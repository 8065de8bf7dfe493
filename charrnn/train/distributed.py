"""The distributed world: this process's place among torchrun's processes, and the collectives.

Under torchrun every process runs the same `charrnn train`; torchrun tells each one its
place through RANK, WORLD_SIZE and LOCAL_RANK. Gradients are averaged by
DistributedDataParallel; the few other numbers the processes must share (throughput,
training and validation loss, when to stop, the carried state for a checkpoint) go
through a `World`'s collectives. A single process is a World of size 1 whose
collectives return their input, so the trainer never asks whether it is distributed.
"""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

from charrnn.data.batching import share_of
from charrnn.errors import UserError


class World:
    """This process's place (rank of size, local_rank) and the collectives every process calls alike.

    Every process must call `sum`, `max` and `gather_state` at the same points, in the same
    order: they are collectives. Outside torchrun they return their input.
    """

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0):
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self._comm_device = None  # set by join(): where collective tensors live

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard_rows(self, batch_size: int) -> Tuple[int, int, int]:
        """(start, stop, total): the contiguous streams of the global batch this process owns."""
        return (*share_of(batch_size, self.rank, self.size), batch_size)

    # ---- joining and leaving ------------------------------------------------
    def join(self, device) -> None:
        """Join the process group: NCCL between GPUs, gloo between CPU processes."""
        import torch
        import torch.distributed as dist

        self._comm_device = device if device.type == "cuda" else torch.device("cpu")
        if dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL's own buffers go to this process's GPU, not cuda:0
        try:
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        except dist.DistNetworkError as e:
            raise UserError(_join_failure(str(e))) from None

    def leave(self, finished: bool) -> None:
        """Leave the process group. After a finished run, wait for every process first: rank 0 may
        still be writing the last checkpoint, and a process that tears gloo down and exits meanwhile
        was seen to abort ("terminate called without an active exception"). After an error, no
        barrier: the others may be stuck in a collective, and torchrun ends them."""
        import torch.distributed as dist

        if dist.is_initialized():
            if finished:
                dist.barrier()
            dist.destroy_process_group()

    # ---- collectives --------------------------------------------------------
    def sum(self, values: Sequence[float]) -> List[float]:
        """Element-wise sum over every process."""
        return self._reduce(values, "SUM")

    def max(self, values: Sequence[float]) -> List[float]:
        """Element-wise maximum over every process."""
        return self._reduce(values, "MAX")

    def gather_state(self, states: list) -> list:
        """This process's (L, b, H) arrays -> the global batch's (L, B, H) arrays."""
        if self._comm_device is None:
            return states
        import numpy as np
        import torch
        import torch.distributed as dist

        out = []
        for s in states:
            local = torch.as_tensor(np.ascontiguousarray(s), device=self._comm_device)
            parts = [torch.empty_like(local) for _ in range(self.size)]
            dist.all_gather(parts, local)
            out.append(torch.cat(parts, dim=1).cpu().numpy())  # ranks own contiguous rows, in rank order
        return out

    def _reduce(self, values: Sequence[float], op: str) -> List[float]:
        if self._comm_device is None:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
        return t.tolist()


def _join_failure(message: str) -> str:
    """One line for a rendezvous that failed: rank 0 could not listen on MASTER_PORT (a port another
    program holds: the usual case when ranks are started by hand), or a rank could not reach it."""
    port = os.environ.get("MASTER_PORT", "?")
    if "EADDRINUSE" in message or "address already in use" in message:
        return (f"MASTER_PORT {port} is already in use on this machine; set a free one, or launch with torchrun "
                "--standalone, which picks one")
    first = message.strip().splitlines()[0] if message.strip() else "no reason given"
    return (f"could not join the other processes at {os.environ.get('MASTER_ADDR', '?')}:{port} ({first}); check "
            "MASTER_ADDR and MASTER_PORT")


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
