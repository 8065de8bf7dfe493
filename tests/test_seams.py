"""Where training features meet (issue #26, items 2, 3, 4, 9 and 10): --resume with a changed flag, a refused
resume, one engine continuing another's run, --val-chars with --patience, Keras' one bias under L2 decay.

Commands run in-process (run_cli.in_process: the `charrnn` entry point, TensorFlow imported once).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_word_text

from charrnn.checkpoint import RESUME_GROUPS

SMALL = ["--hidden", 16, "--embed", 8, "--layers", 1, "--batch-size", 4, "--seq-len", 16, "--eval-every", 1000,
         "--log-every", 1, "--seed", 3]


def has_tensorflow() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


TF = pytest.mark.skipif(not has_tensorflow(), reason="TensorFlow is not installed")


@pytest.fixture
def text(tmp_path):
    return write_word_text(tmp_path / "text.txt", 200)


def snapshot(run: Path) -> dict:
    """Every file under `run`, by relative path, with its sha256: a refused command must leave all of it."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*"))
            if p.is_file()}


def weights(run: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(run / "model.safetensors"))


def train(run_cli, *args):
    return run_cli.in_process(["train", *args])


def assert_refused_in_one_line(result, *needles) -> str:
    """Exit 2, nothing on stdout, one `charrnn: error:` line on stderr (TensorFlow's own start-up lines aside)."""
    err = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == "", result.stdout
    assert len(err) == 1 and err[0].startswith("charrnn: error:"), result.stderr
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


# ---- item 3: a refused --resume changes nothing and says one line ---------------------------------------

REFUSALS = [("library", ["--optimizer", "adam"], "--optimizer adamw"),      # an adamw run
            ("naive", ["--impl", "library"], "naive and tf continue each other's runs"),
            pytest.param("library", ["--impl", "keras"], "--impl keras cannot continue the library run", marks=TF),
            ("naive", ["--seq-len", 8], "--seq-len 8 differs")]


@pytest.mark.parametrize("engine,flags,needle", REFUSALS)
def test_a_refused_resume_changes_nothing_and_the_run_still_resumes(engine, flags, needle, text, tmp_path, run_cli):
    run = tmp_path / "run"
    assert train(run_cli, "--impl", engine, "--data", text, "--out", run, *SMALL, "--max-iters", 3).returncode == 0
    before = snapshot(run)
    refused = train(run_cli, "--data", text, "--out", run, "--resume", "--max-iters", 6, "--weight-decay", 0.5,
                    *flags)   # --weight-decay: a change the refused command must not announce either
    assert_refused_in_one_line(refused, needle)
    assert snapshot(run) == before
    resumed = train(run_cli, "--data", text, "--out", run, "--resume", "--max-iters", 5)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr
    assert json.loads((run / "config.json").read_text())["train"]["impl"] == engine


def test_a_resume_refused_for_changed_data_prints_one_line(text, tmp_path, run_cli):
    run = tmp_path / "run"
    assert train(run_cli, "--impl", "naive", "--data", text, "--out", run, *SMALL, "--max-iters", 3).returncode == 0
    before = snapshot(run)
    text.write_text(text.read_text() + "\nthe king hath one more line.", encoding="utf-8")
    refused = train(run_cli, "--data", text, "--out", run, "--resume", "--max-iters", 6, "--weight-decay", 0.5)
    assert_refused_in_one_line(refused, "the data changed since")
    assert snapshot(run) == before


def test_a_resume_refused_by_its_checkpoint_writes_nothing(text, tmp_path, run_cli):
    """The last check reads resume.safetensors itself (here one written with another optimizer than config.json
    says): config.json, metrics.jsonl and the rest stay as they were, and nothing is announced."""
    run, other = tmp_path / "run", tmp_path / "other"
    for out, optimizer in ((run, "adamw"), (other, "adam")):
        assert train(run_cli, "--impl", "library", "--optimizer", optimizer, "--data", text, "--out", out, *SMALL,
                     "--max-iters", 3).returncode == 0
    shutil.copy(other / "resume.safetensors", run / "resume.safetensors")
    before = snapshot(run)
    refused = train(run_cli, "--data", text, "--out", run, "--resume", "--max-iters", 9)
    assert_refused_in_one_line(refused, "--optimizer adam")
    assert snapshot(run) == before


# ---- item 4: which engines continue which runs ---------------------------------------------------------

