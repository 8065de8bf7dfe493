"""Sampling, beam search and evaluation, against independent references.

`sample_next` is checked against closed forms (softmax, a brute-force top-p set); the
commands run against one small LSTM trained once per module through `charrnn train`.
Most commands run in-process through `charrnn.cli.main` (what `charrnn` calls), which
returns the exit code; streaming and the torch-free engine need real subprocesses.
"""
import itertools
import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest

import charrnn
from charrnn.errors import UserError
from charrnn.infer.sampling import sample_next
from charrnn.losses import log_softmax

ENGINES = ["naive", "scratch", "library"]
PRIME = "Zoë’s "                     # multi-byte characters: lengths must count characters, not bytes


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


class QuasiUniform:
    """Stands in for np.random.Generator: rows get u = (i + 0.5) / n, so the share of
    rows that draw each index is the sampled distribution itself, to within 1 / n."""

    def __init__(self, values=None):
        self.values = values

    def random(self, n):
        return (np.arange(n) + 0.5) / n if self.values is None else np.asarray(self.values, dtype=np.float64)


def drawn_distribution(logits, n=200_000, **knobs):
    """The distribution sample_next draws from, measured exactly with QuasiUniform."""
    picks = sample_next(np.tile(logits, (n, 1)), rng=QuasiUniform(), **knobs)
    return np.bincount(picks, minlength=len(logits)) / n


def chi_square(counts, probs):
    expected = counts.sum() * probs
    kept = expected > 0
    assert counts[~kept].sum() == 0, "drew an index of probability 0"
    return float(((counts[kept] - expected[kept]) ** 2 / expected[kept]).sum())


# -- sample_next against closed forms ----------------------------------------------------------------

def test_greedy_is_argmax():
    logits = np.random.default_rng(0).standard_normal((64, 13))
    np.testing.assert_array_equal(sample_next(logits, greedy=True), logits.argmax(axis=1))
    np.testing.assert_array_equal(sample_next(logits, temperature=5.0, top_k=4, greedy=True), logits.argmax(axis=1))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_temperature_frequencies_match_softmax(temperature):
    logits = np.array([1.2, -0.3, 0.0, 2.0, -1.5, 0.7, 0.1, -0.8])
    draws = sample_next(np.tile(logits, (60_000, 1)), temperature, rng=np.random.default_rng(42))
    counts = np.bincount(draws, minlength=len(logits))
    # chi-square with 7 degrees of freedom: 24.3 is its 0.999 quantile
    assert chi_square(counts, softmax(logits / temperature)) < 24.3
    if temperature != 1.0:                                      # and the test can tell temperatures apart
        assert chi_square(counts, softmax(logits)) > 200


def test_top_k_stays_in_the_k_largest_and_renormalizes():
    logits = np.array([-3.0, 0.5, 1.5, -0.2, 2.2, 0.9, -1.0])  # index 0 is the smallest
    k = 3
    largest = set(np.argsort(-logits)[:k])
    draws = sample_next(np.tile(logits, (50_000, 1)), top_k=k, rng=np.random.default_rng(1))
    assert set(np.unique(draws)) == largest
    reference = np.where(np.isin(np.arange(len(logits)), list(largest)), np.exp(logits), 0.0)
    reference /= reference.sum()
    assert chi_square(np.bincount(draws, minlength=len(logits)), reference) < 16.3  # 2 d.o.f., 0.9997
    np.testing.assert_allclose(drawn_distribution(logits, top_k=k), reference, atol=2e-5)
    # u = 0 (Generator.random's smallest value) must not pick a removed leading character
    assert sample_next(logits[None, :], top_k=k, rng=QuasiUniform([0.0]))[0] in largest
    assert sample_next(logits[None, :], top_k=k, rng=QuasiUniform([1 - 2 ** -53]))[0] in largest


def smallest_set_reaching(p, top_p):
    """Brute force over every subset: the fewest characters whose mass reaches top_p (the heaviest such set)."""
    best = None
    for size in range(1, len(p) + 1):
        for subset in itertools.combinations(range(len(p)), size):
            mass = p[list(subset)].sum()
            if mass >= top_p and (best is None or mass > best[1]):
                best = (set(subset), mass)
        if best:
            return best[0]


