"""Named sets of flags. Explicit flags override a preset's values.

auto: no fixed values; train/auto.py chooses them once the text, the budget and the
machine's speed are known.
cpu-10min: auto with a 600 s budget, "the best we know in ten minutes on this machine". It was a
fixed 2x512 LSTM tuned on an AVX-512 CPU with bfloat16 units, the wrong size on a slower one
(docs/performance.md); auto sizes the model to the machine it runs on.
gpu: a larger model for an hour or more on one GPU.
"""
from __future__ import annotations

from charrnn.errors import UserError

AUTO_PRESETS = ("auto", "cpu-10min")   # presets that train/auto.py sizes
PRESETS = {
    "auto": {},
    "cpu-10min": dict(max_time=600.0),
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
