"""`charrnn export --format onnx` and `--onnx`: ONNX Runtime computes what the naive engine computes.

The reference is the naive engine (NumPy, written by hand) with the same canonical weights: the
exported graph is built from those weights with ONNX's own RNN/GRU/LSTM ops, gate orders changed,
so agreement checks the reorders, the embedding, the head and the state carried in and out.
Skipped without the `onnx` extra (pip install -e '.[onnx]').
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from charrnn.cli import main  # noqa: E402
from charrnn.config import ModelConfig  # noqa: E402
from charrnn.data.vocab import Vocab  # noqa: E402
from charrnn.export.onnx_export import build_model_proto  # noqa: E402
from charrnn.models import build_model  # noqa: E402
from charrnn.models.base import init_parameters  # noqa: E402
from charrnn.models.onnx_runtime import OnnxCharModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("First Keeper:\nThe lamps along the harbour wall are lit, and the tide is turning.\n\nAll:\nLight them, "
        "light them.\n\nFirst Keeper:\nWho will row the ferry out before the storm comes in?\n") * 6
TOL = 1e-4


def export(tmp_path, cell, layers, hidden=24, embed=8, seed=0):
    """A random model (weights scaled up so the cells work away from zero) exported to tmp_path."""
    vocab = Vocab.from_text(TEXT)
    cfg = ModelConfig(vocab_size=len(vocab), cell=cell, layers=layers, hidden=hidden, embed=embed)
    params = {k: v * (1.0 if k == "embed.weight" else 2.5) for k, v in init_parameters(cfg, seed).items()}
    path = tmp_path / f"{cell}{layers}.onnx"
    path.write_bytes(build_model_proto(cfg, vocab, params).SerializeToString())
    return cfg, vocab, params, path


def naive(cfg, params):
    return build_model("naive", cfg, params=params).eval()


def max_state_diff(a, b) -> float:
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a, b))


# ---- the graph equals the naive engine -----------------------------------------------------------

@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_onnx_matches_naive_one_character_at_a_time(tmp_path, cell, layers):
    """500 characters fed one call each, the state carried between calls, vs one naive forward over all 500."""
    cfg, vocab, params, path = export(tmp_path, cell, layers)
    model = OnnxCharModel(path)
    data = vocab.encode(TEXT[:500]).astype(np.int64)[None, :]                # (1, 500)
    ref_logits, ref_state = naive(cfg, params).forward(data, naive(cfg, params).initial_state(1))
    state, rows = model.initial_state(1), []
    for t in range(data.shape[1]):
        logits, state = model.forward(data[:, t:t + 1], state)
        assert logits.shape == (1, 1, cfg.vocab_size) and logits.dtype == np.float32
        rows.append(logits[:, 0])
    assert np.abs(np.stack(rows, axis=1) - ref_logits).max() < TOL
    assert max_state_diff(state, ref_state) < TOL


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_onnx_matches_naive_in_windows_of_any_length_and_batch(tmp_path, cell, layers):
    """Batch and time are dynamic: windows of 1, 7, 32 and 60 characters at batch 1, 3 and 8 in one session."""
    cfg, _vocab, params, path = export(tmp_path, cell, layers)
    model, reference = OnnxCharModel(path), naive(cfg, params)
    rng = np.random.default_rng(layers)
    for batch in (1, 3, 8):
        data = rng.integers(0, cfg.vocab_size, (batch, 100))
        ref_logits, ref_state = reference.forward(data, reference.initial_state(batch))
        state, start, pieces = model.initial_state(batch), 0, []
        for length in (1, 7, 32, 60):
            logits, state = model.forward(data[:, start:start + length], state)
            assert logits.shape == (batch, length, cfg.vocab_size)
            pieces.append(logits)
            start += length
        assert np.abs(np.concatenate(pieces, axis=1) - ref_logits).max() < TOL
        assert max_state_diff(state, ref_state) < TOL
        assert all(s.shape == (layers, batch, cfg.hidden) for s in state)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_one_hot_inputs_export_and_match_naive(tmp_path, cell):
    """--embed 0: the graph gathers rows of the identity (the one-hot vectors) into rnn.weight_ih_l0 (G*H, V)."""
    cfg, _vocab, params, path = export(tmp_path, cell, 2, embed=0)
    assert "embed.weight" not in params
    model, reference = OnnxCharModel(path), naive(cfg, params)
    assert model.config.embed == 0
    data = np.random.default_rng(1).integers(0, cfg.vocab_size, (3, 40))
    ref_logits, ref_state = reference.forward(data, reference.initial_state(3))
    logits, state = model.forward(data, model.initial_state(3))
    assert np.abs(logits - ref_logits).max() < TOL and max_state_diff(state, ref_state) < TOL


def test_the_graph_has_the_documented_names_shapes_and_metadata(tmp_path):
    cfg, vocab, _, path = export(tmp_path, "lstm", 2)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = {v.name: dims(v) for v in model.graph.input}
    outputs = {v.name: dims(v) for v in model.graph.output}
    assert inputs == {"chars": ["batch", "time"], "h0": [2, "batch", 24], "c0": [2, "batch", 24]}
    assert outputs == {"logits": ["batch", "time", cfg.vocab_size], "hn": [2, "batch", 24], "cn": [2, "batch", 24]}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [o.version for o in model.opset_import if o.domain == ""] == [14]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["format"] == "charrnn-onnx/1"
    assert json.loads(meta["vocab"]) == list(vocab.chars)
    assert json.loads(meta["config"])["cell"] == "lstm"
    assert json.loads(meta["doc_sep"]) is None and json.loads(meta["unknown"]) is None  # a run on one text
    assert sorted(n.op_type for n in model.graph.node if n.op_type == "LSTM") == ["LSTM", "LSTM"]
    gru = onnx.load(str(export(tmp_path, "gru", 1)[3]))
    assert {(n.op_type, a.name, a.i) for n in gru.graph.node for a in n.attribute if n.op_type == "GRU"} >= {
        ("GRU", "linear_before_reset", 1)}
    assert [i.name for i in gru.graph.input] == ["chars", "h0"]


# ---- runs trained through the CLI by two engines -------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_cli):
    """{impl: (run_dir, model.onnx)}: tiny runs trained by `charrnn train --impl naive|library`, exported by the CLI."""
    root = tmp_path_factory.mktemp("trained")
    data = root / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    runs = {}
    for impl, cell in (("naive", "lstm"), ("library", "gru")):
        run = root / impl
        done = run_cli(["train", "--data", data, "--out", run, "--impl", impl, "--cell", cell, "--layers", 1,
                        "--hidden", 16, "--embed", 8, "--max-iters", 5, "--batch-size", 4, "--seq-len", 16],
                       timeout=300)
        assert done.returncode == 0, done.stderr
        out = root / f"{impl}.onnx"
        done = run_cli(["export", "--checkpoint", run, "--format", "onnx", "--out", out], timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"wrote {out} (") and "charrnn sample --onnx" in done.stdout
        runs[impl] = run, out
    return runs


def run_main(capsys, args):
    """charrnn's CLI in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("impl", ["naive", "library"])