def adagrad_sums(run: Path) -> dict:
    """resume.safetensors' Adagrad accumulators by canonical name, in the NumPy/tf format or torch.optim's."""
    from safetensors.numpy import load_file

    from charrnn.models.base import parameter_shapes

    arrays = load_file(str(run / "resume.safetensors"))
    names = list(parameter_shapes(json_model(run)))
    if any(k.startswith("optim/sum.") for k in arrays):
        return {n: arrays[f"optim/sum.{n}"] for n in names}
    return {n: arrays[f"optim/{i}/sum"] for i, n in enumerate(names)}          # torch: parameters in order


def json_model(run: Path):
    from charrnn.checkpoint import load_run_config

    return load_run_config(run)[0]


def continued_weights_bound(run: Path, steps: int, lr: float, clip: float, positions: int) -> dict:
    """Two float32 engines continuing one Adagrad run for `steps` steps differ by at most, per weight (first
    order, tests/tolerances.py): each step's gradient is a float32 sum over the window's positions of terms no
    larger than the clipped gradient (norm <= clip), so off by <= positions * eps32 * clip; Adagrad moves a
    weight by lr * g / sqrt(sum), so that error moves it by <= 2 * lr * error / sqrt(sum), where sum (already
    in resume.safetensors, and only growing) bounds the denominator from below; plus eps32 * |w| a step."""
    from tolerances import EPS

    error = positions * EPS["float32"] * clip
    w = weights(run)
    return {n: steps * (2 * lr * error / (np.sqrt(s) + 1e-10) + EPS["float32"] * (np.abs(w[n]) + 1))
            for n, s in adagrad_sums(run).items()}


def continue_with(run_cli, text, written: Path, impl: str, tmp_path: Path):
    run = tmp_path / f"{written.name}-by-{impl}"
    shutil.copytree(written, run)
    return run, train(run_cli, "--data", text, "--out", run, "--resume", "--max-iters", 8, "--impl", impl)


PAIRS = [("naive", "tf"), ("tf", "naive"), ("library", "scratch"), ("scratch", "library")]


@pytest.mark.parametrize("writer,reader", [pytest.param(w, r, marks=TF if "tf" in (w, r) else ())
                                           for w, r in PAIRS])
def test_an_engine_of_the_same_group_continues_the_run_as_its_writer_would(writer, reader, text, tmp_path,
                                                                           run_cli):
    """naive <-> tf and scratch <-> library (checkpoint.RESUME_GROUPS): the resumed weights equal the writer's own
    resume within the bound float32 rounding allows, with the optimizer's state carried (Adagrad, lr 0.1)."""
    written = tmp_path / writer
    assert train(run_cli, "--impl", writer, "--optimizer", "adagrad", "--data", text, "--out", written, *SMALL,
                 "--max-iters", 4).returncode == 0
    bound = continued_weights_bound(written, steps=4, lr=0.1, clip=5.0, positions=4 * 16)
    own, result = continue_with(run_cli, text, written, writer, tmp_path)
    assert result.returncode == 0, result.stderr
    other, result = continue_with(run_cli, text, written, reader, tmp_path)
    assert result.returncode == 0 and "resuming" in result.stdout, result.stderr
    assert json.loads((other / "config.json").read_text())["train"]["impl"] == reader
    a, b = weights(own), weights(other)
    moved = max(float(np.abs(a[n] - weights(written)[n]).max()) for n in a)
    assert moved > 1e-2, "the resumed steps must move the weights, or the comparison proves nothing"
    for name in a:
        np.testing.assert_array_less(np.abs(a[name] - b[name]), bound[name], err_msg=name)


@pytest.mark.parametrize("writer,reader", [("library", "naive"), ("naive", "scratch"),
                                           pytest.param("library", "tf", marks=TF),
                                           pytest.param("naive", "keras", marks=TF),
                                           pytest.param("keras", "tf", marks=TF)])
def test_an_engine_of_another_group_is_refused_in_one_line_that_says_which_can(writer, reader, text, tmp_path,
                                                                               run_cli):
    written = tmp_path / writer
    assert train(run_cli, "--impl", writer, "--data", text, "--out", written, *SMALL, "--max-iters", 3).returncode == 0
    before = snapshot(written)
    line = assert_refused_in_one_line(
        train(run_cli, "--data", text, "--out", written, "--resume", "--max-iters", 6, "--impl", reader),
        f"--impl {reader} cannot continue the {writer} run", "--init-from")
    group = next(g for g in RESUME_GROUPS if writer in g)
    assert f"resume with --impl {' or '.join(group)}" in line
    assert "damaged" not in line
    assert snapshot(written) == before


