"""The naive engine against independent references: finite differences and torch.

Everything runs in float64 so a 1e-10 disagreement means a wrong formula,
not rounding. Sizes are tiny: correctness does not depend on them, speed does.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from charrnn.config import ModelConfig
from charrnn.errors import UserError
from charrnn.losses import cross_entropy
from charrnn.models.naive import NaiveModel
from charrnn.train import numpy_optim

CELLS = ["rnn", "gru", "lstm"]
V, E, H, B, T, L = 7, 5, 6, 3, 4, 2
ROOT = Path(__file__).resolve().parents[1]


def make(cell, dropout=0.0, layers=L, vocab=V, seed=0):
    cfg = ModelConfig(vocab_size=vocab, cell=cell, layers=layers, hidden=H, embed=E, dropout=dropout)
    model = NaiveModel(cfg, dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed + 1)
    inputs = rng.integers(0, vocab, (B, T))
    state = tuple(rng.standard_normal((layers, B, H)) * 0.5 for _ in model.initial_state(B))
    return model, inputs, state, rng


def relative_error(a, b):
    return np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-3))


def check_gradients(model, inputs, state, rng, dropout_seed=None):
    """Compare backward with central differences of a loss that weighs logits and final state."""
    def masks():
        return None if dropout_seed is None else np.random.default_rng(dropout_seed)

    logits, final, cache = model.forward_train(inputs, state, masks())
    w_logits = rng.standard_normal(logits.shape)
    w_final = tuple(rng.standard_normal(s.shape) for s in final)

    def loss():
        out, fin, _ = model.forward_train(inputs, state, masks())
        return np.sum(out * w_logits) + sum(np.sum(f * w) for f, w in zip(fin, w_final))

    grads, dstate = model.backward(cache, w_logits, w_final)
    targets = list(model.params.items()) + [(f"state{i}", s) for i, s in enumerate(state)]
    analytic = dict(grads, **{f"state{i}": d for i, d in enumerate(dstate)})
    assert set(analytic) == {name for name, _ in targets}
    step = 1e-5
    for name, array in targets:
        assert analytic[name].shape == array.shape, name
        flat = array.reshape(-1)                                # a view: edits reach the model
        picks = rng.choice(flat.size, size=min(flat.size, 6), replace=False)
        numeric = np.empty(len(picks))
        for j, i in enumerate(picks):
            saved = flat[i]
            flat[i] = saved + step
            plus = loss()
            flat[i] = saved - step
            minus = loss()
            flat[i] = saved
            numeric[j] = (plus - minus) / (2 * step)
        error = relative_error(analytic[name].reshape(-1)[picks], numeric)
        assert error < 1e-6, f"{name}: relative error {error:.2e}"


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_match_finite_differences(cell):
    model, inputs, state, rng = make(cell)
    check_gradients(model, inputs, state, rng)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_gradients_match_finite_differences(cell):
    model, inputs, state, rng = make(cell, dropout=0.4)
    check_gradients(model, inputs, state, rng, dropout_seed=123)


def test_dropout_is_inverted_and_only_in_training():
    """One layer, an invertible head: recover the dropped layer output and check its scaling."""
    p = 0.3
    model, inputs, state, _ = make("gru", dropout=p, layers=1, vocab=2 * H)
    w, bias = model.params["head.weight"], model.params["head.bias"]

    def layer_output(logits):
        return np.linalg.lstsq(w, (logits - bias).reshape(-1, w.shape[0]).T, rcond=None)[0]

    kept = layer_output(model.eval().forward(inputs, state)[0])
    dropped = layer_output(model.train().forward_train(inputs, state, np.random.default_rng(7))[0])
    zero = np.isclose(dropped, 0.0, rtol=0, atol=1e-9)
    scaled = np.isclose(dropped, kept / (1 - p), rtol=0, atol=1e-9)
    assert np.all(zero | scaled)
    assert 0.1 < zero.mean() < 0.5


def torch_reference(model, inputs, state, targets):
    """torch.nn with the same weights: logits, final state, mean cross-entropy and its gradients."""
    torch = pytest.importorskip("torch")
    cfg = model.config
    rnn_class = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cfg.cell]
    modules = {"embed": torch.nn.Embedding(cfg.vocab_size, cfg.embed).double(),
               "rnn": rnn_class(cfg.embed, cfg.hidden, cfg.layers, batch_first=True).double(),
               "head": torch.nn.Linear(cfg.hidden, cfg.vocab_size).double()}
    tensors = {}
    with torch.no_grad():
        for name, value in model.params.items():
            module, attr = name.split(".", 1)
            tensors[name] = getattr(modules[module], attr)
            tensors[name].copy_(torch.from_numpy(value))
    state_t = tuple(torch.tensor(s, requires_grad=True) for s in state)
    embedded = modules["embed"](torch.from_numpy(inputs))
    out, final = modules["rnn"](embedded, state_t if cfg.cell == "lstm" else state_t[0])
    logits = modules["head"](out)
    flat_targets = torch.from_numpy(targets).reshape(-1)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), flat_targets)
    loss.backward()
    final = final if cfg.cell == "lstm" else (final,)
    grads = {name: t.grad.numpy() for name, t in tensors.items()}
    return (logits.detach().numpy(), tuple(f.detach().numpy() for f in final), loss.item(), grads,
            tuple(s.grad.numpy() for s in state_t))


@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch(cell):
    model, inputs, state, rng = make(cell)
    targets = rng.integers(0, V, (B, T))
    logits_t, final_t, loss_t, grads_t, dstate_t = torch_reference(model, inputs, state, targets)
    logits, final, cache = model.forward_train(inputs, state, None)
    loss, dlogits = cross_entropy(logits, targets)
    grads, dstate = model.backward(cache, dlogits)
    np.testing.assert_allclose(logits, logits_t, rtol=0, atol=1e-10)
    for ours, theirs in zip(final, final_t):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10)
    assert abs(loss - loss_t) < 1e-10
    for name in model.params:
        np.testing.assert_allclose(grads[name], grads_t[name], rtol=1e-8, atol=1e-12, err_msg=name)
    for ours, theirs in zip(dstate, dstate_t):
        np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-12)


def test_cross_entropy_is_stable_and_matches_closed_form():
    logits = np.array([[[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]]])
    loss, dlogits = cross_entropy(logits, np.array([[1, 2]]))
    assert np.isclose(loss, (1000.0 + np.log(3)) / 2)
    np.testing.assert_allclose(dlogits, [[[0.5, -0.5, 0.0], [1 / 6, 1 / 6, -1 / 3]]], atol=1e-12)


def test_recycled_buffers_do_not_leak_between_windows():
    """Arrays are reused after backward: interleaved caches must give the same gradients."""
    model, inputs, state, rng = make("lstm", dropout=0.2)
    other = rng.integers(0, V, (B, T))
    weights = rng.standard_normal((B, T, V))
    first = model.backward(model.forward_train(inputs, state, np.random.default_rng(1))[2], weights)[0]
    cache_a = model.forward_train(inputs, state, np.random.default_rng(1))[2]
    cache_b = model.forward_train(other, state, np.random.default_rng(2))[2]
    model.backward(cache_b, weights)
    model.forward(other, state)
    again = model.backward(cache_a, weights)[0]
    for name in first:
        np.testing.assert_array_equal(again[name], first[name])
    with pytest.raises(RuntimeError):
        model.backward(cache_a, weights)


OPTIMIZERS = [("adagrad", {"lr": 0.1}), ("adam", {"lr": 0.01, "weight_decay": 0.1}),
              ("adamw", {"lr": 0.01, "weight_decay": 0.1})]


@pytest.mark.parametrize("name,kwargs", OPTIMIZERS)
def test_optimizers_match_torch_and_resume(name, kwargs):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    params = {"a": rng.standard_normal((4, 3)), "b": rng.standard_normal(5)}
    tensors = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    torch_class = {"adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    ours = numpy_optim.make_optimizer(name, params, **kwargs)
    theirs = torch_class(list(tensors.values()), **kwargs)
    resumed = None
    for step in range(6):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        if step == 3:                                           # resume from a copy of the state
            copies = {k: v.copy() for k, v in params.items()}
            resumed = numpy_optim.make_optimizer(name, copies, lr=1.0)
            resumed.load_state_dict(*ours.state_dict())
            ours.lr = resumed.lr = theirs.param_groups[0]["lr"] = kwargs["lr"] / 2
        for opt in (ours, resumed) if resumed else (ours,):
            opt.step({k: g.copy() for k, g in grads.items()})
        for k, t in tensors.items():
            t.grad = torch.from_numpy(grads[k].copy())
        theirs.step()
        for k in params:
            np.testing.assert_allclose(params[k], tensors[k].detach().numpy(), rtol=1e-6, atol=1e-9)
    for k in params:
        np.testing.assert_array_equal(resumed.params[k], params[k])


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(max_norm):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    grads = {"a": rng.standard_normal((4, 3)), "b": rng.standard_normal(5)}
    tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.from_numpy(g.copy())
    norm_t = torch.nn.utils.clip_grad_norm_(tensors, max_norm).item()
    norm = numpy_optim.clip_grad_norm(grads, max_norm)
    assert abs(norm - norm_t) < 1e-12
    for t, g in zip(tensors, grads.values()):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-12)


def test_naive_engine_does_not_import_torch():
    code = ("import sys, charrnn.models.naive, charrnn.losses, charrnn.train.numpy_optim; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_set_parameters_updates_the_arrays_an_optimizer_holds():
    model, _, _, _ = make("gru")
    held = model.params["head.bias"]
    new = {name: np.full(value.shape, 0.5, np.float32) for name, value in model.params.items()}
    model.set_parameters(new)
    assert model.params["head.bias"] is held and held.dtype == np.float64
    np.testing.assert_array_equal(held, 0.5)
    new["head.bias"] = new["head.bias"][:-1]
    with pytest.raises(UserError, match="head.bias"):
        model.set_parameters(new)
