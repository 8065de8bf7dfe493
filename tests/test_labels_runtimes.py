"""A labelled run (issue #29) generates and scores under a label in every runtime.

The reference is the naive engine's forward given the label (tests/test_labels_engines.py checks it by
finite differences), in float64: the NumPy float step, the engine path through the Predictor, the
compiled int8 step and the .onnx file must compute the same logits under the same label. int8 is
compared with the int8 step of the folded model (models.base.fold_label: the label's row in the first
layer's input bias), which is the same int8 arithmetic, and with the float reference within the
quantization's error. A label must change what comes out, and every way to get the label wrong is
refused in one line (exit 2 on the command line).
"""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import charrnn
from charrnn.checkpoint import load_run, save_run_config, save_weights
from charrnn.cli import main
from charrnn.config import ModelConfig
from charrnn.data.vocab import Vocab
from charrnn.errors import UserError
from charrnn.infer import native
from charrnn.infer.predictor import NativeStepUnavailable, Predictor
from charrnn.infer.steps import NumpyStep
from charrnn.losses import log_softmax
from charrnn.models import build_model
from charrnn.models.base import fold_label, init_parameters

LABELS = ("dickinson", "whitman", "keats")
TEXT = "Because I could not stop for Death, he kindly stopped for me;\nI celebrate myself, and sing myself.\n" * 2
PRIME = TEXT[:40]
# Float32 steps against the float64 engine: each logit is a chain of a few hundred float32 sums of terms of
# size <= ~3 here (tests/tolerances.py: 2 layers x 40 steps x ~30 terms x 1.2e-7 x 3 ~ 1e-3 at worst, and
# in practice the errors do not line up: 1e-5). 1e-4 is the bar and sits well inside that bound.
TOL = 1e-4


def make_labelled_run(run_dir, cell="lstm", layers=2, hidden=12, embed=5, labels=LABELS, seed=0):
    """A run directory with random weights, label.weight's rows clearly apart (the init leaves them zero)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    vocab = Vocab.from_text(TEXT)
    config = ModelConfig(vocab_size=len(vocab), cell=cell, layers=layers, hidden=hidden, embed=embed, labels=labels)
    rng = np.random.default_rng(seed)
    params = {k: rng.uniform(-0.8, 0.8, v.shape).astype(np.float32) for k, v in init_parameters(config, seed).items()}
    return save_run(run_dir, config, vocab, params)


def make_folded_run(run_dir, labelled, index):
    """The unlabelled run that a label of `labelled` folds into (fold_label)."""
    config, vocab, params = load_run(labelled)
    folded_config, folded_params = fold_label(config, params, index)
    run_dir.mkdir(parents=True, exist_ok=True)
    return save_run(run_dir, folded_config, vocab, folded_params)


def save_run(run_dir, config, vocab, params):
    """A run directory holding just what sampling reads: config.json, vocab.json, model.safetensors."""
    save_run_config(run_dir, config, None)
    vocab.save(run_dir / "vocab.json")
    save_weights(run_dir / "model.safetensors", params)
    return run_dir


def reference(run_dir, text, label):
    """The naive engine's float64 logits (T, V) for `text` from a zero state under label index `label`."""
    config, vocab, params = load_run(run_dir)
    model = build_model("naive", config, params=params, dtype="float64").eval()
    logits, _ = model.forward(vocab.encode(text)[None, :].astype(np.int64), model.initial_state(1),
                              labels=np.array([label]))
    return logits[0]


def stepped(step, vocab, text, config=None):
    """Logits (T, V) of a Step fed `text` one character at a time from a zero state (config: the model's, for a
    Step that does not hold one)."""
    config = config or step.config
    L, H = config.layers, config.hidden
    step.set_state(tuple(np.zeros((L, 1, H)) for _ in range(2 if config.cell == "lstm" else 1)))
    return np.stack([np.array(step.step(np.array([i]))[0], dtype=np.float64) for i in vocab.encode(text)])