def test_top_p_keeps_exactly_the_smallest_set_reaching_p():
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(8):
        logits = rng.standard_normal(7) * 1.5
        p = softmax(logits)
        cumulative = np.cumsum(np.sort(p)[::-1])
        for top_p in (0.05, 0.3, 0.5, 0.75, 0.9, 0.99):
            if np.min(np.abs(cumulative - top_p)) < 1e-9:
                continue                                        # a boundary tie: either answer is right
            keep = smallest_set_reaching(p, top_p)
            reference = np.where(np.isin(np.arange(7), list(keep)), p, 0.0)
            reference /= reference.sum()
            measured = drawn_distribution(logits, n=20_000, top_p=top_p)
            assert set(np.flatnonzero(measured)) == keep, (top_p, p)
            np.testing.assert_allclose(measured, reference, atol=1e-4)
            checked += 1
    assert checked > 40


def composed_reference(logits, temperature, top_k, top_p):
    """The documented order, written out: logits / temperature -> top-k -> top-p -> renormalize."""
    z = logits / temperature
    kept = np.argsort(-z)[:top_k]
    p = np.zeros_like(z)
    p[kept] = softmax(z[kept])
    keep = smallest_set_reaching(p, top_p)
    p = np.where(np.isin(np.arange(len(z)), list(keep)), p, 0.0)
    return p / p.sum()


def test_knobs_compose_as_temperature_then_top_k_then_top_p():
    logits = np.log(np.array([0.30, 0.26, 0.2, 0.14, 0.1]))
    temperature, top_k, top_p = 2.0, 3, 0.6
    reference = composed_reference(logits, temperature, top_k, top_p)
    measured = drawn_distribution(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    np.testing.assert_allclose(measured, reference, atol=2e-5)
    # the case tells the orders apart: top-p before top-k, or before the temperature, keeps other sets
    p_first = composed_reference(logits, 1.0, len(logits), top_p)
    assert set(np.flatnonzero(p_first)) != set(np.flatnonzero(reference))
    top_p_on_full = smallest_set_reaching(softmax(logits / temperature), top_p)
    assert top_p_on_full != set(np.flatnonzero(reference))


# -- one trained run for the rest --------------------------------------------------------------------

def make_text():
    rng = random.Random(1234)
    subjects = ["The old fox", "A quiet river", "Every lantern", "My neighbour", "That small bird"]
    verbs = ["watches", "remembers", "carries", "follows", "forgets"]
    objects = ["the morning light", "a broken wheel", "seven stones", "the last letter", "our garden",
               "the café sign", "Zoë’s kite"]
    lines = []
    while sum(len(line) + 1 for line in lines) < 4000:
        sentence = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}"
        lines.append(sentence + rng.choice([".", "!", "?", ", and then waits."]))
    return "\n".join(lines) + "\n"


def subprocess_env(cache) -> dict:
    """What this module's subprocesses change in conftest's run_cli environment."""
    return {"XDG_CACHE_HOME": cache, "PYTHONIOENCODING": "utf-8",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # tiny models: threads only contend


@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_cli):
    """(run directory, text file, text): a 2x24 LSTM after 40 iterations of `charrnn train --impl naive`
    (the fastest engine to start; every engine reads its checkpoint)."""
    base = tmp_path_factory.mktemp("sampling")
    text = make_text()
    data = base / "text.txt"
    data.write_text(text, encoding="utf-8")
    run = base / "run"
    args = ["train", "--data", data, "--out", run, "--impl", "naive", "--cell", "lstm", "--layers", 2,
            "--hidden", 24, "--embed", 8, "--batch-size", 8, "--seq-len", 32,
            "--max-iters", 40, "--eval-every", 40, "--seed", 11]
    done = run_cli(args, env=subprocess_env(base / "cache"), timeout=300)
    assert done.returncode == 0, done.stderr
    return run, data, text


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def cli(run_cli):
    """cli(*args) -> (exit code, stdout, stderr) of `charrnn ARGS`, run in this process (run_cli.in_process)."""

    def run(*args):
        done = run_cli.in_process(args)
        return done.returncode, done.stdout, done.stderr

    return run


def sample_args(trained, *extra):
    return ("sample", "--checkpoint", trained[0], *extra)


