"""`charrnn export --format web`: a folder that generates text in the browser, with no server.

    DIR/index.html   the page: prime, length, temperature, top-k, top-p, seed, greedy; streams the text
    DIR/charrnn.js   the step for rnn/gru/lstm and charrnn's sampling rule, hand-written, no dependencies
    DIR/model.js     window.CHARRNN_MODEL = {config, vocab, doc_sep, unknown, tensors, data}: float32 weights
                     as base64, and the run's document separator and --max-vocab unknown symbol (or null)

A labelled run (issue #29) carries its label names in config.labels and its label table in the tensors
(label.weight, as every parameter); the page shows a label picker and its step adds the label's row.

The weights are a script, not a file the page fetches: browsers refuse fetch() of local files
under file://, but load <script src> from the same folder, so opening DIR/index.html from disk
works, and so does putting DIR on any static host. Weights cost 4/3 of their float32 size
(base64): ~17 MB for a 2x512 LSTM, a few hundred kB for small models.

The page starts and reads text as `charrnn sample --checkpoint` does: an empty prime starts a new
document (the separator), the unknown symbol is never drawn, and prime characters outside the
vocabulary read as it (infer/api.py run_symbols).
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from charrnn.errors import UserError

STATIC = Path(__file__).with_name("web_static")
FILES = ("index.html", "charrnn.js", "model.js")
FORMAT = "charrnn-web/1"


def model_script(config, vocab, params, source: str = "", separator=None, unknown=None) -> str:
    """model.js: the canonical float32 weights, little-endian, one base64 blob with an offset per tensor, and
    the run's separator and unknown symbol (None: the run has none). A tied model's head.weight is its
    embed.weight (models/base.py): one table in the blob, both names at its offset, so the page reads it as any
    other and downloads it once (for the thousands of characters auto ties, most of the file)."""
    from charrnn.config import to_dict
    from charrnn.models.base import parameter_shapes

    tensors, blobs, offset = {}, [], 0
    for name, shape in parameter_shapes(config).items():
        if name == "head.weight" and config.tied:   # equal to embed.weight, listed before it: the load checked
            tensors[name] = dict(tensors["embed.weight"])   # (base.check_parameters)
            continue
        data = np.ascontiguousarray(params[name], dtype="<f4").tobytes()
        tensors[name] = {"offset": offset, "shape": list(shape)}
        blobs.append(data)
        offset += len(data)
    model = {"format": FORMAT, "config": to_dict(config), "vocab": list(vocab.chars), "source": source,
             "doc_sep": separator, "unknown": unknown, "tensors": tensors,
             "data": base64.b64encode(b"".join(blobs)).decode("ascii")}
    # ensure_ascii: every character outside ASCII (U+2028 included) is a \u escape, valid in any JS file
    return ("// A charrnn model for index.html, written by `charrnn export --format web`. "
            "Weights: float32, little-endian, base64.\n"
            f"window.CHARRNN_MODEL = {json.dumps(model, ensure_ascii=True)};\n")


def export_web(run_dir, which: str, out) -> dict:
    """Write the page for run_dir's weights (`which`: latest or best) into the folder `out`."""
    from charrnn.checkpoint import load_run
    from charrnn.data.dataset import read_record
    from charrnn.infer.api import run_symbols
    from charrnn.storage import write_bytes_atomic, write_text_atomic

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; --format web writes a folder")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in FILES)
        if others:
            raise UserError(f"--out {out} already holds other files ({', '.join(others[:3])}); "
                            "give a new or empty folder (a previous web export there is replaced)")
    config, vocab, params = load_run(Path(run_dir), which)
    separator, unknown = run_symbols(read_record(Path(run_dir)), vocab)
    script = model_script(config, vocab, params, source=f"{Path(run_dir).name}, {which} weights",
                          separator=separator, unknown=unknown)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("index.html", "charrnn.js"):
            write_bytes_atomic(out / name, (STATIC / name).read_bytes())
        write_text_atomic(out / "model.js", script)
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror or e})") from None
    size = sum((out / name).stat().st_size for name in FILES)
    return {"path": str(out), "bytes": size, "cell": config.cell, "layers": config.layers,
            "hidden": config.hidden, "vocab_size": config.vocab_size}