def run_main(capsys, args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{cell: labelled run directory} for rnn, gru and lstm."""
    root = tmp_path_factory.mktemp("labelled")
    return {cell: make_labelled_run(root / cell, cell=cell, seed=len(cell)) for cell in ("rnn", "gru", "lstm")}


# ---- every step computes the engine's logits under the label ----------------------------------------------

@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_the_numpy_step_and_the_engine_path_compute_the_engines_logits_under_each_label(runs, cell):
    config, vocab, params = load_run(runs[cell])
    model = build_model("naive", config, params=params)                    # float32, as `charrnn.load` builds it
    wants = [reference(runs[cell], PRIME, k) for k in range(len(LABELS))]
    for k, want in enumerate(wants):
        predictor = Predictor(model, label=k)
        got_step = stepped(predictor.start(predictor.zero_state(1), 1), vocab, PRIME)   # NumpyStep, folded
        assert isinstance(predictor.start(predictor.zero_state(1), 1), NumpyStep)
        got_forward, _ = predictor.feed(vocab.encode(PRIME)[None, :], predictor.zero_state(1))  # the engine's forward
        assert np.abs(got_step - want).max() < TOL
        assert np.abs(got_forward[0] - want).max() < TOL
    # the label matters: each label's logits differ from every other's by far more than the tolerance
    assert min(np.abs(wants[a] - wants[b]).max() for a in range(3) for b in range(a)) > 100 * TOL


@pytest.mark.parametrize("impl", ["scratch", "library", pytest.param("tf", marks=pytest.mark.slow),
                                  pytest.param("keras", marks=pytest.mark.slow)])
def test_an_engines_own_forward_and_one_step_compute_the_engines_logits_under_each_label(runs, impl):
    """ModelStep: a torch or TensorFlow engine's own forward at T = 1 with labels (B,), and its window forward."""
    pytest.importorskip("tensorflow" if impl in ("tf", "keras") else "torch")
    config, vocab, params = load_run(runs["lstm"])
    model = build_model(impl, config, params=params)
    for k in range(len(LABELS)):
        predictor = Predictor(model, label=k)
        step = predictor.start(predictor.zero_state(1), 1)
        assert not isinstance(step, NumpyStep)                             # the engine's forward, one character
        want = reference(runs["lstm"], PRIME, k)
        assert np.abs(stepped(step, vocab, PRIME, config) - want).max() < TOL
        got, _ = predictor.feed(vocab.encode(PRIME)[None, :], predictor.zero_state(1))
        assert np.abs(got[0] - want).max() < TOL


@pytest.mark.parametrize("path", ["compiled", "numpy"])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_the_int8_step_under_a_label_is_the_folded_models_int8_step(runs, cell, path, monkeypatch):
    """quantize="int8" (the compiled step, and NumPy's where it cannot be built) under label k computes what the
    int8 step of the model folded with label k computes, and is nearer that label's float logits than any other's."""
    if path == "compiled" and native.kernel() is None:
        pytest.skip(f"no compiled step: {native.kernel_problem()}")
    if path == "numpy":
        monkeypatch.setattr(native, "kernel", lambda: None)
    config, vocab, params = load_run(runs[cell])
    model = build_model("naive", config, params=params)
    for k in range(len(LABELS)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NativeStepUnavailable)
            labelled = Predictor(model, quantize="int8", label=k)
        step = labelled.start(labelled.zero_state(1), 1)
        assert isinstance(step, native.NativeStep if path == "compiled" else NumpyStep)
        folded_config, folded_params = fold_label(config, params, k)
        folded = NumpyStep(folded_config, folded_params, batch_size=1, quantize="int8")
        got, want = stepped(step, vocab, PRIME), stepped(folded, vocab, PRIME)
        # the same int8 numbers op for op; only the head's float sums may be ordered otherwise (test_quantize.py)
        assert np.abs(got - want).max() < 1e-5
        # and the label is in it: int8's error is well under the distance to any other label's float logits
        distances = [np.abs(got - reference(runs[cell], PRIME, j)).mean() for j in range(len(LABELS))]
        assert all(distances[k] < 0.2 * d for j, d in enumerate(distances) if j != k), distances


def test_a_step_refuses_a_labelled_model_whose_label_was_not_folded_in(runs):
    config, _vocab, params = load_run(runs["gru"])
    with pytest.raises(ValueError, match="fold the label"):
        NumpyStep(config, params, batch_size=1)
    with pytest.raises(ValueError, match="labels"):
        Predictor(build_model("naive", config, params=params))


# ---- the Python API -------------------------------------------------------------------------------------

def test_the_api_samples_and_scores_under_the_label_it_is_given(runs, tmp_path):
    run = runs["lstm"]
    model = charrnn.load(run, impl="naive")
    assert model.labels == LABELS
    texts = {name: model.sample("I ", 80, seed=5, label=name) for name in LABELS}
    assert len(set(texts.values())) == 3                      # the same seed, three labels: three texts
    assert texts["whitman"] == model.sample("I ", 80, seed=5, label="whitman")      # and each reproducible
    assert "".join(model.stream("I ", 80, seed=5, label="keats")) == texts["keats"][2:]
    # beam search under a label is beam search in the run that label folds into
    for k, name in enumerate(LABELS):
        folded = charrnn.load(make_folded_run(tmp_path / name, run, k), impl="naive")
        assert model.beam("I ", 20, 3, label=name) == folded.beam("I ", 20, 3)
        assert texts[name] == folded.sample("I ", 80, seed=5)
    # evaluate: the mean negative log-likelihood of each next character under the reference's logits
    config, vocab, _ = load_run(run)
    data = vocab.encode(TEXT)
    for k, name in enumerate(LABELS):
        logp = log_softmax(reference(run, TEXT, k)[:-1])
        want = -logp[np.arange(len(data) - 1), data[1:]].mean()
        assert model.evaluate(TEXT, label=name).loss == pytest.approx(want, abs=TOL)
    by_label = model.evaluate_by_label(TEXT)
    assert [name for name, _ in by_label] == sorted(LABELS, key=lambda n: model.evaluate(TEXT, label=n).loss)
    assert [result.loss for _, result in by_label] == sorted(result.loss for _, result in by_label)


@pytest.mark.parametrize("call, message", [
    (lambda m: m.sample("I", 5), "trained with labels dickinson, whitman, keats; give label=NAME"),
    (lambda m: m.sample("I", 5, label="byron"), "'byron' is not a label of this run; it has dickinson, whitman, keats"),
    (lambda m: m.stream("I", 5, label=1), "must be a label's name"),
    (lambda m: m.beam("I", 5), "give label=NAME"),
    (lambda m: m.evaluate(TEXT, label="Keats"), "not a label of this run"),
])
def test_the_api_refuses_a_missing_or_unknown_label_in_one_line(runs, call, message):
    model = charrnn.load(runs["gru"], impl="naive")
    with pytest.raises(UserError, match=message) as refused:
        call(model)
    assert "\n" not in str(refused.value)


def test_an_unlabelled_run_refuses_a_label(tmp_path):
    run = make_folded_run(tmp_path / "folded", make_labelled_run(tmp_path / "run"), 0)
    model = charrnn.load(run, impl="naive")
    for call in (lambda: model.sample("I", 5, label="keats"), lambda: model.evaluate_by_label(TEXT)):
        with pytest.raises(UserError, match="trained without labels"):
            call()


def test_many_labels_are_listed_in_part(tmp_path):
    names = tuple(f"poet{k:02d}" for k in range(30))
    model = charrnn.load(make_labelled_run(tmp_path / "run", labels=names), impl="naive")
    with pytest.raises(UserError) as refused:
        model.sample("I", 5)
    assert "poet11, ... (30 labels); give label=NAME" in str(refused.value) and "poet12" not in str(refused.value)


# ---- the command line ----------------------------------------------------------------------------------

def test_sample_label_prints_what_the_api_samples(runs, capsys):
    run = runs["lstm"]
    code, out, err = run_main(capsys, ["sample", "--checkpoint", run, "--impl", "naive", "--label", "whitman",
                                       "--prime", "I ", "--length", 60, "--seed", 2])
    assert code == 0, err
    assert out == charrnn.load(run, impl="naive").sample("I ", 60, seed=2, label="whitman") + "\n"
    code, out, err = run_main(capsys, ["sample", "--checkpoint", run, "--impl", "naive", "--label", "keats",
                                       "--prime", "I ", "--length", 30, "--seed", 2, "--num-samples", 2, "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert report["label"] == "keats"
    assert report["samples"] == charrnn.load(run, impl="naive").sample("I ", 30, seed=2, num_samples=2, label="keats")


def test_eval_by_label_ranks_the_labels_best_first(runs, capsys, tmp_path):
    run = runs["gru"]
    text = tmp_path / "poem.txt"
    text.write_text(TEXT, encoding="utf-8")
    model = charrnn.load(run, impl="naive")
    losses = {name: model.evaluate(TEXT, label=name).loss for name in LABELS}
    ranked = sorted(LABELS, key=losses.get)
    code, out, err = run_main(capsys, ["eval", "--checkpoint", run, "--impl", "naive", "--data", text, "--by-label"])
    assert code == 0, err
    assert out == ("fits " + ", ".join(f"{name} {losses[name]:.4f}" for name in ranked)
                   + f" nats/char over {len(TEXT) - 1} predicted characters\n")
    code, out, err = run_main(capsys, ["eval", "--checkpoint", run, "--impl", "naive", "--data", text, "--by-label",
                                       "--json"])
    assert code == 0, err
    rows = json.loads(out)
    assert [row["label"] for row in rows] == ranked
    assert [row["loss"] for row in rows] == pytest.approx([losses[name] for name in ranked], abs=1e-12)
    code, out, err = run_main(capsys, ["eval", "--checkpoint", run, "--impl", "naive", "--data", text, "--label",
                                       ranked[-1], "--json"])
    assert code == 0, err
    assert json.loads(out)["loss"] == pytest.approx(losses[ranked[-1]], abs=1e-12)
    assert json.loads(out)["label"] == ranked[-1]


@pytest.mark.parametrize("command, extra, message", [
    ("sample", [], "this run was trained with labels dickinson, whitman, keats; give --label NAME"),
    ("sample", ["--label", "byron"], "--label 'byron' is not a label of this run; it has dickinson, whitman, keats"),
    ("eval", [], "give --label NAME, or --by-label"),
    ("eval", ["--label", "byron"], "'byron' is not a label of this run"),
    ("eval", ["--by-label", "--label", "keats"], "drop --label"),
    ("unlabelled sample", ["--label", "keats"], "trained without labels; drop --label"),
    ("unlabelled eval", ["--by-label"], "--by-label: this run was trained without labels"),
])
def test_the_command_line_refuses_label_mistakes_in_one_line(tmp_path, capsys, command, extra, message):
    labelled = make_labelled_run(tmp_path / "run")
    run = make_folded_run(tmp_path / "folded", labelled, 1) if command.startswith("unlabelled") else labelled
    text = tmp_path / "poem.txt"
    text.write_text(TEXT, encoding="utf-8")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir())
    args = ["sample", "--checkpoint", run, "--impl", "naive", "--length", 5] if command.endswith("sample") else \
        ["eval", "--checkpoint", run, "--impl", "naive", "--data", text]
    code, out, err = run_main(capsys, args + extra)
    assert code == 2 and out == ""
    assert err.startswith("charrnn: error:") and len(err.strip().splitlines()) == 1 and message in err, err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir()) == before


# ---- ONNX --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_files(runs, tmp_path_factory):
    """{cell: .onnx of the labelled run}, exported through the CLI."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for cell, run in runs.items():
        assert main(["export", "--checkpoint", str(run), "--format", "onnx", "--out", str(root / f"{cell}.onnx")]) == 0
        out[cell] = root / f"{cell}.onnx"
    return out


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_the_onnx_file_computes_the_engines_logits_with_a_label_per_stream(runs, onnx_files, cell):
    """Three streams under three labels in one call (the file runs each label's streams as a call of its own),
    then one character more with the state carried: the engine's logits and states for the same labels."""
    from charrnn.models.onnx_runtime import OnnxCharModel

    config, vocab, params = load_run(runs[cell])
    onnx_model = OnnxCharModel(onnx_files[cell])
    assert onnx_model.labels == LABELS
    naive = build_model("naive", config, params=params, dtype="float64").eval()
    chars = np.stack([vocab.encode(TEXT[k * 7:k * 7 + 30]) for k in range(4)]).astype(np.int64)  # (4, 30)
    labels = np.array([2, 0, 1, 2])
    want, want_state = naive.forward(chars[:, :-1], naive.initial_state(4), labels=labels)
    got, state = onnx_model.forward(chars[:, :-1], onnx_model.initial_state(4), labels=labels)
    assert np.abs(got - want).max() < TOL
    want_next, want_state = naive.forward(chars[:, -1:], want_state, labels=labels)
    got_next, state = onnx_model.forward(chars[:, -1:], state, labels=labels)
    assert np.abs(got_next - want_next).max() < TOL
    assert max(np.abs(a - b).max() for a, b in zip(state, want_state)) < TOL
    with pytest.raises(ValueError, match="labels"):
        onnx_model.forward(chars, onnx_model.initial_state(4))


def test_the_onnx_file_records_the_labels_and_takes_a_label_input(onnx_files):
    import onnx

    model = onnx.load(str(onnx_files["gru"]))
    assert json.loads({p.key: p.value for p in model.metadata_props}["labels"]) == list(LABELS)
    label = [i for i in model.graph.input if i.name == "label"][0]
    assert label.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [d.dim_value for d in label.type.tensor_type.shape.dim] == [1]


def test_sample_and_eval_with_an_onnx_file_take_the_label(runs, onnx_files, capsys, tmp_path):
    run, path = runs["lstm"], onnx_files["lstm"]
    args = ["--label", "keats", "--prime", "I ", "--length", 60, "--seed", 3]
    code, from_run, err = run_main(capsys, ["sample", "--checkpoint", run, "--impl", "naive", *args])
    assert code == 0, err
    code, from_file, err = run_main(capsys, ["sample", "--onnx", path, *args])
    assert code == 0, err
    assert from_file == from_run
    text = tmp_path / "poem.txt"
    text.write_text(TEXT, encoding="utf-8")
    code, out, err = run_main(capsys, ["eval", "--onnx", path, "--data", text, "--by-label", "--json"])
    assert code == 0, err
    model = charrnn.load(run, impl="naive")
    assert {row["label"]: row["loss"] for row in json.loads(out)} == pytest.approx(
        {name: model.evaluate(TEXT, label=name).loss for name in LABELS}, abs=TOL)
    code, out, err = run_main(capsys, ["sample", "--onnx", path, "--length", 5])
    assert code == 2 and "give --label NAME" in err and len(err.strip().splitlines()) == 1


def test_the_int8_onnx_file_under_a_label_is_the_folded_runs_int8_file(runs, tmp_path):
    """export --quantize int8 adds the label's row to the float bias only: W and R quantize as they would without
    labels, so the labelled file under label k computes what the int8 file of the run folded with k computes."""
    pytest.importorskip("onnxruntime")
    from charrnn.models.onnx_runtime import OnnxCharModel

    labelled = runs["lstm"]
    assert main(["export", "--checkpoint", str(labelled), "--format", "onnx", "--quantize", "int8",
                 "--out", str(tmp_path / "labelled.onnx")]) == 0
    _config, vocab, _params = load_run(labelled)
    chars = vocab.encode(TEXT[:50])[None, :].astype(np.int64)
    model = OnnxCharModel(tmp_path / "labelled.onnx")
    for k in range(len(LABELS)):
        folded = make_folded_run(tmp_path / f"folded{k}", labelled, k)
        assert main(["export", "--checkpoint", str(folded), "--format", "onnx", "--quantize", "int8",
                     "--out", str(tmp_path / f"folded{k}.onnx")]) == 0
        want, _ = OnnxCharModel(tmp_path / f"folded{k}.onnx").forward(chars, model.initial_state(1))
        got, _ = model.forward(chars, model.initial_state(1), labels=np.array([k]))
        # the bias is b + row in float32 in both (fold_label, and the graph's Add): the same numbers
        assert np.abs(got - want).max() < 1e-5
        distances = [np.abs(got[0] - reference(labelled, TEXT[:50], j)).mean() for j in range(len(LABELS))]
        assert all(distances[k] < 0.2 * d for j, d in enumerate(distances) if j != k), distances


def test_the_onnx_example_script_writes_under_the_label_as_charrnn_does(onnx_files, capsys):
    """examples/onnx_generate.py (NumPy + onnxruntime, no charrnn) feeds the label input as charrnn does."""
    example = Path(__file__).resolve().parents[1] / "examples" / "onnx_generate.py"
    path = onnx_files["gru"]
    for label in LABELS:
        done = subprocess.run([sys.executable, str(example), str(path), "--prime", "I ", "--length", "100",
                               "--seed", "4", "--label", label], check=False, capture_output=True, text=True,
                              timeout=120, cwd="/")
        assert done.returncode == 0, done.stderr
        code, out, err = run_main(capsys, ["sample", "--onnx", path, "--prime", "I ", "--length", 100, "--seed", 4,
                                           "--label", label])
        assert code == 0, err
        assert done.stdout == out
    done = subprocess.run([sys.executable, str(example), str(path)], check=False, capture_output=True, text=True,
                          timeout=120, cwd="/")
    assert done.returncode == 2 and "give --label NAME" in done.stderr
