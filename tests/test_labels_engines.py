"""Label conditioning (issue #29) in the config, the canonical parameters and the engines.

A labelled model adds each position's `label.weight` row to the first layer's input side
(models/base.py). The references are independent: the naive engine's hand-written label
gradient against finite differences, then every other engine against the naive engine with
the same weights and labels, and `fold_label` (a bias change) against the labelled forward.
An unlabelled run must come out exactly as before labels existed: its parameters, their
initial values and its config.json.
"""
import dataclasses
import json

import numpy as np
import pytest
from tolerances import EPS, TrajectoryBound, gradient_terms, rounding_bound, sum_the_biases, window_terms

from charrnn.checkpoint import FORMAT, load_run_config, save_run_config
from charrnn.config import MAX_LABELS, ModelConfig, to_dict
from charrnn.errors import UserError
from charrnn.infer.labels import check_label
from charrnn.losses import cross_entropy
from charrnn.models import build_model
from charrnn.models.base import fold_label, init_parameters, parameter_shapes

CELLS = ["rnn", "gru", "lstm"]
LABELS = ("dickinson", "whitman", "keats")
V, E, H, L, B, T, N = 7, 4, 5, 2, 3, 6, len(LABELS)


def config(cell, labels=LABELS, embed=E, dropout=0.0):
    return ModelConfig(vocab_size=V, cell=cell, layers=L, hidden=H, embed=embed, dropout=dropout, labels=labels)


def problem(cfg, seed=0):
    """Random weights (every label row visibly non-zero, unlike the init), inputs, targets, a non-zero state,
    and (B, T) labels that change inside a stream (a stream may cross from one document into the next)."""
    rng = np.random.default_rng(seed)
    params = {k: rng.uniform(-0.6, 0.6, v.shape) for k, v in init_parameters(cfg, seed).items()}
    inputs, targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    labels = rng.integers(0, N, (B, T))
    labels[0, : T // 2], labels[0, T // 2:] = 0, 2            # stream 0 crosses a document boundary
    state = tuple(rng.standard_normal((L, B, H)) * 0.5 for _ in range(2 if cfg.cell == "lstm" else 1))
    return params, inputs, targets, labels, state


def logits_tolerance(cfg, dtype, logits) -> float:
    """Two engines' logits for one window (tests/tolerances.py): each within the rounding bound of the exact
    value, so within twice it of each other. The label row is one more term in each first-layer sum: the
    chain of a config with one more input unit. float64: ~1e-13; float32: ~1e-4 of values of size ~1."""
    terms = window_terms(dataclasses.replace(cfg, embed=cfg.embed + 1), T)
    return 2 * rounding_bound(dtype, terms, max(1.0, float(np.abs(logits).max())))


# -- the config and the canonical parameters --------------------------------------------------------------

def test_an_unlabelled_config_json_is_byte_for_byte_what_it_was(tmp_path):
    """No "labels" key while there are none: the file an unlabelled run writes is unchanged (written out here
    literally, as charrnn wrote it before labels existed)."""
    save_run_config(tmp_path, ModelConfig(vocab_size=V, cell="gru", layers=L, hidden=H, embed=E), None)
    expected = ('{\n  "format": "%s",\n  "model": {\n    "vocab_size": 7,\n    "cell": "gru",\n    "layers": 2,\n'
                '    "hidden": 5,\n    "embed": 4,\n    "dropout": 0.0\n  },\n  "train": null\n}') % FORMAT
    assert (tmp_path / "config.json").read_text(encoding="utf-8") == expected
    assert load_run_config(tmp_path)[0].labels == ()


def test_labels_round_trip_through_config_json_as_a_list(tmp_path):
    save_run_config(tmp_path, config("lstm"), None)
    saved = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))["model"]
    assert saved["labels"] == list(LABELS)                    # a JSON list, names in index order
    loaded = load_run_config(tmp_path)[0]
    assert loaded.labels == LABELS and isinstance(loaded.labels, tuple) and loaded == config("lstm")
    assert "labels" not in to_dict(dataclasses.replace(loaded, labels=()))