def test_exported_runs_of_both_engines_match_the_naive_engine(trained, impl):
    from charrnn.checkpoint import load_run

    run, path = trained[impl]
    cfg, vocab, params = load_run(run, "latest")
    model = OnnxCharModel(path)
    assert model.config == cfg and model.vocab == vocab
    data = vocab.encode(TEXT[:500]).astype(np.int64)[None, :]
    reference = naive(cfg, params)
    ref_logits, _ = reference.forward(data, reference.initial_state(1))
    state, rows = model.initial_state(1), []
    for t in range(data.shape[1]):
        logits, state = model.forward(data[:, t:t + 1], state)
        rows.append(logits[:, 0])
    assert np.abs(np.stack(rows, axis=1) - ref_logits).max() < TOL


@pytest.mark.parametrize("impl", ["naive", "library"])
@pytest.mark.parametrize("knobs", [["--greedy"], ["--seed", 7, "--temperature", 0.9],
                                   ["--seed", 3, "--top-k", 5, "--top-p", 0.9], ["--seed", 11, "--num-samples", 3],
                                   ["--beam", 3]])
def test_the_same_seed_samples_the_same_text_from_the_run_and_the_onnx_file(trained, capsys, impl, knobs):
    run, path = trained[impl]
    args = ["--prime", "First", "--length", 200, *knobs]
    outputs = {}
    for source in (["--checkpoint", run, "--impl", "naive"], ["--checkpoint", run], ["--onnx", path]):
        code, out, err = run_main(capsys, ["sample", *source, *args])
        assert code == 0, err
        outputs[source[0] + (source[-1] if source[-1] == "naive" else "")] = out
    assert len(set(outputs.values())) == 1, outputs
    assert ("\n" + outputs["--onnx"]).count("\nFirst") >= 1 and len(outputs["--onnx"]) > 200


