"""--weight-average ema: the weights validated and saved are a moving average of the last steps' (train/averaging.py).

The references are independent of the averaging code: the closed form of an exponential average, summed here in
float64; and the same run trained without the average, one step at a time (a resume is exact), for the weights the
average must be made of and for the training it must leave alone. Every engine, resume with the setting changed,
and the runtimes: the conformance rows (RESUME_CHANGES); torchrun: tests/test_distributed.py.
"""
import hashlib
import json
import re

import numpy as np
import pytest
from conftest import write_word_text

from charrnn.checkpoint import read_safetensors, write_safetensors
from charrnn.train.averaging import WeightAverage, update_every

SMALL = ["--hidden", 12, "--embed", 6, "--layers", 2, "--batch-size", 2, "--seq-len", 16, "--seed", 5,
         "--log-every", 1, "--dropout", 0]


def closed_form(samples: list, horizon: int, end: int) -> dict:
    """[(iteration, steps it stands for, weights)] -> their weighted mean at iteration `end`: a sample at t standing
    for s steps weighs (1 - b^s) b^(end - t), b = 1 - 1/horizon (an exponential average of every step, each step
    taking the weights of the sample that covers it), summed here in float64."""
    b = 1 - 1 / horizon
    weight = [(1 - b ** s) * b ** (end - t) for t, s, _ in samples]
    return {name: sum(c * w[name].astype(np.float64) for c, (_, _, w) in zip(weight, samples)) / sum(weight)
            for name in samples[0][2]}


