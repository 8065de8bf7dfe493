"""Int8 generation: QuantLinear against a closed-form error bound, the compiled step (native_step.c)
against QuantLinear's NumPy numbers, the int8 step against float, and every engine."""

import numpy as np
import pytest

from charrnn.config import ModelConfig
from charrnn.errors import UserError
from charrnn.infer import native
from charrnn.infer.linear import FloatLinear, QuantLinear, quantize_columns
from charrnn.infer.native import NativeStep, pack_weights
from charrnn.infer.predictor import Predictor
from charrnn.infer.sampling import sample_next
from charrnn.infer.steps import NumpyStep
from charrnn.models import build_model

needs_kernel = pytest.mark.skipif(native.kernel() is None, reason=f"no compiled step: {native.kernel_problem()}")
ENGINES = ["naive", "scratch", "library"]


def worst_case_error(x: np.ndarray, w: np.ndarray, w_scales: np.ndarray) -> np.ndarray:
    """|x @ w - x^ @ w^| <= sum_i |w_ij| |dx_i| + |x^_i| |dw_ij| elementwise, (B, n_out).

    Weights round to the nearest multiple of their column's scale, |dw| <= s_j / 2; each input
    row rounds to the nearest multiple of its own scale s_x = max |x| / 127, |dx| <= s_x / 2.
    """
    s_x = np.abs(x).max(axis=1, keepdims=True) / 127                         # (B, 1)
    return s_x / 2 * np.abs(w).sum(axis=0)[None] + ((np.abs(x) + s_x / 2) @ np.ones_like(w)) * w_scales[None] / 2


@pytest.mark.parametrize("batch", [1, 3])
def test_quant_linear_is_within_the_quantization_bound(batch):
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, (96, 40)).astype(np.float32)                     # (n_in, n_out)
    b = rng.normal(0, 1, (1, 40)).astype(np.float32)
    x = rng.uniform(-1, 1, (batch, 96)).astype(np.float32)
    exact = x.astype(np.float64) @ w + b
    layer = QuantLinear(w, b)
    error = np.abs(layer(x, np.empty((batch, 40), np.float32)) - exact)
    assert np.all(error <= worst_case_error(x, w, layer.scales) + 1e-5)
    assert error.max() > 1e-5                       # it really is quantized: float would be ~1e-7 off
    assert error.max() < 0.05 * np.abs(exact - b).max()  # and close: a few percent of the signal at worst


def test_quant_linear_reads_a_strided_input_like_a_copy():
    """NumpyStep hands layers column slices of its state buffer: not contiguous when B > 1."""
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.1, (16, 24)).astype(np.float32)
    wide = rng.uniform(-1, 1, (3, 40)).astype(np.float32)
    layer = QuantLinear(w, None)
    strided = layer(wide[:, 8:24], np.empty((3, 24), np.float32))
    copied = layer(np.ascontiguousarray(wide[:, 8:24]), np.empty((3, 24), np.float32))
    np.testing.assert_array_equal(strided, copied)


def test_quantize_columns_uses_the_whole_range_and_rounds_to_nearest():
    rng = np.random.default_rng(3)
    w = rng.normal(0, 1, (30, 6))
    w[:, 4] = 0.0                                                            # an all-zero column
    q, scale = quantize_columns(w)
    assert q.dtype == np.int8 and scale.dtype == np.float32
    assert scale[4] == 0 and not q[:, 4].any()
    live = [0, 1, 2, 3, 5]
    assert np.all(np.abs(q[:, live]).max(axis=0) == 127)                   # each column's largest weight -> +-127
    assert np.all(np.abs(q[:, live] * scale[live].astype(np.float64) - w[:, live]) <= scale[live] / 2 * (1 + 1e-6))


def test_float_linear_is_matmul_plus_bias():
    rng = np.random.default_rng(2)
    w, b, x = rng.normal(size=(5, 7)), rng.normal(size=(1, 7)), rng.normal(size=(2, 5))
    np.testing.assert_allclose(FloatLinear(w, b)(x, np.empty((2, 7))), x @ w + b, rtol=1e-12)


