"""--weight-average ema: the weights validated and saved are a moving average of the last steps' (train/averaging.py).

The references are independent of the averaging code: the closed form of an exponential average, summed here in
float64; and the same run trained without the average, one step at a time (a resume is exact), for the weights the
average must be made of and for the training it must leave alone. Every engine, resume with the setting changed,
and the runtimes: the conformance rows (RESUME_CHANGES); torchrun: tests/test_distributed.py.
"""
import hashlib
import json

import numpy as np
import pytest
from conftest import write_word_text

from charrnn.checkpoint import read_safetensors, write_safetensors
from charrnn.train.averaging import WeightAverage, update_every

SMALL = ["--hidden", 12, "--embed", 6, "--layers", 2, "--batch-size", 2, "--seq-len", 16, "--seed", 5,
         "--log-every", 1, "--dropout", 0]


def closed_form(series: list, weight: float) -> dict:
    """The first weights, then each later one mixed in with `weight`: (1-a)^m w_0 + sum_j a (1-a)^(m-j) w_j."""
    m = len(series) - 1
    return {name: (1 - weight) ** m * series[0][name].astype(np.float64)
            + sum(weight * (1 - weight) ** (m - j) * series[j][name].astype(np.float64) for j in range(1, m + 1))
            for name in series[0]}


def test_the_average_is_the_closed_form_of_the_weights_it_was_given():
    rng = np.random.default_rng(0)
    horizon = 40
    k = update_every(horizon)
    assert k == 2 and update_every(8) == 1
    average, given = WeightAverage(), []
    for iteration in range(1, 30):
        params = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}
        if average.due(iteration, horizon):
            average.update(params, horizon)
            given.append(params)
    assert len(given) == 1 + 29 // k   # the first step starts it, then every k-th
    want = closed_form(given, 1 - (1 - 1 / horizon) ** k)
    for name, value in want.items():   # float32 updates: |w| < 5, one rounding of a few ulps per update
        np.testing.assert_allclose(average.arrays[name], value, rtol=0, atol=len(given) * 5 * 2 ** -22)
    one = WeightAverage()
    for params in given[:3]:
        one.update(params, 1)   # an average over one step is the last step (two roundings of values under 5)
    np.testing.assert_allclose(one.arrays["a"], given[2]["a"], rtol=0, atol=2 * 2 ** -21)


def raw(run) -> dict:
    arrays, _ = read_safetensors(run / "resume.safetensors")
    return {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}


def saved(run, which="model") -> dict:
    return read_safetensors(run / f"{which}.safetensors")[0]


def val_losses(run) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["iter"]: r["val_loss"] for r in rows if "val_loss" in r}


@pytest.mark.slow
def test_a_run_saves_the_average_of_the_weights_it_trained_and_trains_exactly_as_without_it(tmp_path, run_cli):
    """naive, validating every 2 steps (an average over 2 steps: each step mixed in with weight 1/2): the weights
    trained are bit for bit those of the same run without the average (validation puts them back exactly), and
    model.safetensors is the closed form of the weights after each step, read from that run step by step."""
    text = write_word_text(tmp_path / "text.txt", 120)
    common = ["train", "--impl", "naive", "--data", text, *SMALL, "--eval-every", 2]
    plain, averaged, steps = tmp_path / "plain", tmp_path / "averaged", []
    for i in range(1, 7):
        done = run_cli([*common, "--out", plain, "--max-iters", i, *(["--resume"] if i > 1 else [])])
        assert done.returncode == 0, done.stderr
        steps.append(raw(plain))
    done = run_cli([*common, "--out", averaged, "--max-iters", 6, "--weight-average", "ema"])
    assert done.returncode == 0, done.stderr
    for name, value in raw(averaged).items():
        np.testing.assert_array_equal(value, steps[-1][name], err_msg=name)
    want = closed_form(steps, 0.5)
    model = saved(averaged)
    for name, value in want.items():   # float32 average of float64 weights of size < 1: a few ulps per step
        np.testing.assert_allclose(model[name], value, rtol=0, atol=6 * 2 ** -22, err_msg=name)
        assert not np.allclose(model[name], steps[-1][name], rtol=0, atol=1e-6) or name.endswith("bias")
    losses = val_losses(averaged)
    best = min(losses, key=losses.get)
    assert json.loads((averaged / "metrics.jsonl").read_text().splitlines()[-1])["iter"] == 6
    for name, value in closed_form(steps[:best], 0.5).items():   # best.safetensors: the best validation's average
        np.testing.assert_allclose(saved(averaged, "best")[name], value, rtol=0, atol=6 * 2 ** -22, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["naive", "library"])
def test_a_resumed_run_averages_exactly_as_one_trained_straight(impl, tmp_path, run_cli):
    text = write_word_text(tmp_path / "text.txt", 120)
    common = ["train", "--impl", impl, "--data", text, *SMALL, "--eval-every", 4, "--weight-average", "ema"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run_cli([*common, "--out", straight, "--max-iters", 12]).returncode == 0
    assert run_cli([*common, "--out", stopped, "--max-iters", 7]).returncode == 0
    done = run_cli(["train", "--data", text, "--out", stopped, "--resume", "--max-iters", 12])
    assert done.returncode == 0, done.stderr
    for name in ("model.safetensors", "best.safetensors"):
        assert (straight / name).read_bytes() == (stopped / name).read_bytes(), name
    arrays, again = (read_safetensors(run / "resume.safetensors")[0] for run in (straight, stopped))
    assert arrays.keys() == again.keys() and any(k.startswith("average/") for k in arrays)
    for name in arrays:   # the weights, the optimizer, the carried state and the average (the clock differs)
        np.testing.assert_array_equal(arrays[name], again[name], err_msg=name)


def test_turned_off_on_resume_the_last_steps_weights_are_saved_again(tmp_path, run_cli):
    text = write_word_text(tmp_path / "text.txt", 120)
    run = tmp_path / "run"
    common = ["train", "--impl", "library", "--data", text, *SMALL, "--eval-every", 4]
    assert run_cli([*common, "--out", run, "--max-iters", 4, "--weight-average", "ema"]).returncode == 0
    assert any(not np.array_equal(saved(run)[k], raw(run)[k]) for k in raw(run))
    done = run_cli(["train", "--data", text, "--out", run, "--resume", "--max-iters", 6, "--weight-average", "none"])
    assert done.returncode == 0, done.stderr
    assert "--weight-average none" in done.stdout
    assert all(np.array_equal(saved(run)[k], raw(run)[k]) for k in raw(run))
    assert not any(k.startswith("average/") for k in read_safetensors(run / "resume.safetensors")[0])


def test_a_damaged_average_is_refused_in_one_line_and_changes_nothing(tmp_path, run_cli):
    text = write_word_text(tmp_path / "text.txt", 120)
    run = tmp_path / "run"
    common = ["train", "--impl", "library", "--data", text, *SMALL, "--eval-every", 4, "--weight-average", "ema"]
    assert run_cli([*common, "--out", run, "--max-iters", 4]).returncode == 0
    arrays, meta = read_safetensors(run / "resume.safetensors")
    arrays["average/head.bias"] = arrays["average/head.bias"][:-1]
    write_safetensors(run / "resume.safetensors", arrays, meta)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir()}
    done = run_cli(["train", "--data", text, "--out", run, "--resume", "--max-iters", 8])
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "its weight average" in lines[0], done.stderr
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir()} == before