def test_eval_reads_an_onnx_file_like_a_run(trained, capsys, tmp_path):
    run, path = trained["naive"]
    text = tmp_path / "eval.txt"
    text.write_text(TEXT[100:700], encoding="utf-8")
    results = [json.loads(run_main(capsys, ["eval", *source, "--data", text, "--json"])[1])
               for source in (["--checkpoint", run, "--impl", "naive"], ["--onnx", path])]
    assert results[0]["characters"] == results[1]["characters"] == 599
    assert results[0]["loss"] == pytest.approx(results[1]["loss"], abs=1e-5)


# ---- what a run knows beyond its weights: the document separator and --max-vocab's unknown symbol (#26) --------

DOCUMENTS = {  # a folder of documents: the run learns U+001E between them, and an empty prime starts a new one
    "harbour.txt": "The lamps along the harbour wall are lit.\nThe tide is turning.\n",
    "ferry.txt": "Who will row the ferry out before the storm?\nNot I, said the keeper.\n",
    "light.txt": "Light them, light them, all along the wall.\n",
    "storm.txt": "The storm came in at night and the lamps went out.\n",
}
RARE_TEXT = TEXT + "Zebra! Quiet? Yes; jump.\n"  # --max-vocab 8 keeps the 7 most frequent characters and U+FFFD


@pytest.fixture(scope="module")
def documents_run(tmp_path_factory, run_cli):
    """{"folder": (run, model.onnx, data), "max_vocab": (...)}: a run on a folder of documents and a --max-vocab run,
    both trained and exported through the CLI (in this process: the naive engine needs no torch)."""
    root = tmp_path_factory.mktemp("documents")
    folder = root / "docs"
    folder.mkdir()
    for name, text in DOCUMENTS.items():
        (folder / name).write_text(text * 3, encoding="utf-8")
    (root / "rare.txt").write_text(RARE_TEXT, encoding="utf-8")
    runs = {}
    for name, data, extra in (("folder", folder, ["--val-frac", 0.25]), ("max_vocab", root / "rare.txt",
                                                                          ["--max-vocab", 8])):
        run = root / name
        done = run_cli.in_process(["train", "--data", data, "--out", run, "--impl", "naive", "--cell", "lstm",
                                   "--layers", 1, "--hidden", 16, "--embed", 8, "--max-iters", 5, "--batch-size", 2,
                                   "--seq-len", 16, *extra])
        assert done.returncode == 0, done.stderr
        out = root / f"{name}.onnx"
        assert run_cli.in_process(["export", "--checkpoint", run, "--format", "onnx", "--out", out]).returncode == 0
        runs[name] = run, out, data
    return runs


def sample_both(capsys, run, path, *args):
    """`charrnn sample` from the run (naive engine) and from its .onnx: the two outputs (stdout)."""
    outputs = []
    for source in (["--checkpoint", run, "--impl", "naive"], ["--onnx", path]):
        code, out, err = run_main(capsys, ["sample", *source, *args])
        assert code == 0, err
        outputs.append(out)
    return outputs


def test_an_empty_prime_starts_a_new_document_in_the_onnx_file_as_in_the_run(documents_run, capsys):
    run, path, _ = documents_run["folder"]
    assert "\x1e" in json.loads((run / "vocab.json").read_text())
    for knobs in (["--seed", 4], ["--greedy"], ["--beam", 2], ["--seed", 5, "--num-samples", 2]):
        from_run, from_onnx = sample_both(capsys, run, path, "--length", 150, *knobs)
        assert from_onnx == from_run, knobs
    import charrnn

    assert charrnn.load_onnx(path).separator == "\x1e"


def test_stop_at_sep_ends_onnx_samples_where_the_run_ends_them(documents_run, capsys):
    run, path, _ = documents_run["folder"]
    for knobs in (["--seed", 2], ["--seed", 3, "--num-samples", 3], ["--seed", 3, "--json", "--num-samples", 2]):
        from_run, from_onnx = sample_both(capsys, run, path, "--length", 300, "--stop-at-sep", *knobs)
        if "--json" in knobs:
            from_run, from_onnx = (json.loads(out)["samples"] for out in (from_run, from_onnx))
        assert from_onnx == from_run and "\x1e" not in str(from_onnx), knobs


