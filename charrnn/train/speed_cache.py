"""The training speed measured on this machine, kept in the user cache, so that a budget too short to probe
well (the probe may take a tenth of --max-time: under SHORT_BUDGET that is a few steps) plans from it.

An entry is named by what sets the speed: the machine (capabilities.fingerprint: the CPU's flags, torch,
oneDNN's cap, which also names the file), the device, the engine, torch's threads and whether bfloat16 could
be tried. It holds the probe's lines (seconds per character against the number of weights, per precision)
as the last probe found them, rescaled where a run then measured how fast it really trained: the probe times
short windows of fresh models, and training ran ~16% slower than it predicted (issue #27). A cache that
cannot be read or written only costs a probe.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

from charrnn.train.auto import Speed, step_weights

SHORT_BUDGET = 30.0   # seconds of --max-time under which a cached speed is used instead of a probe
PRECISIONS = {False: "float32", True: "bf16"}
SLOWEST = 0.1         # seconds per character: a kept line slower than 10 chars/s is damage, not a measurement


def entry_name(device, impl: str, bf16_possible: bool) -> str:
    import torch

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    threads = torch.get_num_threads()
    return f"{where}/{impl}/{threads} thread{'s' if threads > 1 else ''}/{'bf16' if bf16_possible else 'float32 only'}"


def load(name: str) -> Optional[Speed]:
    """The speed kept under `name`, or None: absent, or damaged in any way (then auto probes instead)."""
    entry = _read().get(name)
    try:
        points = {bf16: tuple((int(w), float(s)) for w, s in entry["points"][label])
                  for bf16, label in PRECISIONS.items() if entry["points"].get(label)}
        saved = float(entry["saved"])
        measured = {str(k): float(v) for k, v in (entry.get("measured") or {}).items()}
    except (TypeError, KeyError, ValueError, AttributeError):
        return None
    numbers = [x for line in points.values() for point in line for x in point] + [saved, *measured.values()]
    if not points or not all(math.isfinite(x) for x in numbers) or any(
            w <= 0 or s <= 0 or s > SLOWEST for line in points.values() for w, s in line):
        return None
    return Speed(points, measured=measured, measured_ago=max(0.0, time.time() - saved))


def store(name: str, speed: Speed) -> None:
    """Keep what a probe found (its lines, and what it measured per width for config.json)."""
    cache = _read()
    cache[name] = {"points": {PRECISIONS[bf16]: [list(p) for p in line] for bf16, line in speed.points.items()},
                   "measured": speed.measured, "saved": time.time()}
    _write(cache)


def calibrate(name: str, hidden: int, vocab_size: int, bf16: bool, chars_per_s: float) -> None:
    """A run of `hidden` width trained at `chars_per_s` in this precision: rescale the kept line of that precision
    so that it predicts exactly that (or start one from it, where none is kept)."""
    cache = _read()
    entry = cache.get(name) if isinstance(cache.get(name), dict) else {"points": {}, "measured": {}}
    kept = load(name)
    if kept is not None and bf16 in kept.points:
        predicted = Speed({bf16: kept.points[bf16]}).chars_per_second(hidden, vocab_size)
        line = [[w, s * predicted / chars_per_s] for w, s in kept.points[bf16]]
    else:
        line = [[step_weights(hidden, vocab_size), 1 / chars_per_s]]
    entry.setdefault("points", {})[PRECISIONS[bf16]] = line
    entry["saved"] = time.time()
    cache[name] = entry
    _write(cache)


def _path() -> Path:
    from charrnn.capabilities import fingerprint
    from charrnn.storage import user_cache_dir

    return user_cache_dir() / f"speed-{fingerprint()}.json"


def _read() -> dict:
    try:
        found = json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _write(cache: dict) -> None:
    from charrnn.storage import may_write_under, write_text_atomic

    try:
        path = _path()
        if not may_write_under(path.parent):   # a folder marked read-only is not ours to fill
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(cache, indent=1, sort_keys=True))
    except OSError:
        pass