def assert_one_line_error(code, out, err, *needles):
    assert code == 2
    assert out == ""                                            # nothing half-printed before the error
    assert err.startswith("charrnn: error:") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


# -- sample: argument errors -------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-0.5"])
@pytest.mark.parametrize("mode", [(), ("--json",)])
def test_nonpositive_temperature_exits_2_pointing_to_greedy(trained, cli, value, mode):
    args = sample_args(trained, "--prime", PRIME, f"--temperature={value}", *mode)
    assert_one_line_error(*cli(*args), "--temperature", "--greedy")


@pytest.mark.parametrize("flag", [("--top-k", "0"), ("--top-k", "-3"), ("--top-p", "0"), ("--top-p", "1.5"),
                                  ("--top-p", "-0.2"), ("--top-k", "two"), ("--beam", "0"), ("--length", "-1"),
                                  ("--num-samples", "0")])
def test_bad_sampling_flags_exit_2(trained, cli, flag):
    assert_one_line_error(*cli(*sample_args(trained, "--prime", PRIME, f"{flag[0]}={flag[1]}")), flag[0])


# -- sample: output, seeds, primes -------------------------------------------------------------------

@pytest.mark.parametrize("impl", ENGINES)
def test_seed_reproduces_and_different_seeds_differ(trained, cli, impl):
    args = sample_args(trained, "--impl", impl, "--prime", PRIME, "--length", 120, "--temperature", 1.5)
    first = cli(*args, "--seed", 3)
    assert first[0] == 0 and first[1].startswith(PRIME)
    assert cli(*args, "--seed", 3) == first
    assert cli(*args, "--seed", 4)[1] != first[1]


def test_engines_agree_for_the_same_seed(trained, cli):
    outputs = {impl: cli(*sample_args(trained, "--impl", impl, "--length", 150, "--seed", 9))[1] for impl in ENGINES}
    assert len(set(outputs.values())) == 1, outputs
    greedy = {impl: cli(*sample_args(trained, "--impl", impl, "--length", 60, "--greedy"))[1] for impl in ENGINES}
    assert len(set(greedy.values())) == 1, greedy


@pytest.mark.parametrize("mode", ["stream", "json"])
def test_output_is_prime_plus_length_characters(trained, cli, mode):
    extra = ("--json",) if mode == "json" else ()
    code, out, _ = cli(*sample_args(trained, "--prime", PRIME, "--length", 57, "--seed", 1, *extra))
    assert code == 0
    text = json.loads(out)["samples"][0] if extra else out[:-1]
    assert (extra or out.endswith("\n")) and text.startswith(PRIME)
    assert len(text) == len(PRIME) + 57 and len(text.encode("utf-8")) > len(text)


def test_no_prime_starts_from_a_newline_and_prints_only_the_sample(trained, cli):
    code, out, _ = cli(*sample_args(trained, "--length", 40, "--seed", 2))
    assert code == 0 and len(out) == 41 and out.endswith("\n")
    with_newline = cli(*sample_args(trained, "--prime", "\n", "--length", 40, "--seed", 2))[1]
    assert with_newline == "\n" + out


def test_prime_file_equals_the_same_prime_given_inline(trained, cli, tmp_path):
    prime = "The café sign\nEvery "
    path = tmp_path / "prime.txt"
    path.write_text(prime, encoding="utf-8")
    from_file = cli(*sample_args(trained, "--prime-file", path, "--length", 30, "--seed", 5))
    assert from_file[0] == 0 and from_file[1].startswith(prime)
    assert from_file == cli(*sample_args(trained, "--prime", prime, "--length", 30, "--seed", 5))
    assert_one_line_error(*cli(*sample_args(trained, "--prime-file", tmp_path / "missing.txt")), "--prime-file")
    assert_one_line_error(*cli(*sample_args(trained, "--prime-file", path, "--prime", "x")), "--prime")


@pytest.mark.parametrize("mode", [(), ("--json",), ("--beam", "2")])
def test_unknown_prime_characters_exit_2_listing_them(trained, cli, mode):
    assert_one_line_error(*cli(*sample_args(trained, "--prime", "The Ωx€", *mode)), "'Ω'", "'€'", "--unknown skip")