def test_eval_of_a_folder_joins_documents_with_the_runs_separator_in_the_onnx_file_too(documents_run, capsys):
    run, path, data = documents_run["folder"]
    results = [json.loads(run_main(capsys, ["eval", *source, "--data", data, "--json"])[1])
               for source in (["--checkpoint", run, "--impl", "naive"], ["--onnx", path])]
    assert results[0]["characters"] == results[1]["characters"] == sum(len(t) * 3 for t in DOCUMENTS.values()) + 3 - 1
    assert results[1]["loss"] == pytest.approx(results[0]["loss"], abs=1e-5)  # float32 sums, as above


def test_the_onnx_file_of_a_max_vocab_run_never_samples_its_unknown_symbol(documents_run, capsys):
    run, path, _ = documents_run["max_vocab"]
    assert "\ufffd" in json.loads((run / "vocab.json").read_text())
    for knobs in (["--seed", 1], ["--seed", 2, "--top-k", 3], ["--greedy"], ["--beam", 3],
                  ["--seed", 6, "--prime", "Zebra the"]):  # Z, b, r are not in the vocabulary: read as U+FFFD
        from_run, from_onnx = sample_both(capsys, run, path, "--length", 400, *knobs)
        assert from_onnx == from_run, knobs
        prime = len("Zebra the") if "--prime" in knobs else 0
        assert "\ufffd" not in from_onnx[prime:] and len(from_onnx) == prime + 401, knobs


def test_eval_onnx_reads_characters_a_max_vocab_run_lacks_as_its_unknown_symbol(documents_run, capsys, tmp_path):
    run, path, _ = documents_run["max_vocab"]
    text = tmp_path / "new.txt"
    text.write_text("Zany zebras? " + RARE_TEXT[:300] + " \u00e9t\u00e9 \u2603", encoding="utf-8")
    results = [json.loads(run_main(capsys, ["eval", *source, "--data", text, "--json"])[1])
               for source in (["--checkpoint", run, "--impl", "naive"], ["--onnx", path])]
    assert results[0]["skipped"] == results[1]["skipped"] == 0
    assert results[0]["characters"] == results[1]["characters"] == len(text.read_text(encoding="utf-8")) - 1
    assert results[1]["loss"] == pytest.approx(results[0]["loss"], abs=1e-5)


def test_an_onnx_file_from_before_the_separator_was_recorded_still_runs(documents_run, capsys, tmp_path):
    """A file exported before `doc_sep`/`unknown` were in the metadata: it samples and evaluates as it did (an
    empty prime starts from a newline), and --stop-at-sep says in one line to export the run again."""
    _, path, data = documents_run["folder"]
    old = onnx.load(str(path))
    kept = [p for p in old.metadata_props if p.key not in ("doc_sep", "unknown")]
    del old.metadata_props[:]
    old.metadata_props.extend(kept)
    (tmp_path / "old.onnx").write_bytes(old.SerializeToString())
    code, out, err = run_main(capsys, ["sample", "--onnx", tmp_path / "old.onnx", "--length", 50, "--seed", 1])
    assert code == 0 and len(out) == 51 and err.count("\n") <= 1, err
    code, out, err = run_main(capsys, ["sample", "--onnx", tmp_path / "old.onnx", "--stop-at-sep"])
    assert_one_line_error(code, err, "export", "again")
    assert "single text" not in err and out == ""
    code, out, err = run_main(capsys, ["eval", "--onnx", tmp_path / "old.onnx", "--data", data, "--json"])
    assert code == 0 and json.loads(out)["characters"] > 0, err


def test_an_onnx_file_with_a_fixed_chars_shape_is_refused_in_one_line(trained, capsys, tmp_path):
    """A charrnn export whose `chars` input was pinned to (1, 1) by another tool (#26 item 7)."""
    model = onnx.load(str(trained["naive"][1]))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim in dims:
        dim.ClearField("dim_param")
        dim.dim_value = 1
    (tmp_path / "fixed.onnx").write_bytes(model.SerializeToString())
    for command in (["sample", "--prime", "ab ab", "--length", 5],
                    ["eval", "--data", trained["naive"][0] / "vocab.json"]):
        code, out, err = run_main(capsys, [command[0], "--onnx", tmp_path / "fixed.onnx", *command[1:]])
        assert_one_line_error(code, err, str(tmp_path / "fixed.onnx"), "chars")
        assert out == ""