# ---- item 2: --weight-decay given with --resume is in force in the TF engines too ---------------------

@TF
@pytest.mark.parametrize("impl", ["tf", "keras"])
def test_a_changed_weight_decay_on_resume_is_in_force_in_the_tf_engines(impl, text, tmp_path, run_cli):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train(run_cli, "--impl", impl, "--data", text, "--out", a, *SMALL, "--optimizer", "adamw",
                 "--max-iters", 4).returncode == 0
    shutil.copytree(a, b)
    assert train(run_cli, "--data", text, "--out", a, "--resume", "--max-iters", 8).returncode == 0
    changed = train(run_cli, "--data", text, "--out", b, "--resume", "--max-iters", 8, "--weight-decay", 5.0)
    assert changed.returncode == 0 and "--weight-decay 5.0 (was 0.0)" in changed.stdout, changed.stderr
    plain, decayed = weights(a), weights(b)
    # AdamW shrinks every weight by lr * wd = 2e-3 * 5 = 1% a step: after 4 steps, ~4% of the largest weight
    assert max(float(np.abs(plain[k] - decayed[k]).max()) for k in plain) > 1e-3
    assert json.loads((b / "config.json").read_text())["train"]["weight_decay"] == 5.0


@TF
@pytest.mark.parametrize("optimizer", ["adamw", "adam"])    # decoupled decay, and L2 on each of Keras' bias halves
def test_a_resume_with_a_changed_weight_decay_trains_as_torch_does(optimizer):
    """Learners saved after three windows and loaded into new ones made with another weight decay, as --resume
    does: every float32 engine stays within the derived bound of the exact (float64) torch learner that did the
    same, and the change is far outside that bound (so keeping the old decay would be seen)."""
    from test_tf_engines import V, all_learners, assert_within, config, step_learners
    from tolerances import TrajectoryBound, window_terms

    cfg = config("lstm", hidden=12, embed=6)
    rng = np.random.default_rng(6)
    windows = [(rng.integers(0, V, (4, 8)), rng.integers(0, V, (4, 8))) for _ in range(5)]
    lr, clip, wd = 0.02, 0.5, 0.5

    def exact_learner(weight_decay):
        import torch

        from charrnn.models import build_model
        from charrnn.train.learners import TorchLearner

        return TorchLearner(build_model("library", cfg, seed=3, dtype="float64"), optimizer, lr, weight_decay, clip,
                            torch.device("cpu"))

    def resume(old, new):
        """What --resume does with a learner: its weights (the exact one's unrounded) and optimizer state into a
        new one made with the new flags."""
        torch_module = hasattr(old.model, "named_parameters")      # get_parameters would round float64 to float32
        new.model.set_parameters({n: p.detach().numpy() for n, p in old.model.named_parameters()} if torch_module
                                 else old.get_parameters())
        new.load_optimizer_state(*old.optimizer_state())
        return new

    exact, learners = exact_learner(0.0), all_learners(cfg, optimizer, lr, 0.0, clip)
    bound = TrajectoryBound(exact, 4 * 8, window_terms(cfg, 8))
    states = {k: s.zero_state(4) for k, s in learners.items()}
    carried = step_learners(learners, exact, bound, windows[:3], states, exact.zero_state(4))
    kept = resume(exact, exact_learner(0.0))                      # the same resume without the change
    bound.exact = exact = resume(exact, exact_learner(wd))
    learners = {k: resume(old, new) for (k, old), new in zip(learners.items(),
                                                              all_learners(cfg, optimizer, lr, wd, clip).values())}
    step_learners(learners, exact, bound, windows[3:], states, carried)
    assert_within(learners, bound, cfg)
    for x, y in windows[3:]:
        _, carried = kept.train_step(x, y, carried)
    changed = bound.exact_weights()
    seen = np.concatenate([(np.abs(p.detach().numpy() - changed[n]) > bound.bound[n]).ravel()
                           for n, p in kept.model.named_parameters()])   # kept: the old decay, as main's TF engines
    assert seen.mean() > 0.5, f"only {seen.mean():.0%} of the weights would show the old decay"


