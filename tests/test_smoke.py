"""End to end, per engine and cell: train two iterations, then sample from the run."""
import json

import pytest


def _case(cell: str, impl: str):
    """The quick subset keeps every cell through naive and every engine through lstm; the torch engines'
    other cells (checked in-process against naive by test_engines) run here in the full suite."""
    slow = impl != "naive" and cell != "lstm"
    return pytest.param(impl, cell, id=f"{cell}-{impl}", marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("impl, cell", [_case(cell, impl) for cell in ("rnn", "gru", "lstm")
                                        for impl in ("naive", "scratch", "library")])
def test_train_two_iterations_then_sample(impl, cell, run_cli, tiny_text, tmp_path):
    out = tmp_path / "run"
    r = run_cli(["train", "--impl", impl, "--cell", cell, "--data", tiny_text, "--out", out, "--hidden", 12,
                 "--embed", 6, "--layers", 2, "--batch-size", 4, "--seq-len", 16, "--max-iters", 2])
    assert r.returncode == 0, r.stderr
    text = tiny_text.read_text(encoding="utf-8")
    assert f"Total {len(text)} characters with {len(set(text))} unique tokens." in r.stdout
    assert json.loads((out / "config.json").read_text())["model"]["cell"] == cell
    r = run_cli(["sample", "--checkpoint", out, "--impl", impl, "--prime", "The ", "--length", 40, "--seed", 1])
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n")
    sample = r.stdout[:-1]  # the CLI ends the sample with one newline of its own
    assert sample.startswith("The ") and len(sample) == 44
    assert set(sample) <= set(text)