@pytest.mark.parametrize("labels,message", [
    (("a", "b", "a"), "distinct; a appear"),
    (("a", ""), "non-empty"),
    (("a", 3), "non-empty strings, not 3"),
    ("ab", "list of label names"),
    (tuple(f"l{i}" for i in range(MAX_LABELS + 1)), f"more than the {MAX_LABELS}"),
])
def test_bad_labels_are_refused_in_one_line(labels, message):
    with pytest.raises(UserError, match=message) as caught:
        config("rnn", labels=labels)
    assert "\n" not in str(caught.value)
    assert len(config("rnn", labels=tuple(f"l{i}" for i in range(MAX_LABELS))).labels) == MAX_LABELS


@pytest.mark.parametrize("embed", [E, 0])
@pytest.mark.parametrize("cell", CELLS)
def test_label_weight_comes_last_at_zero_and_leaves_every_other_parameter_as_it_was(cell, embed):
    plain, labelled = config(cell, labels=(), embed=embed), config(cell, embed=embed)
    G = plain.gates
    assert "label.weight" not in parameter_shapes(plain)
    assert parameter_shapes(labelled) == {**parameter_shapes(plain), "label.weight": (N, G * H)}
    assert list(parameter_shapes(labelled))[-1] == "label.weight"
    before, after = init_parameters(plain, 11), init_parameters(labelled, 11)
    assert list(after) == [*before, "label.weight"]           # same order, label.weight appended
    for name, value in before.items():                         # same draws: the zeros take nothing from the RNG
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    assert after["label.weight"].dtype == np.float32 and not after["label.weight"].any()


def test_check_label_names_the_labels_in_one_line():
    """The one check of a label's name (infer/labels.py; the CLI's wording here)."""
    labels = config("rnn").labels
    assert [check_label(labels, name, "cli") for name in LABELS] == [0, 1, 2]
    for name, message in [(None, "this run was trained with labels dickinson, whitman, keats; give --label NAME"),
                          ("byron", "--label 'byron' is not a label of this run; it has dickinson, whitman, keats")]:
        with pytest.raises(UserError, match=message) as caught:
            check_label(labels, name, "cli")
        assert "\n" not in str(caught.value)
    assert check_label((), None, "cli") is None
    with pytest.raises(UserError, match="without labels"):
        check_label((), "keats", "cli")
    many = tuple(f"poet{i}" for i in range(100))
    with pytest.raises(UserError, match=r"poet11, \.\.\. \(100 labels\)") as caught:
        check_label(many, "byron", "cli")
    assert "poet12" not in str(caught.value)


def test_fold_label_moves_the_row_into_the_first_input_bias():
    cfg = config("gru")
    params = problem(cfg)[0]
    folded_cfg, folded = fold_label(cfg, params, 1)
    assert folded_cfg == config("gru", labels=()) and list(folded) == list(parameter_shapes(folded_cfg))
    np.testing.assert_array_equal(folded["rnn.bias_ih_l0"], params["rnn.bias_ih_l0"] + params["label.weight"][1])
    for name in folded:
        if name != "rnn.bias_ih_l0":
            assert folded[name] is params[name], name
    with pytest.raises(ValueError, match="outside 0..2"):
        fold_label(cfg, params, 3)


# -- the naive engine: the reference ----------------------------------------------------------------------

def naive_loss(cfg, params, inputs, targets, labels, state) -> float:
    model = build_model("naive", cfg, params=params, dtype="float64")
    return cross_entropy(model.forward(inputs, state, labels)[0], targets)[0]