# ---- item 9: --val-chars shorter than a window, and --patience without validation ----------------------

def test_val_chars_shorter_than_a_window_is_raised_to_one_and_says_so(text, tmp_path, run_cli):
    run = tmp_path / "run"
    result = train(run_cli, "--impl", "naive", "--data", text, "--out", run, *SMALL, "--max-iters", 4,
                   "--eval-every", 2, "--val-chars", 5, "--patience", 3)
    assert result.returncode == 0, result.stderr
    assert "--val-chars 5 is shorter than one validation window" in result.stderr
    assert "validating on the first 17" in result.stderr                      # --seq-len 16: 17 characters
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum("val_loss" in r for r in rows) >= 2                          # --patience has losses to count


@pytest.mark.parametrize("flags", [["--val-frac", 0], ["--val-frac", 0.001]])   # no split; one shorter than a window
def test_patience_without_validation_is_refused_in_one_line(flags, text, tmp_path, run_cli):
    run = tmp_path / "run"
    result = train(run_cli, "--impl", "naive", "--data", text, "--out", run, *SMALL, "--max-iters", 4,
                   "--patience", 2, *flags)
    assert_refused_in_one_line(result, "--patience 2 needs validation")
    assert not run.exists()


def test_a_fine_tune_onto_characters_a_max_vocab_parent_lacks_grows_it_from_its_unknown_symbol(tmp_path, run_cli):
    """--init-from a --max-vocab run onto a text with other characters: they join the vocabulary after the
    parent's, their rows start as its U+FFFD rows, one line says so, and the unknown symbol travels on."""
    text = tmp_path / "text.txt"
    text.write_text("a rat ran at a tan tar. " * 80, encoding="utf-8")
    other = tmp_path / "other.txt"
    other.write_text("a rat saw the cat. " * 80, encoding="utf-8")
    parent, child = tmp_path / "parent", tmp_path / "child"
    small = ["--hidden", 8, "--embed", 4, "--batch-size", 2, "--seq-len", 8, "--max-iters", 1, "--impl", "naive"]
    assert run_cli(["train", "--data", text, "--out", parent, *small, "--max-vocab", 4]).returncode == 0
    done = run_cli(["train", "--data", other, "--out", child, "--init-from", parent, *small])
    assert done.returncode == 0, done.stderr
    record = json.loads((child / "data.json").read_text(encoding="utf-8"))
    parent_chars = json.loads((parent / "vocab.json").read_text(encoding="utf-8"))
    child_chars = json.loads((child / "vocab.json").read_text(encoding="utf-8"))
    new = sorted(set(other.read_text(encoding="utf-8")) - set(parent_chars))
    assert child_chars == parent_chars + new and record["vocab_size"] == len(child_chars)
    assert record["unknown"] == "\ufffd"
    assert f"{len(new)} characters the --init-from model never saw added" in done.stdout
    assert "start as its U+FFFD rows" in done.stdout


def test_resume_with_another_init_from_is_refused_in_one_line(tmp_path, run_cli):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. " * 80, encoding="utf-8")
    run = tmp_path / "run"
    small = ["--hidden", 8, "--embed", 4, "--batch-size", 2, "--seq-len", 8, "--max-iters", 1, "--impl", "naive"]
    assert run_cli(["train", "--data", text, "--out", run, *small]).returncode == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    done = run_cli(["train", "--data", text, "--out", run, "--resume", "--init-from", run, "--max-iters", 2])
    assert done.returncode == 2 and done.stdout == "" and len(done.stderr.strip().splitlines()) == 1
    assert "--init-from" in done.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_resume_with_several_changed_model_flags_names_the_same_one_whatever_the_hash_seed(text, tmp_path,
                                                                                               run_cli):
    """The model flags are a set: checked in sorted order, the refusal names --hidden (before --layers) in every
    process, not whichever the interpreter's string hashing put first."""
    run = tmp_path / "run"
    assert train(run_cli, "--data", text, "--out", run, "--hidden", "16", "--layers", "1", "--batch-size", "4",
                 "--seq-len", "16", "--max-iters", "2").returncode == 0
    lines = {assert_refused_in_one_line(run_cli(["train", "--data", text, "--out", run, "--resume", "--layers", "2",
                                                 "--hidden", "24"], env={"PYTHONHASHSEED": seed}), "--hidden 24")
             for seed in ("1", "2", "3")}
    assert len(lines) == 1
