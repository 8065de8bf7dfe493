"""The fused inference step against the naive engine's forward, its independent reference."""
import numpy as np
import pytest

from charrnn.config import ModelConfig
from charrnn.devices import blas_threads
from charrnn.infer.predictor import Predictor
from charrnn.infer.steps import NumpyStep
from charrnn.models.base import state_size
from charrnn.models.naive import NaiveModel

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}


def random_model(cell, dtype, layers=2, hidden=8, vocab=11, embed=5, seed=3):
    """A naive model with random weights, biases included (so bias folding is exercised)."""
    cfg = ModelConfig(vocab_size=vocab, cell=cell, layers=layers, hidden=hidden, embed=embed)
    model = NaiveModel(cfg, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    model.set_parameters({k: rng.uniform(-0.8, 0.8, v.shape) for k, v in model.params.items()})
    return model.eval()


def random_state(model, batch, rng):
    shape = (model.config.layers, batch, model.config.hidden)
    return tuple(rng.uniform(-1, 1, shape).astype(model.dtype) for _ in range(state_size(model.config.cell)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_fused_step_matches_naive_forward(cell, dtype):
    model = random_model(cell, dtype)
    rng = np.random.default_rng(0)
    B, T = 3, 12
    chars = rng.integers(0, model.config.vocab_size, (B, T))
    state0 = random_state(model, B, rng)
    expected, expected_state = model.forward(chars, state0)          # (B, T, V)

    fused = NumpyStep.from_model(model, B)
    fused.set_state(state0)
    got = np.stack([fused.step(chars[:, t]).copy() for t in range(T)], axis=1)  # (B, T, V)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE[dtype])
    for a, b in zip(fused.get_state(), expected_state):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=TOLERANCE[dtype])


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_fused_step_with_one_hot_inputs(cell):
    """--embed 0: the first layer's table is W_ih0^T itself (plus biases)."""
    model = random_model(cell, np.float64, embed=0)
    chars = np.array([[1, 4, 2, 9, 10, 0], [3, 3, 7, 5, 1, 8]])
    state0 = random_state(model, 2, np.random.default_rng(1))
    expected, expected_state = model.forward(chars, state0)
    fused = NumpyStep.from_model(model, 2)
    fused.set_state(state0)
    got = np.stack([fused.step(chars[:, t]).copy() for t in range(chars.shape[1])], axis=1)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    for a, b in zip(fused.get_state(), expected_state):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("layers", [1, 3])
def test_fused_step_any_depth(layers):
    model = random_model("lstm", np.float64, layers=layers)
    chars = np.array([[1, 4, 2, 9]])
    expected, _ = model.forward(chars, model.initial_state(1))
    fused = NumpyStep.from_model(model, 1)
    fused.set_state(model.initial_state(1))
    got = np.stack([fused.step(chars[:, t]).copy() for t in range(chars.shape[1])], axis=1)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("batch", [1, 2])  # at batch 1 the (L, 1, H) view of the buffer is already contiguous
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_get_state_is_a_copy(cell, batch):
    model = random_model(cell, np.float64)
    fused = NumpyStep.from_model(model, batch)
    fused.set_state(model.initial_state(batch))
    fused.step(np.arange(1, batch + 1))
    before = fused.get_state()
    kept = [s.copy() for s in before]
    fused.step(np.arange(3, batch + 3))
    for got, expected in zip(before, kept):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_runner_same_logits_step_by_step_or_whole(cell):
    model = random_model(cell, np.float32)
    rng = np.random.default_rng(1)
    chars = rng.integers(0, model.config.vocab_size, (2, 15))
    whole, whole_state = Predictor(model).feed(chars, model.initial_state(2))

    runner = Predictor(model)
    state = runner.zero_state(2)
    steps = []
    for t in range(chars.shape[1]):
        logits, state = runner.feed(chars[:, t:t + 1], state)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), whole, rtol=0, atol=1e-5)
    for a, b in zip(state, whole_state):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_runner_paths_interleave():
    """A prime fed whole, then single steps, then a window again: one continuous text."""
    model = random_model("lstm", np.float64)
    chars = np.array([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3]])
    expected, _ = model.forward(chars, model.initial_state(1))
    runner = Predictor(model)
    a, state = runner.feed(chars[:, :4], runner.zero_state(1))
    b, state = runner.feed(chars[:, 4:5], state)
    c, state = runner.feed(chars[:, 5:6], state)
    d, state = runner.feed(chars[:, 6:], state)
    np.testing.assert_allclose(np.concatenate([a, b, c, d], axis=1), expected, rtol=0, atol=1e-10)


def test_blas_threads_restores_the_count():
    from charrnn.devices import blas_thread_count

    before = blas_thread_count()
    if before is None:
        pytest.skip("threadpoolctl finds no BLAS in this process")
    with blas_threads(1) as changed:
        assert changed and blas_thread_count() == 1
    assert blas_thread_count() == before
