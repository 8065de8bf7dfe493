"""The compiled int8 step: native_step.c, built once per machine with the system's C compiler.

Why: at batch 1 a Python step of a 2x512 LSTM spends most of its time around the
arithmetic (per-call overhead of a dozen small NumPy calls, cache misses); the same
step in C, with int8 weights laid out for AVX-512 VNNI (AVX2 and a plain loop read the same
layout), split between threads that meet once per layer, and drawing the next character itself,
is several times faster (benchmarks/sampling_speed.py). The numbers are linear.QuantLinear's, so the NumPy
NumpyStep with quantize="int8" is both this step's test oracle and its fallback.

The library is compiled on first use with `cc -O3 -march=native` (or $CC) into the
user's cache directory, under a name that hashes the source, the compiler, its flags and the CPU
(CHARRNN_NATIVE_ISA=avx2 or portable builds a lesser path on a better CPU: tests, speed comparisons),
and then loaded with ctypes: no build step at install time, no wheel per platform.
Where there is no compiler, or the build fails, `kernel()` returns None and says why in
`kernel_problem()`; callers then fall back to NumPy.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from charrnn.config import ModelConfig
from charrnn.errors import UserError
from charrnn.infer.linear import quantize_columns
from charrnn.infer.steps import StepState, fused_weights
from charrnn.storage import atomic_file, user_cache_dir

SOURCE = Path(__file__).with_name("native_step.c")
CELL_CODES = {"rnn": 0, "gru": 1, "lstm": 2}
CHUNK, BLOCK = 16, 8           # native_step.c's packing: columns in chunks of 16, blocks of 8 chunks
_problem: list = []            # why kernel() is None, once known


class _QRegion(ctypes.Structure):
    _fields_ = [("w", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("colsum", ctypes.c_void_p),
                ("bias", ctypes.c_void_p), ("n", ctypes.c_int32)]


class _QLinear(ctypes.Structure):
    _fields_ = [("regions", ctypes.POINTER(_QRegion)), ("k", ctypes.c_int32)]


class _Net(ctypes.Structure):
    _fields_ = [("cell", ctypes.c_int32), ("layers", ctypes.c_int32), ("hidden", ctypes.c_int32),
                ("vocab", ctypes.c_int32), ("batch", ctypes.c_int32), ("regions", ctypes.c_int32),
                ("unit_start", ctypes.c_void_p), ("table", ctypes.c_void_p),
                ("xh", ctypes.POINTER(_QLinear)), ("x", ctypes.POINTER(_QLinear)),
                ("head_w", ctypes.c_void_p), ("head_b", ctypes.c_void_p),
                ("h", ctypes.c_void_p), ("c", ctypes.c_void_p), ("pool", ctypes.c_void_p)]


def default_threads(hidden: int) -> int:
    """OMP_NUM_THREADS if set, else the CPUs this process may use, at most 4; and no more than one
    per 64 hidden units, as a thread's share must outweigh the cost of meeting once per layer."""
    chosen = os.environ.get("OMP_NUM_THREADS", "")
    if chosen.isdigit() and int(chosen) > 0:
        wanted = int(chosen)
    else:
        wanted = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return max(1, min(wanted, hidden // 64))


def cache_dir() -> Path:
    """The user cache's native/ folder (storage.user_cache_dir), else a per-user temporary folder."""
    base = user_cache_dir("native")
    try:
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return base
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / f"charrnn-native-{os.getuid() if hasattr(os, 'getuid') else 0}"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def _compiler() -> Optional[str]:
    chosen = os.environ.get("CC")
    if chosen:
        return shutil.which(chosen) or chosen
    return next((path for path in map(shutil.which, ("cc", "gcc", "clang")) if path), None)


def _cpu_flags() -> str:
    """The CPU's feature flags: -march=native code must not be reused on a CPU that lacks them."""
    from charrnn.capabilities import cpu_flags

    return " ".join(cpu_flags()) or platform.processor()


FLAGS = ["-O3", "-fPIC", "-shared", "-pthread", "-fno-math-errno",
         "-ffp-contract=off",     # no fused multiply-adds: every float operation rounds as NumPy's does
         "-fno-trapping-math"]    # lets gcc vectorize the cells' clamps (compare and blend); values unchanged
PATHS = ("avx512-vnni", "avx2", "portable")  # native_step.c's block_dot kinds, fastest first
ISA_VARIABLE = "CHARRNN_NATIVE_ISA"          # picks one of PATHS; unset: the best this CPU has
# Compiler flags per path (None: the best). -mno-avx512f drops every AVX-512 extension, VNNI included,
# and leaves AVX2; portable targets the architecture's baseline. Where -march=native is refused
# (some compilers on arm64) the baseline is built instead, and build() says it is not the path asked for.
PATH_FLAGS = {None: ["-march=native"], "avx512-vnni": ["-march=native"], "avx2": ["-march=native", "-mno-avx512f"],
              "portable": []}


class PathUnavailable(UserError):
    """This CPU (or compiler) cannot build the path asked for."""


def _target(cc: str, path: Optional[str] = None) -> Path:
    """Where the library for this source, compiler, flags (so path) and CPU is cached."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(b"\0".join([SOURCE.read_bytes(), version.encode(), " ".join(FLAGS + PATH_FLAGS[path]).encode(),
                                     _cpu_flags().encode(), platform.machine().encode()])).hexdigest()[:16]
    return cache_dir() / f"native_step-{key}.so"


def _build(cc: str, path: Optional[str] = None) -> Path:
    """Compile (or find already compiled) the library for this source, compiler, flags, path and CPU."""
    target = _target(cc, path)
    if target.exists():
        return target
    errors = []
    for march in (PATH_FLAGS[path], []) if PATH_FLAGS[path] else ([],):
        try:  # atomic: another process building at the same time is harmless
            with atomic_file(target) as tmp:
                done = subprocess.run([cc, *FLAGS, *march, "-o", str(tmp), str(SOURCE), "-lm"], capture_output=True,
                                      text=True, timeout=120)
                if done.returncode != 0:
                    raise _BuildFailed()
            return target
        except _BuildFailed:
            pass
        errors.append(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    raise RuntimeError(f"{cc} could not build {SOURCE.name}: {errors[-1]}")


class _BuildFailed(Exception):
    pass


def requested_path() -> Optional[str]:
    """The path $CHARRNN_NATIVE_ISA asks for, or None (the best this CPU has); UserError if it names none."""
    value = os.environ.get(ISA_VARIABLE, "")
    if value and value not in PATHS:
        raise UserError(f"{ISA_VARIABLE}={value} is not one of {', '.join(PATHS)}; unset it for the best this CPU has")
    return value or None


@functools.lru_cache(maxsize=None)
def build(path: Optional[str] = None) -> ctypes.CDLL:
    """native_step.c compiled for `path` (one of PATHS; None: the best this CPU has) and loaded.

    Raises PathUnavailable when this CPU or compiler builds another path than the one asked for
    (found by compiling and asking the library, charrnn_isa(), not by reading CPU flags);
    RuntimeError when there is no compiler or it fails; UserError for a name not in PATHS.
    """
    if path is not None and path not in PATHS:
        raise UserError(f"the compiled step's path {path!r} is not one of {', '.join(PATHS)}")
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang; or set CC)")
    lib = load_library(_build(cc, path))
    built = lib.charrnn_isa().decode()
    if path is not None and built != path:
        others = ", ".join(p for p in PATHS[PATHS.index(built):])
        raise PathUnavailable(f"the compiled int8 step cannot use {path} here: this CPU and compiler build {built}; "
                              f"set {ISA_VARIABLE} to one of {others}, or unset it")
    return lib


@functools.lru_cache(maxsize=None)
def kernel() -> Optional[ctypes.CDLL]:
    """The loaded library, or None (see kernel_problem). CHARRNN_NATIVE=0 turns it off;
    CHARRNN_NATIVE_ISA picks its path (a UserError if this machine cannot build it)."""
    if os.environ.get("CHARRNN_NATIVE", "1") == "0":
        _problem.append("CHARRNN_NATIVE=0")
        return None
    path = requested_path()
    try:
        return build(path)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        _problem.append(str(exc).splitlines()[0])
        return None


def load_library(path: Path) -> ctypes.CDLL:
    """Load a compiled native_step.c and declare its functions' signatures."""
    lib = ctypes.CDLL(str(path))
    lib.charrnn_open.argtypes = [ctypes.POINTER(_Net), ctypes.c_int32]
    lib.charrnn_close.argtypes = [ctypes.POINTER(_Net)]
    lib.charrnn_close.restype = None
    lib.charrnn_feed.argtypes = [ctypes.POINTER(_Net), ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p]
    lib.charrnn_generate.argtypes = [ctypes.POINTER(_Net), ctypes.c_void_p, ctypes.c_int32, ctypes.c_double,
                                     ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    for function in (lib.charrnn_open, lib.charrnn_feed, lib.charrnn_generate):
        function.restype = ctypes.c_int
    lib.charrnn_isa.argtypes = []
    lib.charrnn_isa.restype = ctypes.c_char_p
    return lib


def compiled_path() -> Optional[str]:
    """Which of PATHS the compiled step uses ("avx512-vnni", "avx2", "portable"); None when there is
    no compiled step (kernel_problem says why)."""
    lib = kernel()
    return None if lib is None else lib.charrnn_isa().decode()


def kernel_problem() -> str:
    """Why kernel() is None ('' when it is not)."""
    kernel()
    return _problem[0] if _problem else ""


def pack_weights(q: np.ndarray) -> np.ndarray:
    """int8 (K, N) -> native_step.c's layout: [block of 128 columns][K/4][chunk of 16][column][4 rows]."""
    K, N = q.shape
    K4, N16 = -(-K // 4) * 4, -(-N // CHUNK) * CHUNK
    padded = np.zeros((K4, N16), np.int8)
    padded[:K, :N] = q
    blocks = []
    for n0 in range(0, N16, BLOCK * CHUNK):
        block = padded[:, n0:n0 + BLOCK * CHUNK]                        # (K4, chunks * 16)
        chunks = block.shape[1] // CHUNK
        blocks.append(block.reshape(K4 // 4, 4, chunks, CHUNK).transpose(0, 2, 3, 1).reshape(-1))
    return np.ascontiguousarray(np.concatenate(blocks))


class NativeWeights:
    """A model's weights packed once for the compiled step: read-only, shared by every NativeStep made from them.

    Hidden units are split into `threads` regions, one per thread; region r owns all G gate
    columns of its units, so each thread runs its own cells (see native_step.c).
    """

    def __init__(self, config: ModelConfig, params: Dict[str, np.ndarray], threads: Optional[int] = None,
                 library: Optional[ctypes.CDLL] = None):
        lib = library or kernel()
        if lib is None:
            raise RuntimeError(f"the compiled step is unavailable: {kernel_problem()}")
        self.config, self.lib = config, lib
        fused = fused_weights(config, params)
        L, H, G = config.layers, config.hidden, config.gates
        self.threads = default_threads(H) if threads is None else max(1, min(int(threads), H))
        # region r owns hidden units [start[r], start[r+1]): all G gate columns of them, gate-major
        start = np.linspace(0, H, self.threads + 1).round().astype(np.int32)
        regions = [np.concatenate([g * H + np.arange(start[r], start[r + 1]) for g in range(G)])
                   for r in range(self.threads)]
        self.keep = []                                            # every array C points into

        def linear(weight_bias) -> _QLinear:
            if weight_bias is None:
                return _QLinear()
            w, b = weight_bias
            parts = []
            for columns in regions:                    # per-column scales: the same as quantizing w whole
                q, scale = quantize_columns(w[:, columns])
                bias = None if b is None else np.ascontiguousarray(b.reshape(-1)[columns], np.float32)
                parts.append(_QRegion(self.pointer(pack_weights(q)), self.pointer(scale),
                                      self.pointer(q.sum(axis=0, dtype=np.int32)), self.pointer(bias), q.shape[1]))
            table = (_QRegion * len(parts))(*parts)
            self.keep.append(table)
            return _QLinear(table, w.shape[0])

        recurrent = fused.xh if config.cell != "gru" else fused.hh
        self.xh = (_QLinear * L)(*[linear(layer) for layer in recurrent])
        self.x = (_QLinear * L)(*[linear(layer) for layer in (fused.x if config.cell == "gru" else [None] * L)])
        f32 = lambda a: np.ascontiguousarray(a, np.float32)
        self.unit_start, self.table = self.pointer(start), self.pointer(f32(fused.table))
        self.head_w, self.head_b = self.pointer(f32(fused.head[0])), self.pointer(f32(fused.head[1].reshape(-1)))

    def pointer(self, array: Optional[np.ndarray]) -> Optional[int]:
        """The address of an array C will read, kept alive as long as these weights."""
        if array is None:
            return None
        self.keep.append(array)
        return array.ctypes.data


class NativeStep(StepState):
    """NumpyStep's interface (step, feed, set_state, get_state) on the compiled int8 step,
    plus generate(): many characters per call, drawn in C. `threads` share each step (see
    native_step.c); default: default_threads. `library`: another build of native_step.c (tests).
    Steps made `sharing` one NativeWeights share the weights and nothing else: each has its
    own state, buffers and threads."""

    def __init__(self, config: ModelConfig, params: Dict[str, np.ndarray], batch_size: int,
                 threads: Optional[int] = None, library: Optional[ctypes.CDLL] = None):
        self._setup(NativeWeights(config, params, threads, library), batch_size)

    @classmethod
    def from_model(cls, model, batch_size: int) -> "NativeStep":
        return cls(model.config, model.get_parameters(), batch_size)

    def _setup(self, weights: NativeWeights, batch_size: int) -> None:
        config = weights.config
        super().__init__(config, batch_size, np.float32)
        self.weights, self.lib, self.threads = weights, weights.lib, weights.threads
        L, H, B, V = config.layers, config.hidden, batch_size, config.vocab_size
        self.logits = np.zeros((B, V), np.float32)
        self._cdf = np.zeros(V, np.float64)
        c = None if self.c is None else self.c.ctypes.data
        self._net = _Net(CELL_CODES[config.cell], L, H, V, B, self.threads, weights.unit_start, weights.table,
                         weights.xh, weights.x, weights.head_w, weights.head_b, self.h.ctypes.data, c, None)
        self._net_ref = ctypes.byref(self._net)
        if self.lib.charrnn_open(self._net_ref, self.threads) != 0:
            raise MemoryError("the compiled step could not allocate its buffers or start its threads")
        # stop the threads and free C's buffers with this object (the finalizer holds the struct, not self)
        weakref.finalize(self, self.lib.charrnn_close, self._net_ref)

    def step(self, chars) -> np.ndarray:
        """Feed one character per row; returns logits (B, V) float32, valid until the next step."""
        chars = np.ascontiguousarray(chars, dtype=np.int64)
        self._call(self.lib.charrnn_feed, self._net_ref, chars.ctypes.data, 1, self.logits.ctypes.data)
        return self.logits

    def feed(self, indices: np.ndarray) -> np.ndarray:
        """indices (B, T) -> logits (B, T, V) float64, the state carried inside."""
        B, T = np.shape(indices)
        chars = np.ascontiguousarray(np.asarray(indices, dtype=np.int64).T)          # (T, B) time-major
        logits = np.empty((T, B, self.config.vocab_size), np.float32)
        self._call(self.lib.charrnn_feed, self._net_ref, chars.ctypes.data, T, logits.ctypes.data)
        return logits.transpose(1, 0, 2).astype(np.float64)

    def generate(self, last: Optional[np.ndarray], length: int, temperature: float,
                 uniforms: Optional[np.ndarray]) -> np.ndarray:
        """Draw `length` characters per row, starting from the logits `last` (B, V), feeding each back.

        uniforms (length, B) in [0, 1) draw with sample.sample_next's rule at this temperature;
        None takes the argmax. Returns (length, B) indices; self.logits then holds the logits
        that follow, where a call with last=None continues.
        """
        if last is not None:
            np.copyto(self.logits, last, casting="unsafe")
        out = np.empty((length, self.batch_size), np.int64)
        if length == 0:
            return out
        if uniforms is not None:
            uniforms = np.ascontiguousarray(uniforms, np.float64).reshape(length, self.batch_size)
        self._call(self.lib.charrnn_generate, self._net_ref, self.logits.ctypes.data, length, 1.0 / temperature,
                   None if uniforms is None else uniforms.ctypes.data, out.ctypes.data, self._cdf.ctypes.data)
        return out

    @staticmethod
    def _call(function, *args) -> None:
        if function(*args) != 0:
            raise ValueError("a character index is outside the vocabulary")