def test_the_average_is_the_closed_form_of_the_weights_it_was_given():
    """Sampled every k steps, a sample at every k-th; read between two samples (blended), the steps since count in
    too; until a horizon has passed it is a plain mean, not the first weights held as a whole horizon's."""
    rng = np.random.default_rng(0)
    horizon = 40
    k = update_every(horizon)
    assert k == 2 and update_every(8) == 1
    average, samples, last = WeightAverage(), [], 0
    for iteration in range(1, 30):
        params = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}
        if average.due(iteration, horizon):
            average.update(params, iteration, horizon)
            samples.append((iteration, iteration - last, params))
            last = iteration
    assert [t for t, _, _ in samples] == list(range(1, 30, k))   # the first step starts it, then every k-th
    bound = len(samples) * 5 * 2 ** -22   # float32 updates of values under 5: a few ulps each
    for name, value in closed_form(samples, horizon, 29).items():
        np.testing.assert_allclose(average.arrays[name], value, rtol=0, atol=bound)
    between = {"a": np.ones((3, 4), np.float32), "b": np.ones(5, np.float32)}
    for name, value in closed_form([*samples, (30, 1, between)], horizon, 30).items():
        np.testing.assert_allclose(average.blended(between, 30, horizon)[name], value, rtol=0, atol=bound)
    assert average.at == 29   # blended() left it as it was
    start = WeightAverage()   # 5 steps into a 40-step horizon, the first step's weights count for about a fifth
    for t, _, params in samples[:3]:
        start.update(params, t, horizon)
    for name, value in closed_form(samples[:3], horizon, 5).items():
        np.testing.assert_allclose(start.arrays[name], value, rtol=0, atol=bound)
        assert np.abs(start.arrays[name] - samples[0][2][name]).max() > 0.5
    one = WeightAverage()
    for i, (_, _, params) in enumerate(samples[:3]):
        one.update(params, i + 1, 1)   # an average over one step is the last step (two roundings of values under 5)
    np.testing.assert_allclose(one.arrays["a"], samples[2][2]["a"], rtol=0, atol=2 * 2 ** -21)


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
    """naive: the weights trained are bit for bit those of the same run without the average (validation puts them
    back exactly), and model.safetensors and best.safetensors are the closed form of the weights after each step,
    read from that run step by step. Validating every 2 steps, every step is sampled; validating every 40 (sampled
    every 2nd step) and stopped at step 4, the checkpoint counts in the step since the last sample."""
    text = write_word_text(tmp_path / "text.txt", 120)
    common = ["train", "--impl", "naive", "--data", text, *SMALL]
    plain, steps = tmp_path / "plain", []
    for i in range(1, 7):
        done = run_cli([*common, "--eval-every", 2, "--out", plain, "--max-iters", i,
                        *(["--resume"] if i > 1 else [])])
        assert done.returncode == 0, done.stderr
        steps.append(raw(plain))
    bound = 6 * 2 ** -22   # a float32 average of float64 weights under 1: a few ulps per sample

    every, sparse = tmp_path / "every", tmp_path / "sparse"
    done = run_cli([*common, "--eval-every", 2, "--out", every, "--max-iters", 6, "--weight-average", "ema"])
    assert done.returncode == 0, done.stderr
    for name, value in raw(every).items():
        np.testing.assert_array_equal(value, steps[-1][name], err_msg=name)
    model = saved(every)
    for name, value in closed_form([(i + 1, 1, w) for i, w in enumerate(steps)], 2, 6).items():
        np.testing.assert_allclose(model[name], value, rtol=0, atol=bound, err_msg=name)
    losses = val_losses(every)
    best = min(losses, key=losses.get)
    for name, value in closed_form([(i + 1, 1, w) for i, w in enumerate(steps[:best])], 2, best).items():
        np.testing.assert_allclose(saved(every, "best")[name], value, rtol=0, atol=bound, err_msg=name)

    done = run_cli([*common, "--eval-every", 40, "--out", sparse, "--max-iters", 4, "--weight-average", "ema"])
    assert done.returncode == 0, done.stderr
    samples = [(1, 1, steps[0]), (3, 2, steps[2]), (4, 1, steps[3])]
    for name, value in closed_form(samples, 40, 4).items():
        np.testing.assert_allclose(saved(sparse)[name], value, rtol=0, atol=bound, err_msg=name)
    _, meta = read_safetensors(sparse / "resume.safetensors")   # the last sample, and the 3 steps it has seen
    assert meta["average"] == {"at": 3, "mass": pytest.approx(1 - (1 - 1 / 40) ** 3, rel=1e-12)}


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["naive", "library"])
def test_a_resumed_run_averages_exactly_as_one_trained_straight(impl, tmp_path, run_cli):
    """Sampled every 2nd step (validating every 40), stopped at step 6, between two samples: the checkpoint there
    counted step 6 in without sampling it, and the resumed run samples at the steps the straight one does."""
    text = write_word_text(tmp_path / "text.txt", 120)
    common = ["train", "--impl", impl, "--data", text, *SMALL, "--eval-every", 40, "--weight-average", "ema"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run_cli([*common, "--out", straight, "--max-iters", 12]).returncode == 0
    assert run_cli([*common, "--out", stopped, "--max-iters", 6]).returncode == 0
    assert read_safetensors(stopped / "resume.safetensors")[1]["average"]["at"] == 5
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


@pytest.mark.parametrize("damage, needle", [
    ("shape", "its weight average"),
    ("arrays gone", "its weight average is missing"),
    ("counters gone", "its weight average's counters are None"),
    ("mass", "its weight average's counters are"),
    ("at past the checkpoint", "its weight average's counters are"),
])
def test_a_damaged_average_is_refused_in_one_line_and_changes_nothing(damage, needle, tmp_path, run_cli):
    text = write_word_text(tmp_path / "text.txt", 120)
    run = tmp_path / "run"
    common = ["train", "--impl", "library", "--data", text, *SMALL, "--eval-every", 4, "--weight-average", "ema"]
    assert run_cli([*common, "--out", run, "--max-iters", 4]).returncode == 0
    arrays, meta = read_safetensors(run / "resume.safetensors")
    if damage == "shape":
        arrays["average/head.bias"] = arrays["average/head.bias"][:-1]
    elif damage == "arrays gone":
        arrays = {k: v for k, v in arrays.items() if not k.startswith("average/")}
    elif damage == "counters gone":
        del meta["average"]
    elif damage == "mass":
        meta["average"]["mass"] = 0.0
    else:
        meta["average"]["at"] = 1000
    write_safetensors(run / "resume.safetensors", arrays, meta)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir()}
    done = run_cli(["train", "--data", text, "--out", run, "--resume", "--max-iters", 8])
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and needle in lines[0], done.stderr
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir()} == before


def test_samples_during_training_are_of_the_average_and_leave_training_as_it_was(tmp_path, run_cli):
    """--sample-every with the average: the run trains and saves exactly what it does without samples, and what it
    samples is the average's text, not the last step's (the same seed draws another text from other weights)."""
    text = write_word_text(tmp_path / "text.txt", 120)
    common = ["train", "--impl", "library", "--data", text, *SMALL, "--eval-every", 40, "--max-iters", 6]
    runs, logs = {name: tmp_path / name for name in ("quiet", "ema", "none")}, {}
    for name, run in runs.items():
        flags = (["--sample-every", 3] if name != "quiet" else []) + ["--weight-average", "none" if name == "none"
                                                                       else "ema"]
        done = run_cli([*common, "--out", run, *flags])
        assert done.returncode == 0, done.stderr
        logs[name] = done.stderr
    for name in ("model.safetensors", "best.safetensors"):
        assert (runs["quiet"] / name).read_bytes() == (runs["ema"] / name).read_bytes(), name
    for key, value in raw(runs["quiet"]).items():
        np.testing.assert_array_equal(value, raw(runs["ema"])[key], err_msg=key)
    samples = {name: re.findall(r"--- sample at iteration \d+ ---\n(.*?)\n---", logs[name], re.S)
               for name in ("ema", "none")}
    assert len(samples["ema"]) == len(samples["none"]) == 2 and samples["ema"] != samples["none"], samples
