"""The three engines against each other: same weights -> same logits, state, gradients, checkpoints.

The references are independent: the naive engine's hand-written backward against torch
autograd through the scratch engine's own cell equations and through torch.nn's cells.
float64 makes a 1e-10 disagreement a wrong formula, not rounding.
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from tolerances import EPS, gradient_terms, rounding_bound, window_terms  # noqa: E402

import charrnn  # noqa: E402
from charrnn.cli import main  # noqa: E402
from charrnn.config import ModelConfig  # noqa: E402
from charrnn.losses import cross_entropy  # noqa: E402
from charrnn.models import build_model  # noqa: E402
from charrnn.models.base import init_parameters  # noqa: E402

CELLS = ["rnn", "gru", "lstm"]
ENGINES = ["naive", "scratch", "library"]
TORCH_ENGINES = ["scratch", "library"]
V, E, H, L, B, T = 11, 5, 7, 2, 3, 6


def config(cell, dropout=0.0):
    return ModelConfig(vocab_size=V, cell=cell, layers=L, hidden=H, embed=E, dropout=dropout)


def problem(cell, seed=0):
    """Random weights (not the init: biases and embedding all visibly non-zero), inputs, targets, state."""
    rng = np.random.default_rng(seed)
    params = {k: rng.uniform(-0.6, 0.6, v.shape) for k, v in init_parameters(config(cell), seed).items()}
    inputs = rng.integers(0, V, (B, T))
    targets = rng.integers(0, V, (B, T))
    n_state = 2 if cell == "lstm" else 1
    state = tuple(rng.standard_normal((L, B, H)) * 0.5 for _ in range(n_state))
    return params, inputs, targets, state


def run_engine(impl, cell, params, inputs, state, dtype):
    """Forward one window through an engine (eval mode): logits (B, T, V), final state, as float64 NumPy."""
    model = build_model(impl, config(cell), params=params, dtype=dtype)
    if impl == "naive":
        logits, final = model.eval().forward(inputs, tuple(s.astype(dtype) for s in state))
        return logits.astype(np.float64), tuple(f.astype(np.float64) for f in final)
    model.eval()
    with torch.no_grad():
        state_t = tuple(torch.tensor(s, dtype=getattr(torch, dtype)) for s in state)
        logits, final = model(torch.from_numpy(inputs), state_t)
    return logits.double().numpy(), tuple(f.double().numpy() for f in final)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell", CELLS)
def test_engines_give_the_same_logits_and_state(cell, dtype):
    params, inputs, _, state = problem(cell)
    naive_logits, naive_final = run_engine("naive", cell, params, inputs, state, dtype)
    assert np.abs(naive_logits).max() > 0.1 and len(naive_final) == len(state)
    # each engine rounds the window's chain of sums its own way: each is within the bound of the exact value, so
    # two are within twice it (tests/tolerances.py); float64: ~1e-13, float32: ~1e-4 of values of size ~1
    scale = max(1.0, float(np.abs(naive_logits).max()), max(float(np.abs(f).max()) for f in naive_final))
    tol = 2 * rounding_bound(dtype, window_terms(config(cell), T), scale)
    for impl in TORCH_ENGINES:
        logits, final = run_engine(impl, cell, params, inputs, state, dtype)
        np.testing.assert_allclose(logits, naive_logits, rtol=0, atol=tol, err_msg=f"{impl} logits")
        for ours, theirs in zip(final, naive_final):
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=tol, err_msg=f"{impl} final state")
    # the non-zero initial state matters: from zeros every engine gives other logits
    zeros = tuple(np.zeros_like(s) for s in state)
    assert np.abs(run_engine("naive", cell, params, inputs, zeros, dtype)[0] - naive_logits).max() > 100 * tol


def float64_loss_tolerance(cell, logits, cfg=None) -> float:
    """Two float64 engines' mean losses: each log-softmax moves by at most twice its logits' rounding bound
    (tests/tolerances.py), and each engine rounds its own way: twice again. ~1e-13."""
    return 4 * rounding_bound("float64", window_terms(cfg or config(cell), T), max(1.0, float(np.abs(logits).max())))


def float64_gradient_tolerance(cell, grad, cfg=None) -> float:
    """Two float64 engines' gradients, relative to the largest (tests/tolerances.py): ~1e-13 of it."""
    return 2 * gradient_terms(cfg or config(cell), B, T) * EPS["float64"] * float(np.abs(grad).max())