@pytest.mark.parametrize("embed", [E, 0])
@pytest.mark.parametrize("cell", CELLS)
def test_naive_label_gradient_equals_finite_differences(cell, embed):
    """Central differences in float64 against the hand-written scatter-add. The difference's own error is
    estimated from the computation (Richardson): its truncation error is c * h^2, so D(h) - D(2h) = -3 c h^2,
    a third of which bounds D(h)'s; each loss is off by at most its window's rounding bound (tests/tolerances.py),
    which the difference divides by h. The gradient must be far larger than that, or the test could not see a
    wrong one."""
    cfg = config(cell, embed=embed)
    params, inputs, targets, labels, state = problem(cfg, seed=3)
    model = build_model("naive", cfg, params=params, dtype="float64")
    logits, _, cache = model.forward_train(inputs, state, labels=labels)
    loss, dlogits = cross_entropy(logits, targets)
    grads, _ = model.backward(cache, dlogits)
    assert list(grads) == list(parameter_shapes(cfg))
    h = 1e-4
    rounding = rounding_bound("float64", window_terms(dataclasses.replace(cfg, embed=embed + 1), T), max(1.0, loss)) / h

    def difference(index, step):
        out = []
        for sign in (1, -1):
            moved = {**params, "label.weight": params["label.weight"].copy()}
            moved["label.weight"][index] += sign * step
            out.append(naive_loss(cfg, moved, inputs, targets, labels, state))
        return (out[0] - out[1]) / (2 * step)

    for index in np.ndindex(N, cfg.gates * H):
        d_h, d_2h = difference(index, h), difference(index, 2 * h)
        tol = abs(d_h - d_2h) / 3 + rounding
        assert abs(grads["label.weight"][index] - d_h) <= tol, (index, grads["label.weight"][index], d_h, tol)
    scale = float(np.abs(grads["label.weight"]).max())
    assert scale > 1e3 * rounding
    # a label never used in the window gets no gradient; every used one does
    unused = config(cell, embed=embed, labels=LABELS + ("byron",))
    params4 = {**params, "label.weight": np.vstack([params["label.weight"], np.ones((1, cfg.gates * H))])}
    model4 = build_model("naive", unused, params=params4, dtype="float64")
    logits4, _, cache4 = model4.forward_train(inputs, state, labels=labels)
    grads4, _ = model4.backward(cache4, cross_entropy(logits4, targets)[1])
    assert not grads4["label.weight"][3].any()
    np.testing.assert_array_equal(grads4["label.weight"][:3], grads["label.weight"])


# -- every engine against the naive engine ----------------------------------------------------------------

ENGINES = ["naive", "scratch", "library", "tf", "keras"]


def installed(impl) -> bool:
    """Whether the engine's framework is here (torch for scratch and library, TensorFlow for tf and keras)."""
    import importlib.util

    module = {"naive": "numpy", "scratch": "torch", "library": "torch"}.get(impl, "tensorflow")
    return importlib.util.find_spec(module) is not None


def engine(impl, cfg, params=None, dtype="float64", seed=0):
    """An engine in eval mode; skipped where its framework is not installed."""
    if impl in ("scratch", "library"):
        pytest.importorskip("torch")
    elif impl in ("tf", "keras"):
        pytest.importorskip("tensorflow")
    return build_model(impl, cfg, params=params, dtype=dtype, seed=seed).eval()


def run(model, inputs, state, labels=None):
    """One window's logits (B, T, V) as float64 NumPy, whatever array type the engine takes."""
    if model.backend == "torch":
        import torch

        dtype = model.head.weight.dtype
        with torch.no_grad():
            logits, _ = model(torch.as_tensor(inputs), tuple(torch.as_tensor(s, dtype=dtype) for s in state),
                              labels=None if labels is None else torch.as_tensor(labels))
        return logits.double().numpy()
    logits, _ = model.forward(inputs, tuple(np.asarray(s, model.dtype) for s in state), labels)
    return np.asarray(logits, np.float64)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("impl", ENGINES)
def test_every_engine_gives_the_naive_logits_and_a_label_changes_them(impl, cell, dtype="float64"):
    cfg = config(cell)
    params, inputs, _, labels, state = problem(cfg, seed=1)
    reference = run(engine("naive", cfg, params), inputs, state, labels)
    tol = logits_tolerance(cfg, dtype, reference)
    model = engine(impl, cfg, params, dtype)
    logits = run(model, inputs, state, labels)
    np.testing.assert_allclose(logits, reference, rtol=0, atol=tol)
    # another label from step 3 of stream 1 on: the same logits before it, other logits from it on
    other = labels.copy()
    other[1, 3:] = (labels[1, 3:] + 1) % N
    changed = run(model, inputs, state, other)
    np.testing.assert_array_equal(changed[[0, 2]], logits[[0, 2]])
    np.testing.assert_array_equal(changed[1, :3], logits[1, :3])
    assert np.abs(changed[1, 3:] - logits[1, 3:]).max(axis=-1).min() > 100 * tol   # at every step from 3 on


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("impl", ENGINES)
def test_a_fixed_label_folded_away_gives_the_labelled_logits(impl, cell, dtype="float64"):
    """fold_label's unlabelled model, run by the same engine with no labels, is the labelled model with that
    label at every position: the engine adds the same row on the same side of the same layer."""
    cfg = config(cell)
    params, inputs, _, _, state = problem(cfg, seed=2)
    model = engine(impl, cfg, params, dtype)
    for index in range(N):
        labelled = run(model, inputs, state, np.full(B, index))
        folded_cfg, folded = fold_label(cfg, params, index)
        plain = run(engine(impl, folded_cfg, folded, dtype), inputs, state)
        np.testing.assert_allclose(plain, labelled, rtol=0, atol=logits_tolerance(cfg, dtype, labelled),
                                   err_msg=f"label {index}")
    assert np.abs(run(model, inputs, state, np.zeros(B, int)) - labelled).max() > 0.01