@pytest.mark.parametrize("vocab", [["a", "a"], ["ab", "c"], []])
def test_a_damaged_onnx_vocabulary_is_named_as_the_files_metadata_not_vocab_json(trained, capsys, tmp_path, vocab):
    model = onnx.load(str(trained["naive"][1]))
    for prop in model.metadata_props:
        if prop.key == "vocab":
            prop.value = json.dumps(vocab)
    (tmp_path / "bad.onnx").write_bytes(model.SerializeToString())
    code, out, err = run_main(capsys, ["sample", "--onnx", tmp_path / "bad.onnx", "--length", 5])
    assert_one_line_error(code, err, str(tmp_path / "bad.onnx"), "vocab")
    assert "vocab.json" not in err and out == ""


# ---- int8: what ONNX Runtime's integer kernels compute, on this CPU and on the other kind (#25) --------------------

def cpu_has_vnni() -> bool | None:
    """Whether this x86 CPU has VNNI (AVX-512 VNNI, AVX-VNNI) or AMX, from /proc/cpuinfo; None where unknown."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return None
    flags = set(flags.split(":", 1)[1].split())
    if "avx2" not in flags:
        return None  # not an x86 CPU with AVX2: ONNX Runtime runs other kernels there
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def emulate_int8(path, text: str, avx2: bool) -> float:
    """The loss (nats/char) of an int8 .onnx over `text` as ONNX Runtime's DynamicQuantizeLSTM computes it, in NumPy.

    ONNX Runtime (core/providers/cpu/rnn/rnn_helpers.cc, ComputeGemm) quantizes each GEMM's float input to uint8
    per call: its range widened to hold 0, scale (max - min) / 255, zero point round(-min / scale); the input GEMM
    takes the whole sequence at once, the recurrent one each step's h. MLAS sums the raw u8 x weight products in
    int32, then takes off the zero points' share, and scales back to float32. `avx2`: int8 weights on an x86 CPU
    without VNNI go through vpmaddubsw, which adds each pair of adjacent products (k = 2j, 2j + 1) into a
    saturating int16 (MLAS's U8S8 AVX2 and AVX-512 Core kernels); uint8 weights take the U8U8 kernel, which widens
    to int16 and sums pairs in int32, so for them `avx2` changes nothing.
    """
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    meta = {p.key: p.value for p in model.metadata_props}
    vocab, H = json.loads(meta["vocab"]), json.loads(meta["config"])["hidden"]
    idx = np.array([vocab.index(c) for c in text])

    def to_u8(a):                                                       # (M, K) float32 -> uint8 values, scale, zero
        lo, hi = min(float(a.min()), 0.0), max(float(a.max()), 0.0)
        scale = np.float32(1.0 if hi == lo else (hi - lo) / 255)
        zero = int(np.rint(np.clip(-lo / scale, 0, 255)))
        return np.clip(np.rint(a / scale) + zero, 0, 255).astype(np.int64), scale, zero

    def gemm(a, w, w_scale, w_zero):                                    # a (M, K) float32, w (K, N) ints
        q, scale, zero = to_u8(a)
        if q.shape[1] % 2:
            q, w = np.pad(q, ((0, 0), (0, 1))), np.pad(w, ((0, 1), (0, 0)), constant_values=0)
        saturates = avx2 and w.dtype == np.int8
        w = w.astype(np.int64)
        if saturates:                                                   # 64 rows at a time: (64, K, N) products
            acc = np.concatenate([np.clip(q[i:i + 64, 0::2, None] * w[None, 0::2]        # what vpmaddubsw adds
                                          + q[i:i + 64, 1::2, None] * w[None, 1::2],     # pair by pair, into a
                                          -32768, 32767).sum(1) for i in range(0, len(q), 64)])  # saturating int16
        else:
            acc = q @ w                                                 # int32 sums, exact
        acc = acc - zero * w.sum(0)[None] - q.sum(1, keepdims=True) * w_zero[None] \
            + q.shape[1] * zero * w_zero[None]                          # sum (q - zero)(w - w_zero), padding is 0
        return (acc * (scale * w_scale)[None]).astype(np.float32)

    sigmoid = lambda v: 1 / (1 + np.exp(-v))
    x = weights["embed.weight"][idx[:-1]].astype(np.float32)            # (T, E)
    for node in (n for n in model.graph.node if n.op_type == "DynamicQuantizeLSTM"):
        w, r, b = (weights[node.input[i]][0] for i in (1, 2, 3))         # (K, 4H), (H, 4H), (8H,)
        w_scale, w_zero, r_scale, r_zero = (weights[node.input[i]][0] for i in (8, 9, 10, 11))
        w_zero, r_zero = w_zero.astype(np.int64), r_zero.astype(np.int64)
        xw = gemm(x, w, w_scale, w_zero) + b[:4 * H] + b[4 * H:]         # (T, 4H) gates i, o, f, c
        h, c, ys = np.zeros((1, H), np.float32), np.zeros((1, H), np.float32), []
        for t in range(len(x)):
            g = xw[t] + gemm(h, r, r_scale, r_zero)[0]
            c = sigmoid(g[2 * H:3 * H]) * c + sigmoid(g[:H]) * np.tanh(g[3 * H:])
            h = (sigmoid(g[H:2 * H]) * np.tanh(c)).astype(np.float32)
            ys.append(h[0])
        x = np.stack(ys)
    logits = (x @ weights["head.weight_t"] + weights["head.bias"]).astype(np.float64)   # (T, V)
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(idx) - 1), idx[1:]].mean())


@pytest.fixture(scope="module")
def int8_files(trained, tmp_path_factory):
    """(float .onnx, `export --quantize int8` .onnx, the same model by ONNX Runtime's own quantizer: int8 weights,
    what charrnn exported before #25) for the naive run, and the text they are measured on."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    run, float_path = trained["naive"]
    root = tmp_path_factory.mktemp("int8")
    assert main(["export", "--checkpoint", str(run), "--format", "onnx", "--out", str(root / "int8.onnx"),
                 "--quantize", "int8"]) == 0
    quantize_dynamic(onnx.load(str(float_path)), root / "u8s8.onnx", op_types_to_quantize=["LSTM"],
                     per_channel=True, weight_type=QuantType.QInt8)
    return float_path, root / "int8.onnx", root / "u8s8.onnx"


def onnx_loss(path, text: str) -> float:
    import charrnn

    return charrnn.load_onnx(path).evaluate(text).loss


def test_the_int8_emulation_is_what_onnx_runtime_computes_on_this_cpu(int8_files):
    """The NumPy emulation above, checked against ONNX Runtime here, for charrnn's uint8 weights and for int8 ones,
    with the kernel this CPU has: on a CPU without VNNI the int8 file's loss is the saturating one."""
    _, int8_path, u8s8_path = int8_files
    vnni = cpu_has_vnni()
    for path in (int8_path, u8s8_path):
        if path == u8s8_path and vnni is None:
            continue  # not x86: ONNX Runtime's int8 kernels are others
        # The same integer sums, so the differences are float32 rounding in the scales, gates and softmax (~1e-7
        # relative per step) and, rarely, an activation that lands on the other side of a uint8 rounding boundary
        # (one step of 1/255 of its range in one element): 1e-4 nats/char is far above both and far below 0.03.
        assert emulate_int8(path, TEXT, avx2=not vnni) == pytest.approx(onnx_loss(path, TEXT), abs=1e-4)


def test_int8_export_cannot_saturate_on_a_cpu_without_vnni(int8_files):
    """#25: on an AVX2 CPU int8 weights (ONNX Runtime's quantizer) moved the loss by 0.0304; charrnn's uint8 weights
    take a kernel that sums every pair in int32, so the file computes the same on every x86 CPU."""
    float_path, int8_path, u8s8_path = int8_files
    reference = onnx_loss(float_path, TEXT)
    assert abs(emulate_int8(int8_path, TEXT, avx2=True) - reference) < INT8_BOUND
    assert emulate_int8(int8_path, TEXT, avx2=True) == emulate_int8(int8_path, TEXT, avx2=False)
    model = onnx.load(str(int8_path))  # why: every LSTM weight is uint8
    lstm_weights = {n.input[i] for n in model.graph.node if n.op_type == "DynamicQuantizeLSTM" for i in (1, 2)}
    assert lstm_weights and all(t.data_type == onnx.TensorProto.UINT8 for t in model.graph.initializer
                                if t.name in lstm_weights)
    # the control: int8 weights of the same model, as an AVX2 CPU computes them, are what the bound catches
    assert abs(emulate_int8(u8s8_path, TEXT, avx2=True) - reference) > 2 * INT8_BOUND


# What int8 may cost this test's model, in nats/char. int8 rounds each weight to 1/127 of its gate row's largest and
# each input and state to 1/255 of its range: unbiased errors, so over the 1,079 predictions of TEXT they move the
# loss by ~1e-4 (measured: -8e-5 here; -2e-4 for a 2x256 LSTM on tiny shakespeare, docs/export.md). A hundred times
# that is still a third of what AVX2's saturating kernel cost this model with int8 weights (0.0304 measured on an
# AVX2 machine, 0.0304 in the emulation): the bound tells rounding from a broken kernel.
INT8_BOUND = 0.01


def test_int8_export_of_an_lstm_is_smaller_and_its_cost_is_measured_by_eval(trained, int8_files, capsys, tmp_path):
    float_path, int8_path, _ = int8_files
    model = onnx.load(str(int8_path))
    assert {p.key: p.value for p in model.metadata_props}["quantize"] == "int8"
    assert "DynamicQuantizeLSTM" in {n.op_type for n in model.graph.node}
    assert int8_path.stat().st_size < float_path.stat().st_size
    text = tmp_path / "eval.txt"
    text.write_text(TEXT, encoding="utf-8")
    losses = [json.loads(run_main(capsys, ["eval", "--onnx", p, "--data", text, "--json"])[1])["loss"]
              for p in (float_path, int8_path)]
    assert abs(losses[1] - losses[0]) < INT8_BOUND
    code, out, err = run_main(capsys, ["sample", "--onnx", int8_path, "--length", 50, "--seed", 1])
    assert code == 0 and len(out) > 50


# ---- one line, exit 2, for every mistake ---------------------------------------------------------

def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("charrnn: error:"), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def foreign_onnx(path):
    """A valid ONNX model that is not a charrnn export: y = x."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def test_a_damaged_or_foreign_onnx_file_is_refused_in_one_line(trained, capsys, tmp_path):
    good = trained["naive"][1].read_bytes()
    cases = {
        "truncated.onnx": good[: len(good) // 2],
        "garbage.onnx": bytes(range(256)) * 40,
        "empty.onnx": b"",
        "text.onnx": b"hello, I am not a model\n",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    foreign_onnx(tmp_path / "foreign.onnx")
    mixed = onnx.load_from_string(good)  # a charrnn export whose vocabulary no longer fits its config
    for prop in mixed.metadata_props:
        if prop.key == "vocab":
            prop.value = json.dumps(["a", "b"])
    (tmp_path / "mixed.onnx").write_bytes(mixed.SerializeToString())
    bad_json = onnx.load_from_string(good)
    for prop in bad_json.metadata_props:
        if prop.key == "config":
            prop.value = "{not json"
    (tmp_path / "badjson.onnx").write_bytes(bad_json.SerializeToString())
    for name in [*cases, "foreign.onnx", "mixed.onnx", "badjson.onnx", "missing.onnx", "."]:
        for command in (["sample", "--length", 5], ["eval", "--data", trained["naive"][0] / "vocab.json"]):
            code, out, err = run_main(capsys, [command[0], "--onnx", tmp_path / name, *command[1:]])
            assert_one_line_error(code, err, str(tmp_path / name) if name != "." else "not a file")
            assert out == ""


def test_a_damaged_onnx_file_gives_no_traceback_from_the_command_line(tmp_path, run_cli):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07" + os.urandom(500))
    done = run_cli(["sample", "--onnx", tmp_path / "bad.onnx"], timeout=300)
    assert_one_line_error(done.returncode, done.stderr, "not a readable ONNX model")
    assert "Traceback" not in done.stderr


def test_options_that_do_not_apply_are_refused(trained, capsys, tmp_path):
    run, path = trained["library"]
    code, _, err = run_main(capsys, ["sample", "--onnx", path, "--quantize", "int8"])
    assert_one_line_error(code, err, "--quantize int8")
    code, _, err = run_main(capsys, ["sample", "--onnx", path, "--which", "best"])
    assert_one_line_error(code, err, "--which")
    code, _, err = run_main(capsys, ["sample", "--onnx", path, "--checkpoint", run])
    assert_one_line_error(code, err, "not allowed with argument")
    code, _, err = run_main(capsys, ["sample", "--length", 5])
    assert_one_line_error(code, err, "--checkpoint", "--onnx")
    code, _, err = run_main(capsys, ["export", "--checkpoint", run, "--format", "onnx", "--out", tmp_path / "g.onnx",
                                     "--quantize", "int8"])  # a GRU: ONNX Runtime has no int8 GRU
    assert_one_line_error(code, err, "LSTM models only")
    code, _, err = run_main(capsys, ["export", "--checkpoint", run, "--format", "onnx", "--out", tmp_path])
    assert_one_line_error(code, err, "is a directory")
    code, _, err = run_main(capsys, ["export", "--checkpoint", run, "--format", "onnx", "--out",
                                     tmp_path / "no" / "m.onnx"])
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run_main(capsys, ["export", "--checkpoint", tmp_path, "--format", "onnx", "--out",
                                     tmp_path / "m.onnx"])
    assert_one_line_error(code, err, "config.json")
    assert not (tmp_path / "m.onnx").exists()


BLOCK_ONNX = ("import sys; sys.modules['onnx'] = None; sys.modules['onnxruntime'] = None; "
              "from charrnn.cli import main; sys.exit(main(sys.argv[1:]))")


def test_without_the_onnx_packages_export_and_onnx_say_what_to_install(trained, tmp_path, run_cli):
    run, path = trained["naive"]
    env = run_cli.env()
    for args in (["export", "--checkpoint", run, "--format", "onnx", "--out", tmp_path / "m.onnx"],
                 ["sample", "--onnx", path, "--length", 5], ["eval", "--onnx", path, "--data", run / "vocab.json"]):
        done = subprocess.run([sys.executable, "-c", BLOCK_ONNX, *map(str, args)], env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert_one_line_error(done.returncode, done.stderr, "pip install -e '.[onnx]'")
    assert not (tmp_path / "m.onnx").exists()


def test_the_rest_of_charrnn_never_imports_onnx(trained, run_cli):
    """Sampling, evaluating and the web export run with the onnx packages blocked."""
    run, _ = trained["naive"]
    code = ("import sys; sys.modules['onnx'] = None; sys.modules['onnxruntime'] = None; "
            "from charrnn.cli import main; "
            f"assert main(['sample', '--checkpoint', {str(run)!r}, '--impl', 'naive', '--length', '5']) == 0; "
            f"assert main(['export', '--checkpoint', {str(run)!r}, '--format', 'web', "
            f"'--out', {str(run / 'web')!r}]) == 0")
    done = subprocess.run([sys.executable, "-c", code], env=run_cli.env(), check=False, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


# ---- the example a user copies -------------------------------------------------------------------

def test_the_example_script_streams_what_charrnn_samples(trained, capsys):
    """examples/onnx_generate.py (NumPy + onnxruntime, no charrnn) draws with the same rule and seed."""
    example = ROOT / "examples" / "onnx_generate.py"
    assert "charrnn" not in "".join(line for line in example.read_text().splitlines(keepends=True)
                                    if line.lstrip().startswith(("import", "from")))
    _run, path = trained["naive"]
    for knobs in (["--greedy"], ["--seed", "5", "--temperature", "0.8"]):
        done = subprocess.run([sys.executable, str(example), str(path), "--prime", "First", "--length", "150", *knobs],
                              check=False, capture_output=True, text=True, timeout=120, cwd="/")
        assert done.returncode == 0, done.stderr
        _code, out, _ = run_main(capsys, ["sample", "--onnx", path, "--prime", "First", "--length", 150, *knobs])
        assert done.stdout == out


@pytest.mark.parametrize("which", ["folder", "max_vocab"])
def test_the_example_script_starts_documents_and_skips_the_unknown_symbol_as_charrnn_does(documents_run, capsys, which):
    _run, path, _ = documents_run[which]
    example = ROOT / "examples" / "onnx_generate.py"
    done = subprocess.run([sys.executable, str(example), str(path), "--length", "300", "--seed", "3"],
                          check=False, capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr
    _code, out, _ = run_main(capsys, ["sample", "--onnx", path, "--length", 300, "--seed", 3])
    assert done.stdout == out and "\ufffd" not in out