def torch_gradients(impl, cell, params, inputs, targets, state):
    """Mean cross-entropy by F.cross_entropy and autograd: loss, {name: grad}, (dstate, ...)."""
    model = build_model(impl, config(cell), params=params, dtype="float64").train()
    state_t = tuple(torch.tensor(s, requires_grad=True) for s in state)
    logits, _ = model(torch.from_numpy(inputs), state_t)
    loss = F.cross_entropy(logits.reshape(-1, V), torch.from_numpy(targets).reshape(-1))
    loss.backward()
    grads = {name: p.grad.numpy() for name, p in model.named_parameters()}
    return loss.item(), grads, tuple(s.grad.numpy() for s in state_t)


@pytest.mark.parametrize("impl", TORCH_ENGINES)
@pytest.mark.parametrize("cell", CELLS)
def test_naive_gradients_equal_torch_autograd(cell, impl):
    params, inputs, targets, state = problem(cell, seed=1)
    model = build_model("naive", config(cell), params=params, dtype="float64")
    logits, _, cache = model.forward_train(inputs, state)
    loss, dlogits = cross_entropy(logits, targets)
    grads, dstate = model.backward(cache, dlogits)
    loss_t, grads_t, dstate_t = torch_gradients(impl, cell, params, inputs, targets, state)
    assert abs(loss - loss_t) < float64_loss_tolerance(cell, logits)
    assert list(grads) == list(grads_t)                         # every canonical name, in the same order
    for name, grad in grads.items():
        assert np.abs(grad).max() > 1e-6, f"{name}: the test would not see a wrong gradient"
        np.testing.assert_allclose(grad, grads_t[name], rtol=0, atol=float64_gradient_tolerance(cell, grad),
                                   err_msg=name)
    assert len(dstate) == len(dstate_t)
    for ours, theirs in zip(dstate, dstate_t):
        assert np.abs(ours).max() > 1e-6
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=float64_gradient_tolerance(cell, ours),
                                   err_msg="initial state")


@pytest.mark.parametrize("cell", CELLS)
def test_same_seed_gives_the_same_initial_weights_in_every_engine(cell):
    cfg = ModelConfig(vocab_size=V, cell=cell, layers=L, hidden=H, embed=E)
    weights = {impl: build_model(impl, cfg, seed=7).get_parameters() for impl in ENGINES}
    expected = init_parameters(cfg, 7)
    for impl, params in weights.items():
        assert list(params) == list(expected), impl
        for name, value in params.items():
            np.testing.assert_array_equal(value, expected[name], err_msg=f"{impl} {name}")
    other = build_model("library", cfg, seed=8).get_parameters()
    assert all(not np.array_equal(other[k], expected[k]) for k in expected)