@pytest.mark.parametrize("impl", ENGINES)
def test_one_label_per_stream_is_that_label_at_every_step(impl):
    cfg = config("lstm")
    params, inputs, _, _, state = problem(cfg, seed=4)
    model = engine(impl, cfg, params)
    per_stream = np.array([2, 0, 1])
    np.testing.assert_array_equal(run(model, inputs, state, per_stream),
                                  run(model, inputs, state, np.repeat(per_stream[:, None], T, axis=1)))


@pytest.mark.parametrize("impl", ENGINES)
def test_forward_refuses_labels_that_do_not_fit(impl):
    cfg = config("gru")
    params, inputs, _, labels, state = problem(cfg)
    model = engine(impl, cfg, params)
    for bad, message in [(None, "forward needs labels"), (labels[:, :2], "labels have shape \\[3, 2\\]"),
                         (labels[:2], "labels have shape \\[2, 6\\]")]:
        with pytest.raises(ValueError, match=message):
            run(model, inputs, state, bad)
    plain_cfg, plain_params = fold_label(cfg, params, 0)
    with pytest.raises(ValueError, match="has no labels"):
        run(engine(impl, plain_cfg, plain_params), inputs, state, labels)


@pytest.mark.parametrize("impl", ENGINES)
def test_every_engine_starts_from_init_parameters_under_canonical_names(impl):
    """A labelled engine from a seed holds init_parameters (label.weight last, zeros), and gives back under the
    canonical names and shapes exactly what it was given; an unlabelled one holds what it held before."""
    for cfg in (config("gru"), config("gru", labels=())):
        expected = init_parameters(cfg, 7)
        params = engine(impl, cfg, dtype="float32", seed=7).get_parameters()
        assert list(params) == list(expected), cfg.labels
        for name, value in params.items():
            np.testing.assert_array_equal(value, expected[name], err_msg=name)
    cfg = config("gru")
    given = {k: v.astype(np.float32) for k, v in problem(cfg, seed=5)[0].items()}
    back = engine(impl, cfg, given, dtype="float32").get_parameters()
    assert list(back) == list(given)
    for name, value in given.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


# -- gradients and training steps -------------------------------------------------------------------------

def gradient_tolerance(cfg, grad) -> float:
    """Two float64 engines' gradients (tests/tolerances.py), relative to the largest, the label one more term in
    each first-layer sum: ~1e-13 of it."""
    return 2 * gradient_terms(dataclasses.replace(cfg, embed=cfg.embed + 1), B, T) * EPS["float64"] * float(
        np.abs(grad).max())


def engine_gradients(impl, cfg, params, inputs, targets, labels, state):
    """Every canonical parameter's gradient of the mean loss, by the engine's own autodiff, in float64."""
    model = engine(impl, cfg, params).train()
    if model.backend == "torch":
        import torch
        import torch.nn.functional as F

        logits, _ = model(torch.as_tensor(inputs), tuple(torch.as_tensor(s) for s in state),
                          labels=torch.as_tensor(labels))
        F.cross_entropy(logits.reshape(-1, V), torch.as_tensor(targets).reshape(-1)).backward()
        return model.own_to_canonical({name: p.grad.numpy() for name, p in model.named_parameters()})
    import tensorflow as tf

    from charrnn.models.keras_engine import keras_gradients_to_canonical
    from charrnn.train.tf_step import mean_cross_entropy

    with tf.GradientTape() as tape:
        logits, _ = model.call(tf.constant(inputs, tf.int32), tuple(tf.constant(s) for s in state), training=True,
                               labels=tf.constant(labels, tf.int32))
        loss = mean_cross_entropy(tf, logits, tf.constant(targets, tf.int32))
    named = model.training_variables()
    grads = {entry[0]: np.asarray(tf.convert_to_tensor(g)) for entry, g in
             zip(named, tape.gradient(loss, [entry[1] for entry in named]))}
    return keras_gradients_to_canonical(cfg, grads) if impl == "keras" else grads


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("impl", [e for e in ENGINES if e != "naive"])
def test_every_engine_gives_the_naive_gradients_label_weight_included(impl, cell):
    cfg = config(cell, embed=0 if cell == "rnn" else E)        # one-hot characters beside the one-hot label too
    params, inputs, targets, labels, state = problem(cfg, seed=7)
    model = build_model("naive", cfg, params=params, dtype="float64")
    logits, _, cache = model.forward_train(inputs, state, labels=labels)
    expected, _ = model.backward(cache, cross_entropy(logits, targets)[1])
    grads = engine_gradients(impl, cfg, params, inputs, targets, labels, state)
    assert list(grads) == list(expected)                         # canonical names, canonical order
    for name, grad in expected.items():
        assert np.abs(grad).max() > 1e-6, f"{name}: the test would not see a wrong gradient"
        np.testing.assert_allclose(grads[name], grad, rtol=0, atol=gradient_tolerance(cfg, grad), err_msg=name)


