"""Named sets of flags. Explicit flags override a preset's values.

auto: no fixed values; train/auto.py chooses them once the text, the budget and the
machine's speed are known.
cpu-10min: the best validation loss we found on tiny shakespeare in ten
minutes on a 2-core CPU (see benchmarks/preset_cpu10min.py and the README).
gpu: a larger model for an hour or more on one GPU.
"""
from __future__ import annotations

from charrnn.errors import UserError

PRESETS = {
    "auto": {},
    "cpu-10min": dict(impl="library", cell="lstm", layers=2, hidden=512, embed=64, dropout=0.25,
                      batch_size=32, seq_len=100, optimizer="adamw", lr=4e-3, weight_decay=0.01,
                      schedule="cosine", warmup_iters=100, grad_clip=1.0, max_time=600.0,
                      eval_every=250, val_frac=0.1),
    "gpu": dict(impl="library", cell="lstm", layers=3, hidden=1024, embed=128, dropout=0.3,
                batch_size=128, seq_len=256, optimizer="adamw", lr=2e-3, weight_decay=0.05,
                schedule="cosine", warmup_iters=200, grad_clip=1.0, epochs=60.0, eval_every=500,
                bf16=True),
}


def preset_values(name: str | None) -> dict:
    if name is None:
        return {}
    if name not in PRESETS:
        raise UserError(f"--preset {name!r} is not one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])
