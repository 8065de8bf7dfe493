"""Where the arithmetic runs: the torch device, and how many threads NumPy's BLAS may use.

`--device auto` picks cuda, then mps, then cpu. BLAS threads matter for the NumPy paths:
small matrix products (a naive training step, a batch-1 generation step) are fastest on
one OpenBLAS thread, because on a busy shared machine a second thread that must wait for a
core slows every product down (docs/performance.md). threadpoolctl finds and sets the
BLAS NumPy loaded, whichever it is.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator, Optional

from charrnn.config import DEVICES, TF_IMPLS, check_choice
from charrnn.errors import UserError

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def resolve_device(name: str, impl: str, local_rank: Optional[int] = None, cli: bool = True):
    """auto -> cuda, then mps, then cpu. Returns a torch.device, None for the NumPy engine, or for the
    TensorFlow engines a TensorFlow device name ('/CPU:0', or '/GPU:0' where TensorFlow sees a GPU).

    `local_rank` (torchrun's LOCAL_RANK) picks the GPU: process k of a node uses cuda:k. `cli` words the
    messages for the command line (--device cuda) or for Python (device='cuda').
    """
    check_choice("device", name, DEVICES, cli)

    def opt(option: str, value: str) -> str:
        return f"--{option} {value}" if cli else f"{option}={value!r}"

    if impl == "naive":
        if name in ("cuda", "mps"):
            raise UserError(f"{opt('impl', 'naive')} runs on the CPU with NumPy; drop {opt('device', name)} "
                            f"or use {opt('impl', 'library')}")
        return None
    if impl in TF_IMPLS:
        from charrnn.models.tf_common import resolve_tf_device

        return resolve_tf_device(name, impl)
    try:
        import torch
    except ImportError:
        raise UserError(f"{opt('impl', impl)} needs PyTorch, which is not installed; "
                        f"install torch or use {opt('impl', 'naive')}") from None

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{opt('device', 'cuda')}: no CUDA device is available; use {opt('device', 'cpu')} "
                            "(or auto)")
        index = local_rank or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {index} has no GPU: this node has {torch.cuda.device_count()}; "
                            "start at most that many processes per node (torchrun --nproc-per-node)")
        return torch.device("cuda", index)
    if name == "mps" and not _mps_available():
        raise UserError(f"{opt('device', 'mps')}: Apple's MPS backend is not available here; "
                        f"use {opt('device', 'cpu')} (or auto)")
    if name == "mps" and local_rank is not None:
        raise UserError("torchrun with --device mps is not supported (no collective backend for MPS); use --device cpu")
    return torch.device(name)


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


@functools.lru_cache(maxsize=None)
def _blas():
    """threadpoolctl's handle on the BLAS libraries loaded so far (NumPy's), or None without any."""
    import numpy  # noqa: F401  (loads NumPy's BLAS, so that threadpoolctl can find it)
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas")
    return blas if blas.lib_controllers else None


def blas_thread_count() -> Optional[int]:
    """Threads NumPy's BLAS uses now, or None where none is found."""
    blas = _blas()
    return None if blas is None else blas.lib_controllers[0].num_threads


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[bool]:
    """Run a block with NumPy's BLAS on `n` threads, restoring the old count after.

    Yields False (and changes nothing) where no BLAS is found. The setting is
    process-wide: other threads calling BLAS meanwhile see it too.
    """
    blas = _blas()
    if blas is None:
        yield False
        return
    with blas.limit(limits=n):
        yield True


def one_blas_thread_unless_chosen():
    """blas_threads(1), or nothing where the user chose a count through the environment."""
    if any(v in os.environ for v in BLAS_THREAD_VARIABLES):
        return contextlib.nullcontext()
    return blas_threads(1)