def test_packed_weights_follow_the_layout_native_step_c_reads():
    """[block of 128 columns][K/4][chunk of 16 within the block][column][4 rows], K and N padded."""
    rng = np.random.default_rng(6)
    K, N = 10, 150                                   # K pads to 12; N to 160: a full block and a 2-chunk block
    q = rng.integers(-127, 128, (K, N)).astype(np.int8)
    packed = pack_weights(q)
    K4 = 12
    assert packed.shape == (K4 * 160,)
    for k in range(K4):
        for n in range(160):
            block, within = divmod(n, 128)
            chunks = min(8, (160 - block * 128) // 16)
            offset = block * K4 * 128 + ((k // 4) * chunks + within // 16) * 64 + (n % 16) * 4 + k % 4
            assert packed[offset] == (q[k, n] if k < K and n < N else 0)


def random_model(cell, impl="naive", layers=2, hidden=32, vocab=13, embed=6, seed=4):
    cfg = ModelConfig(vocab_size=vocab, cell=cell, layers=layers, hidden=hidden, embed=embed)
    rng = np.random.default_rng(seed)
    reference = build_model("naive", cfg, seed=seed)
    params = {k: rng.uniform(-0.3, 0.3, v.shape).astype(np.float32) for k, v in reference.get_parameters().items()}
    return build_model(impl, cfg, params=params, seed=seed)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_int8_step_stays_close_to_the_float_step(cell):
    model = random_model(cell)
    rng = np.random.default_rng(5)
    B, T = 2, 40
    chars = rng.integers(0, model.config.vocab_size, (B, T))
    float_step, int8_step = NumpyStep.from_model(model, B), NumpyStep.from_model(model, B, quantize="int8")
    for fused in (float_step, int8_step):
        fused.set_state(model.initial_state(B))
    diffs, sizes = [], []
    for t in range(T):
        exact = float_step.step(chars[:, t]).copy()
        diffs.append(np.abs(int8_step.step(chars[:, t]) - exact).max())
        sizes.append(np.abs(exact - exact.mean(axis=1, keepdims=True)).max())
    # errors do not blow up through 40 steps of recurrence: they stay a small fraction of the logits' spread
    assert 0 < max(diffs) < 0.05 * min(sizes)
    for a, b in zip(int8_step.get_state(), float_step.get_state()):
        assert np.abs(a - b).max() < 0.05


def test_every_engine_steps_through_the_same_int8_model():
    """Whatever the engine, quantize='int8' builds one step from the canonical weights."""
    pytest.importorskip("torch")
    chars = np.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    outputs = {}
    for impl in ENGINES:
        runner = Predictor(random_model("lstm", impl), quantize="int8")
        outputs[impl], _ = runner.feed(chars, runner.zero_state(1))
    np.testing.assert_allclose(outputs["naive"], outputs["library"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(outputs["naive"], outputs["scratch"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("impl", ["naive", "library"])
def test_a_long_feed_equals_single_steps(impl):
    """Prime and evaluation feed windows; generation feeds one character at a time; same model either way."""
    if impl != "naive":
        pytest.importorskip("torch")
    runner = Predictor(random_model("gru", impl), quantize="int8")
    chars = np.array([[0, 5, 7, 7, 2, 11, 12, 1, 3]])
    whole, whole_state = runner.feed(chars, runner.zero_state(1))
    state, steps = runner.zero_state(1), []
    for t in range(chars.shape[1]):
        logits, state = runner.feed(chars[:, t:t + 1], state)
        steps.append(logits[:, 0])
    np.testing.assert_allclose(np.stack(steps, axis=1), whole, rtol=0, atol=1e-6)
    for a, b in zip(state, whole_state):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


def test_reusing_an_older_state_branches_from_it():
    """The runner skips copying in the state it just handed out; any other state must be copied in."""
    runner = Predictor(random_model("lstm"), quantize="int8")
    _, state_a = runner.feed(np.array([[1, 2, 3]]), runner.zero_state(1))
    first, _ = runner.feed(np.array([[4]]), state_a)
    _, _ = runner.feed(np.array([[8]]), runner.zero_state(1))     # move the step's state elsewhere
    again, _ = runner.feed(np.array([[4]]), state_a)
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("bad", ["int4", "INT8", True, 8])
def test_bad_quantize_choice_is_a_user_error(tmp_path, bad):
    """charrnn.load checks quantize where it enters, before touching the run directory."""
    import charrnn

    with pytest.raises(UserError, match=r"^quantize= .* is not one of int8$"):
        charrnn.load(tmp_path / "no-such-run", impl="naive", quantize=bad)


# -- the compiled step -------------------------------------------------------------------------------

def library_for(path):
    """native_step.c built for one of native.PATHS; the test is skipped where this machine cannot run that path."""
    try:
        return native.build(path)
    except native.PathUnavailable as exc:
        pytest.skip(str(exc))
    except RuntimeError as exc:                                   # no compiler, or it failed
        pytest.skip(f"no compiled step: {exc}")


@pytest.mark.parametrize("path", native.PATHS)
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("batch,threads,hidden", [(1, 1, 40), (3, 1, 40), (1, 2, 40), (3, 3, 40), (5, 2, 96), (9, 2,
                                                                                                               96)])
def test_compiled_step_computes_quant_linears_numbers(cell, batch, threads, hidden, path):
    """The same int8 model, op for op, on each of native_step.c's paths (AVX-512 VNNI, AVX2, the
    plain loop) this machine can run: the states agree bit for bit through 40 steps (so no input
    ever rounds to another int8 level); logits to summation order (the head's float sums).
    hidden 40: lstm's 160 gate columns are a full block of 128 and a partial one; odd vocabulary
    and embedding; threads split the units unevenly (3 threads: 13, 14, 13) and meet once per
    layer. 5 rows at hidden 96 on 2 threads: full blocks (lstm, gru) where a group of four rows
    shares each weight load (block_dot4), and a fifth row alone; 9 rows: two groups of four."""
    library = library_for(path)
    assert library.charrnn_isa().decode() == path
    model = random_model(cell, hidden=hidden, vocab=13, embed=6)
    rng = np.random.default_rng(7)
    chars = rng.integers(0, 13, (batch, 40))
    numpy_step = NumpyStep.from_model(model, batch, quantize="int8")
    compiled = NativeStep(model.config, model.get_parameters(), batch, threads=threads, library=library)
    assert compiled.threads == threads
    state = tuple(rng.uniform(-0.5, 0.5, s.shape) for s in model.initial_state(batch))
    numpy_step.set_state(state)
    compiled.set_state(state)
    for t in range(chars.shape[1]):
        np.testing.assert_allclose(compiled.step(chars[:, t]), numpy_step.step(chars[:, t]), rtol=0, atol=1e-5)
        for a, b in zip(compiled.get_state(), numpy_step.get_state()):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("path", native.PATHS)
def test_extreme_int8_operands_sum_exactly(path):
    """Every weight and every input at +-127, the signs lined up so that all products of a column
    agree: the largest pair sums any path can meet (AVX2's vpmaddubsw saturates int16 at 32767;
    2 * 127 * 127 = 32258 must pass whole, and so must the sums of vpdpbusd's q_x + 128 = 255).
    A one-layer rnn with no input side: h1[n] = tanh(t_n * H * 127 * 127 * s_x * s_w), the same bit
    for bit as the NumPy int8 step, and near the float tanh(t_n * H * a * b) (the int8 values are
    exact multiples of the scales here, so only rounding of the scales and tanh_approx's ~1e-7
    differ). H = 136: a full block of 128 columns and a padded partial chunk; 5 rows: block_dot4
    and block_dot."""
    library = library_for(path)
    H, B = 136, 5
    a = b = np.sqrt(0.5 / H)                                  # |pre-activation| = H a b = 0.5: tanh far from flat
    model = random_model("rnn", layers=1, hidden=H, vocab=7, embed=3)
    rng = np.random.default_rng(11)
    s_in, t_out = rng.choice([-1.0, 1.0], H), rng.choice([-1.0, 1.0], H)  # input signs, column signs
    params = {k: np.zeros_like(v) for k, v in model.get_parameters().items()}
    params["rnn.weight_hh_l0"] = (a * np.outer(t_out, s_in)).astype(np.float32)    # (out, in): w[k][n] = a t_n s_k
    model.set_parameters(params)
    q, _ = quantize_columns(params["rnn.weight_hh_l0"].T)
    assert (np.abs(q) == 127).all()
    rows = np.array([1.0, -1.0, -1.0, 1.0, -1.0])                     # each row all +-b: q_x = +-127
    state = ((b * rows[:, None] * s_in[None]).astype(np.float32)[None],)
    numpy_step = NumpyStep.from_model(model, B, quantize="int8")
    compiled = NativeStep(model.config, params, B, threads=1, library=library)
    numpy_step.set_state(state)
    compiled.set_state(state)
    chars = np.arange(B) % 7
    compiled.step(chars)
    numpy_step.step(chars)
    h1 = compiled.get_state()[0]
    np.testing.assert_array_equal(h1, numpy_step.get_state()[0])
    np.testing.assert_allclose(h1[0], np.tanh(0.5 * rows[:, None] * t_out[None]), rtol=0, atol=1e-6)


@pytest.fixture
def fresh_kernel(monkeypatch):
    """kernel() and build() found afresh in this test, and again after it (with the environment restored)."""
    native.kernel.cache_clear()
    native.build.cache_clear()
    yield monkeypatch
    native.kernel.cache_clear()
    native.build.cache_clear()


@needs_kernel
def test_the_isa_variable_picks_the_path_and_rejects_other_names(fresh_kernel):
    fresh_kernel.setenv("CHARRNN_NATIVE_ISA", "avx-512")
    with pytest.raises(UserError, match=r"^CHARRNN_NATIVE_ISA=avx-512 is not one of avx512-vnni, avx2, portable; "
                                        r"unset it for the best this CPU has$"):
        native.kernel()
    fresh_kernel.setenv("CHARRNN_NATIVE_ISA", "portable")
    native.kernel.cache_clear()
    assert native.compiled_path() == "portable"
    fresh_kernel.delenv("CHARRNN_NATIVE_ISA")
    native.kernel.cache_clear()
    best = native.compiled_path()
    assert best in native.PATHS and native.kernel() is native.build(None)


@needs_kernel
def test_a_path_this_cpu_lacks_is_refused_in_one_line(fresh_kernel):
    """As on a CPU without VNNI: asking for it builds what the CPU has, and says so."""
    fresh_kernel.setitem(native.PATH_FLAGS, "avx512-vnni", ["-march=native", "-mno-avx512f", "-mno-avx2"])
    with pytest.raises(native.PathUnavailable, match=r"^the compiled int8 step cannot use avx512-vnni here: this CPU "
                                                     r"and compiler build portable; set CHARRNN_NATIVE_ISA to one of "
                                                     r"portable, or unset it$"):
        native.build("avx512-vnni")
    assert issubclass(native.PathUnavailable, UserError)                       # the CLI's one line, exit 2


@needs_kernel
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_one_hot_inputs_step_through_the_same_int8_model(cell):
    """--embed 0: the compiled step computes the NumPy int8 step's states bit for bit, and stays near float."""
    model = random_model(cell, hidden=40, vocab=13, embed=0)
    assert model.get_parameters()["rnn.weight_ih_l0"].shape[1] == 13
    rng = np.random.default_rng(8)
    chars = rng.integers(0, 13, (3, 30))
    numpy_step = NumpyStep.from_model(model, 3, quantize="int8")
    compiled = NativeStep(model.config, model.get_parameters(), 3, threads=2)
    float_step = NumpyStep.from_model(model, 3)
    for step in (numpy_step, compiled, float_step):
        step.set_state(model.initial_state(3))
    for t in range(chars.shape[1]):
        got = compiled.step(chars[:, t])
        np.testing.assert_allclose(got, numpy_step.step(chars[:, t]), rtol=0, atol=1e-5)
        exact = float_step.step(chars[:, t])
        assert np.abs(got - exact).max() < 0.1 * np.abs(exact - exact.mean(axis=1, keepdims=True)).max()
        for a, b in zip(compiled.get_state(), numpy_step.get_state()):
            np.testing.assert_array_equal(a, b)


@needs_kernel
def test_compiled_feed_equals_its_steps_and_rejects_unknown_indices():
    model = random_model("lstm")
    chars = np.array([[0, 5, 7, 7, 2, 11, 12, 1, 3], [4, 4, 4, 0, 1, 2, 3, 9, 8]])
    whole, steps = NativeStep.from_model(model, 2), NativeStep.from_model(model, 2)
    logits = whole.feed(chars)
    for t in range(chars.shape[1]):
        np.testing.assert_array_equal(steps.step(chars[:, t]), logits[:, t])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        whole.step(np.array([0, 13]))


@needs_kernel
@pytest.mark.parametrize("greedy", [False, True])
def test_compiled_generation_draws_what_sample_next_draws(greedy):
    """Uniforms in the order sample_next takes them (per step, per row): the same characters."""
    model = random_model("gru", vocab=13)
    B, n, temperature = 2, 60, 0.7
    rng = np.random.default_rng(8)
    uniforms = rng.random((n, B))
    compiled, numpy_step = NativeStep.from_model(model, B), NumpyStep.from_model(model, B, quantize="int8")
    first = numpy_step.step(np.array([1, 2])).copy()
    compiled.step(np.array([1, 2]))
    drawn = np.concatenate([compiled.generate(first, 25, temperature, None if greedy else uniforms[:25]),
                            compiled.generate(None, n - 25, temperature, None if greedy else uniforms[25:])])

    class Replay:  # hands sample_next the same uniforms
        def __init__(self):
            self.rows = iter(uniforms)

        def random(self, size):
            return next(self.rows)[:size]

    replay, last, expected = Replay(), first, []
    for _ in range(n):
        chars = sample_next(last, temperature, rng=replay, greedy=greedy)
        expected.append(chars)
        last = numpy_step.step(chars)
    np.testing.assert_array_equal(drawn, np.array(expected))
    if not greedy:
        assert len(set(drawn[:, 0].tolist())) > 3            # it really draws, not a constant


def test_without_the_compiled_step_int8_runs_in_numpy_with_a_warning(monkeypatch):
    from charrnn.infer.predictor import NativeStepUnavailable

    monkeypatch.setattr(native, "kernel", lambda: None)
    monkeypatch.setattr(native, "kernel_problem", lambda: "no C compiler (test)")
    with pytest.warns(NativeStepUnavailable, match="int8 quantization runs in NumPy.*no C compiler") as caught:
        runner = Predictor(random_model("lstm"), quantize="int8")
    assert len(caught) == 1
    assert isinstance(runner.start(runner.zero_state(1), 1), NumpyStep)
    logits, _ = runner.feed(np.array([[3, 1, 4]]), runner.zero_state(1))
    assert logits.shape == (1, 3, 13) and np.isfinite(logits).all()


def test_the_library_is_built_once_per_source_and_compiler(tmp_path, monkeypatch):
    cc = native._compiler()
    if cc is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = native._build(cc)
    assert first.parent == tmp_path / "charrnn" / "native" and first.suffix == ".so"
    built_at = first.stat().st_mtime_ns
    assert native._build(cc) == first and first.stat().st_mtime_ns == built_at   # found, not rebuilt
    assert [p.name for p in first.parent.iterdir()] == [first.name]              # no temporary files left
    assert first == native._target(cc, None) == native._target(cc, "avx512-vnni")  # the same flags: one file
    assert len({first, native._target(cc, "avx2"), native._target(cc, "portable")}) == 3   # other paths: their own


def test_a_compiler_that_fails_is_reported_not_raised(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: fatal error: no input files' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(RuntimeError, match="could not build native_step.c: cc: fatal error"):
        native._build(str(broken))
    assert not any((tmp_path / "charrnn" / "native").iterdir())                   # nothing half-written left


@needs_kernel
def test_idle_worker_threads_sleep():
    """Workers spin briefly for the next step, then sleep: a model left alone costs no CPU."""
    import time

    model = random_model("lstm", hidden=128)
    compiled = NativeStep(model.config, model.get_parameters(), 1, threads=2)
    compiled.feed(np.zeros((1, 50), dtype=np.int64))
    time.sleep(0.25)  # past our workers' spinning (0.3 ms), and OpenBLAS's (~0.1 s after building the weights)
    cpu, wall = time.process_time(), time.perf_counter()
    time.sleep(0.5)
    assert time.process_time() - cpu < 0.05 * (time.perf_counter() - wall)
    compiled.feed(np.zeros((1, 5), dtype=np.int64))            # and they wake for the next step
    del compiled                                                 # joins them (weakref.finalize)


def test_default_threads_follow_omp_num_threads_and_model_size(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert native.default_threads(512) == 3
    assert native.default_threads(128) == 2                      # one per 64 hidden units at most
    assert native.default_threads(24) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert 1 <= native.default_threads(4096) <= 4


def test_numpy_tanh_approx_is_close_to_tanh():
    """The int8 steps' tanh (quantize.tanh_approx, native_step.c's polynomial in NumPy) against np.tanh."""
    from charrnn.infer.linear import tanh_approx

    x = np.concatenate([np.linspace(-12, 12, 20001), [0.0, -0.0, 1e-8, -1e-8, 40.0, -40.0]]).astype(np.float32)
    got = tanh_approx(x, np.empty_like(x))
    assert np.abs(got - np.tanh(x.astype(np.float64))).max() < 3e-7
    assert got[x == 0].tolist() == [0.0, 0.0] and np.all(np.abs(got) <= 1)


@pytest.mark.parametrize("n_in, seed", [(1200, 1), (1200, 2), (1500, 3), (2048, 4)])
def test_quant_linear_sums_are_exact_at_any_width(n_in, seed):
    """The integer sums the C step makes in int32 are exact in NumPy too, past float32's 2^24 (audit #20):
    a 2-layer model wider than 520 units feeds layer 1 more than 1,040 inputs. Saturated inputs aligned
    with column 0's weights make its sum exceed 2^24 with odd partial sums, which float32 cannot hold."""
    rng = np.random.default_rng(seed)
    w = np.sign(rng.standard_normal((n_in, 8))).astype(np.float32) * rng.choice([1.0, 0.9, 0.97], size=(n_in, 8))
    w = w.astype(np.float32)
    w[0] = np.sign(w[0])                                                        # each column's max |w| is 1
    x = (np.sign(w[:, :1].T) * rng.choice([1.0, 0.99, 0.95], size=(1, n_in))).astype(np.float32)
    out = QuantLinear(w, None)(x, np.empty((1, 8), np.float32))
    s = np.abs(x).max(axis=1) / np.float32(127)
    q_x = np.rint(x / s[:, None]).astype(np.int64)
    q_w, scales = quantize_columns(w)
    exact = q_x @ q_w.astype(np.int64)                                          # (1, 8) integer sums
    assert exact[0, 0] > 2 ** 24
    expected = exact.astype(np.float32) * (s[:, None] * scales)                 # C: (float) sum * (s * scale)
    np.testing.assert_array_equal(out, expected)