@pytest.mark.parametrize("cell", CELLS)
def test_one_hot_inputs_give_the_same_logits_and_gradients_in_every_engine(cell):
    """--embed 0: no embedding table, one-hot characters into rnn.weight_ih_l0 (G*H, V), as the seed's
    sections III-IV feed them. Same function in every engine, and the same gradients as torch autograd."""
    cfg = ModelConfig(vocab_size=V, cell=cell, layers=L, hidden=H, embed=0)
    rng = np.random.default_rng(2)
    params = {k: rng.uniform(-0.6, 0.6, v.shape) for k, v in init_parameters(cfg, 2).items()}
    assert "embed.weight" not in params and params["rnn.weight_ih_l0"].shape == (cfg.gates * H, V)
    inputs, targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    state = tuple(rng.standard_normal((L, B, H)) * 0.5 for _ in range(2 if cell == "lstm" else 1))
    naive = build_model("naive", cfg, params=params, dtype="float64")
    logits, _, cache = naive.forward_train(inputs, state)
    loss, dlogits = cross_entropy(logits, targets)
    grads, _ = naive.backward(cache, dlogits)
    assert list(grads) == list(params)
    for impl in TORCH_ENGINES:
        model = build_model(impl, cfg, params=params, dtype="float64").train()
        assert [name for name, _ in model.named_parameters()] == list(params)
        state_t = tuple(torch.tensor(s) for s in state)
        logits_t, _ = model(torch.from_numpy(inputs), state_t)
        logits_tol = 2 * rounding_bound("float64", window_terms(cfg, T), max(1.0, float(np.abs(logits).max())))
        np.testing.assert_allclose(logits_t.detach().numpy(), logits, rtol=0, atol=logits_tol, err_msg=impl)
        F.cross_entropy(logits_t.reshape(-1, V), torch.from_numpy(targets).reshape(-1)).backward()
        for name, p in model.named_parameters():
            assert np.abs(grads[name]).max() > 1e-6
            tol = float64_gradient_tolerance(cell, grads[name], cfg)
            np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=0, atol=tol, err_msg=f"{impl} {name}")


# -- checkpoints: written by any engine, read by every engine ---------------------------------------

SMALL = ["--cell", "gru", "--layers", 2, "--hidden", 12, "--embed", 6, "--batch-size", 4, "--seq-len", 16,
         "--max-iters", 2, "--eval-every", 1, "--log-every", 1, "--seed", 3]


def eval_loss(run, impl, text, capsys):
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--impl", impl, "--data", str(text), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
@pytest.mark.parametrize("writer", ENGINES)
def test_checkpoint_from_any_engine_loads_and_evaluates_in_every_engine(writer, tiny_text, run_cli, tmp_path,
                                                                        capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run = tmp_path / "run"
    trained = run_cli(["train", "--impl", writer, "--data", tiny_text, "--out", run, *SMALL],
                      env={"OMP_NUM_THREADS": 1})       # tiny model: threads only contend on a busy machine
    assert trained.returncode == 0, trained.stderr
    from safetensors.numpy import load_file

    saved = load_file(str(run / "model.safetensors"))
    assert max(np.abs(saved[k] - init_parameters(charrnn.load(run).config, 3)[k]).max() for k in saved) > 1e-4
    text = tiny_text.read_text(encoding="utf-8")[:800]         # the scratch engine steps in Python: keep it short
    heldout = tmp_path / "heldout.txt"
    heldout.write_text(text, encoding="utf-8")
    losses = {}
    for reader in ENGINES:
        model = charrnn.load(run, impl=reader)
        params = model.model.get_parameters()
        for name, value in saved.items():
            np.testing.assert_array_equal(np.asarray(params[name], np.float32), value, err_msg=f"{reader} {name}")
        result = eval_loss(run, reader, heldout, capsys)
        assert result["characters"] == len(text) - 1
        assert abs(model.evaluate(text).loss - result["loss"]) < 1e-6
        losses[reader] = result["loss"]
    assert 1.0 < losses["library"] < 5.0                         # a real loss, not a constant
    # float32 vs float64 over the whole text, its state carried through 2,048-step chunks: a first-principles
    # bound over such a chain is vacuous (every step adds its rounding, and the cells' contraction is not known
    # beforehand). Measured ~1e-8; 1e-5 leaves 1000x for another CPU's order of sums, while a wrong formula
    # moves a loss of ~2 nats by far more.
    assert max(losses.values()) - min(losses.values()) < 1e-5, losses