def test_unknown_skip_drops_them_with_a_warning(trained, cli):
    code, out, err = cli(*sample_args(trained, "--prime", "The Ωx€", "--unknown", "skip", "--length", 20, "--seed", 8))
    assert code == 0 and "warning" in err and "'Ω'" in err and "'€'" in err
    assert out.startswith("The x") and len(out) == len("The x") + 20 + 1
    assert (code, out) == cli(*sample_args(trained, "--prime", "The x", "--length", 20, "--seed", 8))[:2]
    only_unknown = cli(*sample_args(trained, "--prime", "€", "--unknown", "skip", "--length", 20, "--seed", 8))
    assert only_unknown[:2] == cli(*sample_args(trained, "--length", 20, "--seed", 8))[:2]


def test_num_samples_and_json(trained, cli):
    code, out, _ = cli(*sample_args(trained, "--prime", PRIME, "--length", 25, "--num-samples", 4, "--seed", 6,
                                    "--temperature", 1.3, "--json"))
    assert code == 0
    result = json.loads(out)
    assert {"samples", "prime", "temperature", "seed"} <= set(result)
    assert (result["prime"], result["temperature"], result["seed"]) == (PRIME, 1.3, 6)
    assert len(result["samples"]) == 4 and len(set(result["samples"])) > 1
    assert all(s.startswith(PRIME) and len(s) == len(PRIME) + 25 for s in result["samples"])
    code, out, _ = cli(*sample_args(trained, "--prime", PRIME, "--length", 10, "--num-samples", 3, "--seed", 6))
    # plain text: each sample under a header line that no sample can be mistaken for
    assert code == 0 and out.startswith("----- sample 1 of 3 -----\n" + PRIME)
    parts = out.rstrip("\n").split("\n\n")
    assert [p.split("\n", 1)[0] for p in parts] == [f"----- sample {i} of 3 -----" for i in (1, 2, 3)]
    assert all(p.split("\n", 1)[1].startswith(PRIME) and len(p.split("\n", 1)[1]) == len(PRIME) + 10 for p in parts)


# -- streaming and the torch-free engine (real processes) --------------------------------------------

def test_a_single_sample_is_streamed_as_it_is_generated(trained, tmp_path, run_cli):
    run, length = trained[0], 3000                              # < 8 KiB: a block buffer would hold it all
    command = ["sample", "--checkpoint", run, "--length", length,
               "--seed", "5", "--temperature", "1.2", "--impl", "naive"]  # naive: no torch to import, a quick start
    env = {**subprocess_env(tmp_path), "PYTHONUNBUFFERED": None}  # the command must flush by itself
    proc = run_cli.popen(command, env=env, text=False)
    try:
        first = os.read(proc.stdout.fileno(), 1 << 16)          # whatever has arrived, as soon as anything has
        running = proc.poll() is None
        rest, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert running and 0 < len(first) < length // 2, len(first)
    expected = charrnn.load(run, impl="naive").sample("", length, temperature=1.2, seed=5)
    assert (first + rest).decode("utf-8") == expected + "\n"   # and the same text as in this process


def test_naive_engine_samples_and_evaluates_without_torch(trained, tmp_path, run_cli):
    run, data, _ = trained
    code = f"""
import sys
sys.modules["torch"] = None                                     # `import torch` now raises ImportError
from charrnn.cli import main
codes = [main(["sample", "--checkpoint", {str(run)!r}, "--impl", "naive", "--length", "30", "--seed", "1"]),
         main(["eval", "--checkpoint", {str(run)!r}, "--impl", "naive", "--data", {str(data)!r}, "--json"]),
         main(["sample", "--checkpoint", {str(run)!r}, "--impl", "library"])]
assert sys.modules["torch"] is None
print(codes)
"""
    done = subprocess.run([sys.executable, "-c", code], env=run_cli.env(subprocess_env(tmp_path)), capture_output=True,
                          text=True, encoding="utf-8", timeout=120)
    assert done.returncode == 0, done.stderr
    sample = charrnn.load(run, impl="naive").sample("", 30, seed=1)
    assert done.stdout.startswith(sample + "\n")
    evaluation, codes = done.stdout[len(sample) + 1:].splitlines()
    assert json.loads(evaluation)["characters"] == len(trained[2]) - 1 and codes == "[0, 0, 2]"
    assert "needs PyTorch" in done.stderr and "--impl naive" in done.stderr


