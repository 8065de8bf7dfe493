"""What this machine can do, found by trying: bfloat16 training, and which int8 kernels run.

Why by trying: a CPU's flags name its instructions, not what a library will do with them. oneDNN,
which runs PyTorch's CPU LSTM, refuses a bfloat16 LSTM outright on a CPU without AVX-512 BF16 or
AMX ("could not create a primitive descriptor"), while the same library's GRU, and the scratch
engine's matrix products, run bfloat16 anywhere (emulated, and then slower than float32). So one
tiny guarded training step of the engine and cell that will train decides, and the answer is kept
in the user cache, keyed by everything that could change it: the CPU's flags, the torch version
and oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA, which also lets a test hold an AVX-512 machine to AVX2).

CHARRNN_FAKE_CPU=no-bf16 makes every bfloat16 trial fail, as on such a CPU, so the fallbacks are
tested on any machine (the compiled int8 step has CHARRNN_NATIVE_ISA for the same purpose).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from typing import Dict, List, Tuple

from charrnn.errors import UserError
from charrnn.storage import user_cache_dir, write_text_atomic

FAKE_VARIABLE = "CHARRNN_FAKE_CPU"
ONEDNN_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
BF16_UNITS = ("avx512_bf16", "amx_bf16")       # /proc/cpuinfo's names for bfloat16 arithmetic units
INT8_UNITS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=None)
def _cpuinfo(prefixes: Tuple[str, ...]) -> str:
    """The value of /proc/cpuinfo's first line that starts with one of `prefixes` ('' where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith(prefixes)), "")
    except OSError:
        return ""
    return line.split(":", 1)[1].strip() if ":" in line else ""


def cpu_flags() -> List[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    return _cpuinfo(("flags", "Features")).split()


def cpu_name() -> str:
    return _cpuinfo(("model name",)) or platform.processor() or platform.machine()


FAKEABLE = ("bf16",)    # what CHARRNN_FAKE_CPU can take away (the int8 step's path: CHARRNN_NATIVE_ISA)


def faked() -> set:
    """What CHARRNN_FAKE_CPU says this machine lacks (e.g. {'bf16'}). A name it cannot fake is refused, not
    reported as faked while nothing changes."""
    value = os.environ.get(FAKE_VARIABLE, "")
    names = {part.strip().removeprefix("no-") for part in value.split(",") if part.strip()}
    if names - set(FAKEABLE):
        raise UserError(f"{FAKE_VARIABLE}={value} fakes only {', '.join('no-' + n for n in FAKEABLE)} (hold the int8 "
                        "step to a lesser path with CHARRNN_NATIVE_ISA=avx2 or portable); fix or unset it")
    return names


def bf16_units() -> bool:
    """Whether the CPU has bfloat16 arithmetic units (where it has none, bfloat16 is emulated or refused)."""
    return "bf16" not in faked() and any(flag in cpu_flags() for flag in BF16_UNITS)


def bf16_training(device, impl: str, cell: str) -> bool:
    """Whether `impl` can train a `cell` model on `device` (a torch.device) under bfloat16 autocast here."""
    if device.type not in ("cpu", "cuda") or "bf16" in faked():
        return False
    import torch

    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return False
    key = f"bf16/{device}/{impl}/{cell}"
    cache = _cache()
    if key not in cache:
        cache[key] = _bf16_step_runs(device, impl, cell)
        _save(cache)
    return bool(cache[key])


def bf16_missing(device) -> str:
    """Why bf16_training is False, in words for a message."""
    if device.type == "cpu":
        return "this CPU cannot train in bfloat16 (no AVX-512 BF16/AMX)"
    return f"{device} cannot train in bfloat16"


def _bf16_step_runs(device, impl: str, cell: str) -> bool:
    """One forward and backward of a tiny model of this engine and cell under bfloat16 autocast."""
    import torch

    from charrnn.config import ModelConfig
    from charrnn.models import build_model

    model = build_model(impl, ModelConfig(vocab_size=5, cell=cell, layers=2, hidden=8, embed=4), device=device)
    inputs = torch.zeros((2, 3), dtype=torch.long, device=device)
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits, _ = model(inputs, model.initial_state(2))
        logits.float().sum().backward()
    except RuntimeError:  # oneDNN: "could not create a primitive descriptor ..."
        return False
    return True


def fingerprint() -> str:
    """What the answers here depend on (the CPU's flags, torch, oneDNN's cap), as a short hash: the user cache's
    files are named by it (this module's trials, train/speed_cache.py's speeds)."""
    import torch

    parts = [platform.machine(), " ".join(cpu_flags()), torch.__version__,
             *(f"{name}={os.environ.get(name, '')}" for name in ONEDNN_VARIABLES)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _cache_path():
    return user_cache_dir() / f"capabilities-{fingerprint()}.json"


@functools.lru_cache(maxsize=None)
def _cache() -> Dict[str, bool]:
    """Trials already made on this machine, torch and oneDNN setting (a damaged file is ignored)."""
    try:
        found = json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in found.items() if isinstance(v, bool)} if isinstance(found, dict) else {}


def _save(cache: Dict[str, bool]) -> None:
    from charrnn.storage import may_write_under

    try:  # a cache that cannot be written only costs the trial again next time
        path = _cache_path()
        if not may_write_under(path.parent):   # a folder marked read-only is not ours to fill, even as root
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(cache, indent=1, sort_keys=True))
    except OSError:
        pass


