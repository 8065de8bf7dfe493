"""Int8 generation (quantize.py) against float: a closed-form error bound, the float step, and every engine."""
import numpy as np
import pytest

pytest.importorskip("torch")

from charrnn.config import ModelConfig  # noqa: E402
from charrnn.errors import UserError  # noqa: E402
from charrnn.fastgen import FusedStep  # noqa: E402
from charrnn.models import build_model  # noqa: E402
from charrnn.quantize import FloatLinear, Int8Linear, check_quantize  # noqa: E402
from charrnn.runner import Runner  # noqa: E402


def worst_case_error(x: np.ndarray, w: np.ndarray, w_scales: np.ndarray) -> np.ndarray:
    """|x @ w - x^ @ w^| <= sum_i |w_ij| |dx_i| + |x^_i| |dw_ij| elementwise, (B, n_out).

    Weights round to the nearest multiple of their column's scale: |dw| <= s_j / 2. The input
    is quantized as a whole to 7 bits over a range that includes 0, [min(x, 0), max(x, 0)]; with
    the zero point rounded to an integer a value can land up to a whole step away: |dx| <= s_x.
    """
    s_x = (max(x.max(), 0) - min(x.min(), 0)) / 127
    return s_x * np.abs(w).sum(axis=0)[None] + ((np.abs(x) + s_x) @ np.ones_like(w)) * w_scales[None] / 2


@pytest.mark.parametrize("batch", [1, 3])
def test_int8_linear_is_within_the_quantization_bound(batch):
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, (96, 40)).astype(np.float32)                     # (n_in, n_out)
    b = rng.normal(0, 1, (1, 40)).astype(np.float32)
    x = rng.uniform(-1, 1, (batch, 96)).astype(np.float32)
    exact = x.astype(np.float64) @ w + b
    got = Int8Linear(w, b)(x, np.empty((batch, 40), np.float32))
    error = np.abs(got - exact)
    assert np.all(error <= worst_case_error(x, w, Int8Linear(w, b).scales) + 1e-5)
    assert error.max() > 1e-5                       # it really is quantized: float would be ~1e-7 off
    assert error.max() < 0.05 * np.abs(exact - b).max()  # and close: a few percent of the signal at worst


def test_int8_linear_reads_a_strided_input_like_a_copy():
    """FusedStep hands layers column slices of its state buffer: not contiguous when B > 1."""
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.1, (16, 24)).astype(np.float32)
    wide = rng.uniform(-1, 1, (3, 40)).astype(np.float32)
    layer = Int8Linear(w, None)
    strided = layer(wide[:, 8:24], np.empty((3, 24), np.float32))
    copied = layer(np.ascontiguousarray(wide[:, 8:24]), np.empty((3, 24), np.float32))
    np.testing.assert_array_equal(strided, copied)


def test_float_linear_is_matmul_plus_bias():
    rng = np.random.default_rng(2)
    w, b, x = rng.normal(size=(5, 7)), rng.normal(size=(1, 7)), rng.normal(size=(2, 5))
    np.testing.assert_allclose(FloatLinear(w, b)(x, np.empty((2, 7))), x @ w + b, rtol=1e-12)


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
    float_step, int8_step = FusedStep.from_model(model, B), FusedStep.from_model(model, B, quantize="int8")
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
    """Whatever the engine, quantize='int8' builds one FusedStep from the canonical weights."""
    chars = np.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    outputs = {}
    for impl in ("naive", "scratch", "library"):
        runner = Runner(random_model("lstm", impl), quantize="int8")
        outputs[impl], _ = runner.feed(chars, runner.zero_state(1))
    np.testing.assert_allclose(outputs["naive"], outputs["library"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(outputs["naive"], outputs["scratch"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("impl", ["naive", "library"])
def test_a_long_feed_equals_single_steps(impl):
    """Prime and evaluation feed windows; generation feeds one character at a time; same model either way."""
    runner = Runner(random_model("gru", impl), quantize="int8")
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
    runner = Runner(random_model("lstm"), quantize="int8")
    _, state_a = runner.feed(np.array([[1, 2, 3]]), runner.zero_state(1))
    first, _ = runner.feed(np.array([[4]]), state_a)
    _, _ = runner.feed(np.array([[8]]), runner.zero_state(1))     # move the step's state elsewhere
    again, _ = runner.feed(np.array([[4]]), state_a)
    np.testing.assert_array_equal(first, again)


def test_bad_quantize_choice_is_a_user_error():
    with pytest.raises(UserError, match="--quantize 'int4' is not one of int8"):
        check_quantize("int4")