# -- beam search against brute force -----------------------------------------------------------------

def brute_force_best(runner, vocab, prime, length):
    """Score every one of the V**length continuations in one batched pass; return the best two."""
    V, p = len(vocab), vocab.encode(prime).astype(np.int64)
    sequences = np.array(list(itertools.product(range(V), repeat=length)))              # (V**n, n)
    inputs = np.concatenate([np.tile(p, (len(sequences), 1)), sequences[:, :-1]], axis=1)
    logits, _ = runner.feed(inputs, runner.zero_state(len(sequences)))                  # (V**n, P+n-1, V)
    logp = log_softmax(logits[:, len(p) - 1:])                                          # (V**n, n, V)
    scores = np.take_along_axis(logp, sequences[:, :, None], axis=2)[:, :, 0].sum(axis=1)
    order = np.argsort(-scores)
    return vocab.decode(sequences[order[0]]), scores[order[0]] - scores[order[1]]


@pytest.mark.parametrize("length", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_wide_beam_equals_brute_force(trained, length):
    model = charrnn.load(trained[0], impl="library")
    best, margin = brute_force_best(model.predictor, model.vocab, "The ", length)
    assert margin > 1e-5                                        # no near-tie: the comparison is meaningful
    assert model.beam("The ", length, beam=len(model.vocab) ** length) == "The " + best


def test_beam_on_the_command_line_and_beam_1_is_greedy(trained, cli):
    model = charrnn.load(trained[0], impl="library")
    best, _ = brute_force_best(model.predictor, model.vocab, "A q", 2)
    code, out, _ = cli(*sample_args(trained, "--prime", "A q", "--length", 2, "--beam", len(model.vocab) ** 2))
    assert (code, out) == (0, "A q" + best + "\n")
    for impl in ENGINES:
        greedy = cli(*sample_args(trained, "--impl", impl, "--prime", "A q", "--length", 40, "--greedy"))
        assert greedy[0] == 0 and cli(*sample_args(trained, "--impl", impl, "--prime", "A q", "--length", 40,
                                                    "--beam", 1))[:2] == greedy[:2]


# -- eval --------------------------------------------------------------------------------------------

def reference_loss(run, text):
    """The library engine's torch model over the whole text at once, from zero state, F.cross_entropy by hand."""
    torch = pytest.importorskip("torch")
    model = charrnn.load(run, impl="library")
    ids = torch.tensor([model.vocab.chars.index(c) for c in text])
    module = model.model.double()
    with torch.no_grad():
        logits, _ = module(ids[None, :-1], module.initial_state(1))                     # (1, N-1, V)
        return torch.nn.functional.cross_entropy(logits[0], ids[1:]).item()


@pytest.mark.parametrize("impl", ENGINES)
def test_eval_matches_an_independent_computation(trained, cli, impl):
    run, data, text = trained
    assert len(text) > 2048                                     # evaluate reads in chunks: cross one boundary
    code, out, _ = cli("eval", "--checkpoint", run, "--impl", impl, "--data", data, "--json")
    assert code == 0
    result = json.loads(out)
    assert set(result) == {"loss", "bpc", "characters", "skipped", "skipped_chars", "impl", "which", "quantize",
                           "trained_on"}
    assert (result["skipped"], result["skipped_chars"], result["impl"]) == (0, [], impl)
    assert result["characters"] == len(text) - 1
    assert result["bpc"] == pytest.approx(result["loss"] / math.log(2), rel=1e-12)
    assert abs(result["loss"] - reference_loss(run, text)) < 1e-5
    assert result["loss"] < math.log(len(charrnn.load(run, impl="naive").vocab)) - 0.3  # it learned something


def test_eval_rejects_characters_outside_the_vocabulary(trained, cli, tmp_path):
    path = tmp_path / "other.txt"
    path.write_text("The old fox Ω watches ✓ the light.\n", encoding="utf-8")
    assert_one_line_error(*cli("eval", "--checkpoint", trained[0], "--data", path), "'Ω'", "'✓'", str(path))


# -- int8 --------------------------------------------------------------------------------------------

def test_int8_eval_costs_little_and_matches_the_api(trained, cli):
    """`--quantize int8` evaluates the int8 model itself: close to float, not equal to it."""
    pytest.importorskip("torch")
    run, data, text = trained
    results = {}
    for quantize in ([], ["--quantize", "int8"]):
        code, out, _ = cli("eval", "--checkpoint", run, "--data", data, "--json", *quantize)
        assert code == 0
        results[bool(quantize)] = json.loads(out)
    assert results[True]["characters"] == results[False]["characters"] == len(text) - 1
    assert 0 < abs(results[True]["loss"] - results[False]["loss"]) < 0.01
    api = charrnn.load(run, impl="naive", quantize="int8").evaluate(text)
    assert api.loss == pytest.approx(results[True]["loss"], abs=1e-6)


@pytest.mark.parametrize("knobs", [[], ["--top-k", 20]], ids=["compiled draws", "python draws"])
def test_int8_samples_are_reproducible_and_engine_independent(trained, cli, knobs):
    pytest.importorskip("torch")
    args = ("--quantize", "int8", "--prime", PRIME, "--length", 120, *knobs)
    outputs = {impl: cli(*sample_args(trained, "--impl", impl, *args, "--seed", 9)) for impl in ENGINES}
    first = outputs["naive"]
    assert first[0] == 0 and first[1].startswith(PRIME) and len(first[1]) == len(PRIME) + 121
    assert all(out[:2] == first[:2] for out in outputs.values())
    assert cli(*sample_args(trained, *args, "--seed", 9))[:2] == first[:2]
    assert cli(*sample_args(trained, *args, "--seed", 10))[1] != first[1]


def test_int8_draws_in_c_what_python_draws(trained):
    """Plain temperature sampling draws in compiled code; --top-k V (which removes nothing) draws in
    Python from the same step's logits with the same uniforms: the same text. Streaming too."""
    from charrnn.infer import native

    if native.kernel() is None:
        pytest.skip(f"no compiled step: {native.kernel_problem()}")
    model = charrnn.load(trained[0], impl="naive", quantize="int8")
    V = len(model.vocab)
    for temperature in (0.6, 1.3):
        compiled = model.sample(PRIME, 300, temperature=temperature, seed=3)
        assert compiled == model.sample(PRIME, 300, temperature=temperature, top_k=V, seed=3)
    assert "".join(model.stream(PRIME, 300, temperature=1.3, seed=3)) == compiled[len(PRIME):]
    assert model.sample(PRIME, 100, greedy=True) == model.sample(PRIME, 100, greedy=True, top_k=V)


def test_int8_needs_no_torch(trained, tmp_path, run_cli):
    """The int8 step is NumPy or C: sampling with it works with torch unimportable."""
    code = f"""
import sys
sys.modules["torch"] = None
from charrnn.cli import main
sys.exit(main(["sample", "--checkpoint", {str(trained[0])!r}, "--impl", "naive", "--quantize", "int8",
               "--length", "50", "--seed", "1"]))
"""
    done = subprocess.run([sys.executable, "-c", code], env=run_cli.env(subprocess_env(tmp_path)), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout) == 51 and "warning" not in done.stderr


# -- the Python API ----------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ENGINES)
def test_python_api(trained, impl):
    run, _, text = trained
    model = charrnn.load(run, impl=impl)
    sample = model.sample(PRIME, 80, temperature=0.8, top_p=0.9, seed=1)
    assert sample.startswith(PRIME) and len(sample) == len(PRIME) + 80
    streamed = list(model.stream(PRIME, 80, temperature=0.8, top_p=0.9, seed=1))
    assert len(streamed) == 80 and all(len(ch) == 1 for ch in streamed)
    assert "".join(streamed) == sample[len(PRIME):]
    assert list(model.stream("", 0)) == []
    beam = model.beam(PRIME, 20, beam=3)
    assert beam.startswith(PRIME) and len(beam) == len(PRIME) + 20
    result = model.evaluate(text[:500])
    assert type(result.loss) is float and result.characters == 499
    assert result.bpc == pytest.approx(result.loss / math.log(2), rel=1e-12)
    with pytest.raises(UserError, match="greedy=True"):          # the API's own wording, not a CLI flag
        model.stream(PRIME, 10, temperature=0)                  # at the call, not at the first character
    with pytest.raises(UserError, match="'Ω'"):
        model.evaluate("The Ω")