def report() -> Dict[str, object]:
    """What `charrnn info --device` prints: the CPU, the devices torch sees, the precisions each torch
    engine can train in here, and which int8 kernels generation and ONNX Runtime run."""
    import importlib.util

    import torch

    from charrnn.infer import native

    flags = set(cpu_flags())
    cpu = torch.device("cpu")
    facts: Dict[str, object] = {
        "cpu": cpu_name(), "cpus": os.cpu_count(), "machine": platform.machine(),
        "instructions": {name: name in flags for name in ("avx2", "avx512f", *BF16_UNITS, *INT8_UNITS)},
        "torch": torch.__version__, "cuda": torch.cuda.is_available(),
        "bf16_units": bf16_units(),
        "bf16_training": {f"{impl}/{cell}": bf16_training(cpu, impl, cell)
                          for impl in ("library", "scratch") for cell in ("lstm", "gru", "rnn")},
        "int8_step": _int8_step(native),
        "onnxruntime": _version("onnxruntime") if importlib.util.find_spec("onnxruntime") else None,
        "onnxruntime_int8": "VNNI" if flags & set(INT8_UNITS) else "AVX2 (no VNNI)" if "avx2" in flags else "other",
        "faked": sorted(faked()),
        "onednn_max_cpu_isa": next((os.environ[v] for v in ONEDNN_VARIABLES if os.environ.get(v)), None),
    }
    return facts


def _int8_step(native) -> str:
    """The compiled int8 step's path in words; a CHARRNN_NATIVE_ISA this machine cannot build is reported here,
    not raised: this is the command that says what the machine can do."""
    from charrnn.errors import UserError

    try:
        path = native.compiled_path()
    except UserError as e:
        return f"none: {e}"
    return f"compiled step, {path} path" if path else f"NumPy (no compiled step: {native.kernel_problem()})"


def report_lines(facts: Dict[str, object]) -> List[str]:
    yes = lambda on: "yes" if on else "no"
    training = facts["bf16_training"]
    lines = [f"cpu: {facts['cpu']} ({facts['cpus']} CPUs, {facts['machine']})",
             "  " + ", ".join(f"{k} {yes(v)}" for k, v in facts["instructions"].items()),
             f"torch {facts['torch']}: cuda {yes(facts['cuda'])}",
             "training in float32: every engine; in bfloat16 (--bf16, auto's probe): "
             + (", ".join(k for k, v in training.items() if v) or "none")
             + ("" if facts["bf16_units"] or not any(training.values())
                else " (no bfloat16 units: emulated, slower than float32)")
             + (f"; refused for {', '.join(k for k, v in training.items() if not v)}"
                if not all(training.values()) else ""),
             f"int8 generation (--quantize int8): {facts['int8_step']}",
             "int8 ONNX (export --quantize int8): "
             + (f"onnxruntime {facts['onnxruntime']}, {facts['onnxruntime_int8']} integer kernels"
                if facts["onnxruntime"] else "onnxruntime not installed (pip install 'charrnn-toolkit[onnx]')")]
    if facts["onednn_max_cpu_isa"]:
        lines.append(f"oneDNN held to {facts['onednn_max_cpu_isa']} (ONEDNN_MAX_CPU_ISA)")
    if facts["faked"]:
        lines.append(f"faked by {FAKE_VARIABLE}: no {', no '.join(facts['faked'])}")
    return lines


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