def learner(impl, cfg, params, optimizer, lr, clip, dtype="float32"):
    model = engine(impl, cfg, params, dtype=dtype).train()
    if impl == "naive":
        from charrnn.train.learners import NumpyLearner

        return NumpyLearner(model, optimizer, lr, 0.0, clip, seed=0)
    if model.backend == "torch":
        import torch

        from charrnn.train.learners import TorchLearner

        return TorchLearner(model, optimizer, lr, 0.0, clip, torch.device("cpu"))
    from charrnn.train.tf_step import TFLearner

    return TFLearner(model, optimizer, lr, 0.0, clip)


def labelled_windows(count, seed):
    """(x, y, labels) windows whose labels change inside streams, as a stream crossing documents has them."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T)), np.sort(rng.integers(0, N, (B, T)), axis=1))
            for _ in range(count)]


@pytest.mark.parametrize("cell,optimizer", [("gru", "adam"), pytest.param("lstm", "adagrad", marks=pytest.mark.slow),
                                            pytest.param("rnn", "adamw", marks=pytest.mark.slow)])
def test_a_labelled_training_step_is_the_same_in_every_learner(cell, optimizer):
    """From the real start (label.weight zeros), three labelled windows through every engine's learner in float32
    and the scratch learner in float64 (the exact run): loss, gradient, clipping (active) and update. Each
    learner's weights, label.weight included, stay within the derived float32 bound of the exact run's
    (tests/tolerances.py, TrajectoryBound; as tests/test_tf_engines.py checks the unlabelled step)."""
    pytest.importorskip("torch")
    cfg, lr = config(cell), 0.02
    start = init_parameters(cfg, 3)
    exact = learner("scratch", cfg, start, optimizer, lr, 0.5, dtype="float64")
    learners = {impl: learner(impl, cfg, start, optimizer, lr, 0.5) for impl in ENGINES if installed(impl)}
    bound = TrajectoryBound(exact, B * T, window_terms(dataclasses.replace(cfg, embed=cfg.embed + 1), T))
    states = {impl: s.zero_state(B) for impl, s in learners.items()}
    exact_state = exact.zero_state(B)
    for x, y, labels in labelled_windows(3, seed=8):
        exact_loss, exact_state = exact.train_step(x, y, exact_state, labels)
        loss_tol = bound.step(exact_loss)
        for impl, s in learners.items():
            loss, states[impl] = s.train_step(x, y, states[impl], labels)
            assert abs(loss - exact_loss) <= loss_tol, (impl, loss, exact_loss, loss_tol)
    exact_weights, limit = sum_the_biases(bound.exact_weights(), cfg), sum_the_biases(bound.bound, cfg)
    for impl, s in learners.items():
        params = sum_the_biases({k: np.asarray(v, np.float64) for k, v in s.get_parameters().items()}, cfg)
        assert list(params) == list(exact_weights), impl
        for name, value in exact_weights.items():
            np.testing.assert_array_less(np.abs(params[name] - value), limit[name] + 1e-300, err_msg=f"{impl} {name}")
    # label.weight learned from zeros (about a step per window), and most of its entries' bound would see an
    # update wrong by 1% of what it moved
    moved = float(np.median(np.abs(exact_weights["label.weight"])))
    assert moved > 0.1 * lr and float(np.median(limit["label.weight"])) < 0.01 * moved


def test_scratch_and_library_save_one_optimizer_state_and_resume_each_other():
    """The library engine keeps label.weight inside its first layer's weight, but its optimizer state leaves the
    learner under the canonical parameters: the same arrays as the scratch engine's (to the gradients' float64
    rounding), loaded by either exactly, and a resumed library run continues exactly as an uninterrupted one."""
    pytest.importorskip("torch")
    cfg = config("lstm")
    start = problem(cfg, seed=9)[0]
    windows = labelled_windows(2, seed=10)
    runs = {impl: learner(impl, cfg, start, "adam", 0.02, 0.5, dtype="float64") for impl in ("scratch", "library")}
    saved = {}
    for impl, s in runs.items():
        x, y, labels = windows[0]
        s.train_step(x, y, s.zero_state(B), labels)
        saved[impl] = s.optimizer_state()
    (scratch, scratch_meta), (library, library_meta) = saved["scratch"], saved["library"]
    assert library_meta == scratch_meta and list(library) == list(scratch)
    label_slot = f"{len(parameter_shapes(cfg)) - 1}/exp_avg"                     # label.weight: the last index
    assert library[label_slot].shape == (N, cfg.gates * H) and np.abs(library[label_slot]).max() > 1e-4
    for key, value in scratch.items():
        tol = 4 * gradient_terms(dataclasses.replace(cfg, embed=E + 1), B, T) * EPS["float64"] * np.abs(value).max()
        np.testing.assert_allclose(library[key], value, rtol=0, atol=tol, err_msg=key)
    for impl, (arrays, meta) in [("library", saved["scratch"]), ("scratch", saved["library"])]:
        runs[impl].load_optimizer_state(arrays, meta)
        again = runs[impl].optimizer_state()[0]
        assert sorted(again) == sorted(arrays)                       # (torch keeps the order it was given)
        for key, value in arrays.items():
            np.testing.assert_array_equal(again[key], value, err_msg=f"{impl} {key}")

    uninterrupted = learner("library", cfg, start, "adam", 0.02, 0.5, dtype="float64")
    state = uninterrupted.zero_state(B)
    for x, y, labels in windows:
        _, state = uninterrupted.train_step(x, y, state, labels)
    first = learner("library", cfg, start, "adam", 0.02, 0.5, dtype="float64")
    x, y, labels = windows[0]
    _, carried = first.train_step(x, y, first.zero_state(B), labels)
    resumed = learner("library", cfg, float64_weights(first), "adam", 0.02, 0.5, dtype="float64")
    resumed.load_optimizer_state(*first.optimizer_state())
    x, y, labels = windows[1]
    resumed.train_step(x, y, carried, labels)
    expected = float64_weights(uninterrupted)
    assert np.abs(expected["label.weight"] - float64_weights(first)["label.weight"]).max() > 1e-3  # a real step
    for name, value in float64_weights(resumed).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)


def float64_weights(torch_learner) -> dict:
    """A torch learner's canonical weights unrounded (get_parameters gives float32, as checkpoints hold them)."""
    model = torch_learner.model
    return model.own_to_canonical({name: p.detach().numpy().copy() for name, p in model.named_parameters()})


def test_tensorflow_functions_take_labels_only_when_the_model_has_them():
    """A labelled model's compiled forward and training step take labels (B, T) int32 after x (and y); an
    unlabelled model's take what they took before labels existed, so its trace is unchanged."""
    tf = pytest.importorskip("tensorflow")
    from charrnn.train.tf_step import TFLearner

    window, states = tf.TensorSpec([None, None], tf.int32), 2     # an lstm: (h, c)
    for cfg, extra in [(config("lstm", labels=()), []), (config("lstm"), [window])]:
        for impl in ("tf", "keras"):
            model = engine(impl, cfg, dtype="float32")
            forward = model._forward[False].input_signature
            assert list(forward[:1 + len(extra)]) == [window, *extra] and len(forward) == 1 + len(extra) + states
            step = TFLearner(model, "adam", 1e-3, 0.0, 1.0)._train.input_signature
            assert list(step[:2 + len(extra)]) == [window, window, *extra] and len(step) == 2 + len(extra) + states
