"""Review: a damaged speed cache (train/speed_cache.py) must cost a probe, never crash auto's planning.

Each entry below is one a hand edit, another version or a half-written file can leave; speed_cache.load either
refuses it (None: auto probes instead) or returns a Speed that auto.choose can plan from (a finite, positive
speed). Today four of them crash with a traceback (ValueError, AttributeError, ZeroDivisionError)."""
from __future__ import annotations

import json
import math

import pytest

from charrnn.train import auto, speed_cache

NAME = "cpu/library/1 thread/bf16"
WIDTH = auto.weights(192, 62)
DAMAGED = {
    "measured holds a word": {NAME: {"points": {"bf16": [[WIDTH, 1e-5]]}, "saved": 1, "measured": {"192/bf16": "x"}}},
    "measured is a list": {NAME: {"points": {"bf16": [[WIDTH, 1e-5]]}, "saved": 1, "measured": [1, 2]}},
    "a point of no weights": {NAME: {"points": {"bf16": [[0, 1e-5]]}, "saved": 1}},
    "seconds NaN": {NAME: {"points": {"bf16": [[WIDTH, math.nan]]}, "saved": 1}},
    "seconds infinite": {NAME: {"points": {"bf16": [[WIDTH, math.inf]]}, "saved": 1}},
}


@pytest.mark.parametrize("damage", sorted(DAMAGED))
def test_a_damaged_speed_cache_is_a_probe_not_a_crash(monkeypatch, tmp_path, damage):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = speed_cache._path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(DAMAGED[damage]))   # json.dumps writes NaN and Infinity, as json.loads reads them
    speed = speed_cache.load(NAME)
    if speed is None:
        return                                       # refused: auto probes instead
    work = auto.Workload(180_000, 62, 10.0, None, None, validates=True)
    choice = auto.choose(work, speed)
    assert choice.plan is not None
    assert math.isfinite(choice.plan["chars_per_s"]) and choice.plan["chars_per_s"] > 0
