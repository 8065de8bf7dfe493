"""The TensorFlow engines (tf: the seed's section IV; keras: its section V) against the others.

Same weights and batch -> the same logits, final state and gradients as the naive engine (its
hand-written backward is the reference); the Keras <-> canonical conversion is exact; the
optimizers are torch.optim's; a TF training step is a torch training step; resume is exact.
The module skips where TensorFlow is not installed.
"""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tolerances import (  # noqa: E402
    EPS,
    TrajectoryBound,
    gradient_terms,
    rounding_bound,
    sum_the_biases,
    window_terms,
)

from charrnn.config import ModelConfig  # noqa: E402
from charrnn.losses import cross_entropy  # noqa: E402
from charrnn.models import build_model  # noqa: E402
from charrnn.models.base import init_parameters, parameter_shapes  # noqa: E402
from charrnn.models.keras_engine import (  # noqa: E402
    KerasModel,
    canonical_to_keras,
    keras_gradients_to_canonical,
    keras_keys,
    keras_to_canonical,
)
from charrnn.models.tf_engine import TFModel  # noqa: E402
from charrnn.train.tf_step import TFLearner, TFOptimizer, mean_cross_entropy  # noqa: E402

CELLS = ["rnn", "gru", "lstm"]
TF_ENGINES = {"tf": TFModel, "keras": KerasModel}
V, E, H, B, T = 11, 5, 7, 3, 6


def config(cell, layers=2, dropout=0.0, hidden=H, embed=E):
    return ModelConfig(vocab_size=V, cell=cell, layers=layers, hidden=hidden, embed=embed, dropout=dropout)


def problem(cfg, seed=0):
    """Random weights (biases and embedding visibly non-zero), inputs, targets and a non-zero state."""
    rng = np.random.default_rng(seed)
    params = {k: rng.uniform(-0.6, 0.6, v.shape) for k, v in init_parameters(cfg, seed).items()}
    inputs = rng.integers(0, V, (B, T))
    targets = rng.integers(0, V, (B, T))
    state = tuple(rng.standard_normal((cfg.layers, B, cfg.hidden)) * 0.5 for _ in range(2 if cfg.cell == "lstm" else 1))
    return params, inputs, targets, state


def naive_reference(cfg, params, inputs, targets, state):
    """The naive engine in float64: logits, final state, loss, gradients, d(loss)/d(initial state)."""
    model = build_model("naive", cfg, params=params, dtype="float64")
    logits, final, cache = model.forward_train(inputs, state)
    loss, dlogits = cross_entropy(logits, targets)
    grads, dstate = model.backward(cache, dlogits)
    return logits, final, loss, grads, dstate


def close(ours, ref, rtol, name):
    """Relative error of the whole array (the scale of a gradient is its largest entry), element by element."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, name
    scale = np.abs(ref).max()
    assert scale > 1e-6, f"{name}: the test would not see a wrong value"
    np.testing.assert_allclose(ours, ref, rtol=0, atol=rtol * scale, err_msg=name)


def forward_tolerances(dtype, cfg, logits, final):
    """(logits, final state, mean loss) bounds for one window against an exact reference (tests/tolerances.py):
    the chain of sums behind them times eps times their size; the mean log-softmax moves by at most twice
    its logits' largest change."""
    logits_tol = rounding_bound(dtype, window_terms(cfg, T), max(1.0, float(np.abs(logits).max())))
    state_tol = rounding_bound(dtype, window_terms(cfg, T), max(1.0, max(float(np.abs(f).max()) for f in final)))
    return logits_tol, state_tol, 2 * logits_tol


SLOW = pytest.mark.slow   # the quick subset (-m "not slow") keeps one case of each kind; the full suite runs all


@pytest.mark.parametrize("layers,embed", [pytest.param(1, E, marks=SLOW), (2, E), pytest.param(3, E, marks=SLOW),
                                          (2, 0)])   # embed 0: one-hot inputs
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("impl", list(TF_ENGINES))
def test_forward_and_gradients_match_the_naive_engine(impl, cell, layers, embed):
    cfg = config(cell, layers, embed=embed)
    params, inputs, targets, state = problem(cfg, seed=layers)
    ref_logits, ref_final, ref_loss, ref_grads, ref_dstate = naive_reference(cfg, params, inputs, targets, state)
    model = TF_ENGINES[impl](cfg, params=params)                       # float32, as they train
    logits, final = model.eval().forward(inputs, state)
    logits_tol, state_tol, loss_tol = forward_tolerances("float32", cfg, ref_logits, ref_final)
    np.testing.assert_allclose(np.asarray(logits), ref_logits, rtol=0, atol=logits_tol, err_msg="logits")
    assert len(final) == len(ref_final)
    for ours, theirs in zip(final, ref_final):
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=state_tol, err_msg="final state")

    state_t = [tf.constant(s, tf.float32) for s in state]
    with tf.GradientTape() as tape:
        tape.watch(state_t)
        logits_t, _ = model.call(tf.constant(inputs, tf.int32), tuple(state_t), training=True)
        loss = mean_cross_entropy(tf, logits_t, tf.constant(targets, tf.int32))
    named = model.training_variables()
    grads = tape.gradient(loss, [entry[1] for entry in named] + state_t)
    assert abs(float(loss) - ref_loss) < loss_tol
    ours = {entry[0]: np.asarray(tf.convert_to_tensor(g)) for entry, g in zip(named, grads)}
    if impl == "keras":
        ours = keras_gradients_to_canonical(cfg, ours)
    assert list(ours) == list(ref_grads)                                # every canonical name, same order
    grad_rtol = gradient_terms(cfg, B, T) * EPS["float32"]             # of the largest gradient (tolerances.py)
    for name, grad in ref_grads.items():
        close(ours[name], grad, grad_rtol, name)
    for ours_d, ref_d in zip(grads[len(named):], ref_dstate):
        close(ours_d.numpy(), ref_d, grad_rtol, "d loss / d initial state")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("impl", list(TF_ENGINES))
def test_float64_agrees_to_rounding(impl, cell):
    """In float64 the same bound is ~1e-13: any larger disagreement is a wrong formula, not rounding."""
    cfg = config(cell)
    params, inputs, _, state = problem(cfg, seed=5)
    ref_logits, ref_final, *_ = naive_reference(cfg, params, inputs, np.zeros_like(inputs), state)
    logits, final = TF_ENGINES[impl](cfg, params=params, dtype="float64").eval().forward(inputs, state)
    logits_tol, state_tol, _ = forward_tolerances("float64", cfg, ref_logits, ref_final)
    np.testing.assert_allclose(np.asarray(logits), ref_logits, rtol=0, atol=logits_tol)
    for ours, theirs in zip(final, ref_final):
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=state_tol)


@pytest.mark.parametrize("embed", [E, 0])
@pytest.mark.parametrize("cell", CELLS)
def test_keras_conversion_is_exact_both_ways(cell, embed):
    cfg = config(cell, embed=embed)
    rng = np.random.default_rng(2)
    shapes = {"embed.embeddings": (V, E), "head.kernel": (H, V), "head.bias": (V,)}
    G = cfg.gates
    for k in range(cfg.layers):
        shapes.update({f"rnn_l{k}.kernel": ((embed or V) if k == 0 else H, G * H),
                       f"rnn_l{k}.recurrent_kernel": (H, G * H),
                       f"rnn_l{k}.bias": (2, 3 * H) if cell == "gru" else (G * H,)})
    weights = {k: rng.standard_normal(shapes[k]).astype(np.float32) for k in keras_keys(cfg)}
    canonical = keras_to_canonical(cfg, weights)
    assert {k: v.shape for k, v in canonical.items()} == parameter_shapes(cfg)
    back = canonical_to_keras(cfg, canonical)
    for key in keras_keys(cfg):
        np.testing.assert_array_equal(back[key], weights[key], err_msg=key)      # Keras -> canonical -> Keras

    params = {k: v.astype(np.float32) for k, v in problem(cfg)[0].items()}
    again = keras_to_canonical(cfg, canonical_to_keras(cfg, params))
    for name, value in params.items():
        if cell != "gru" and name.startswith("rnn.bias"):       # one Keras bias: the sum, all in bias_ih
            continue
        np.testing.assert_array_equal(again[name], value, err_msg=name)
    if cell != "gru":
        for k in range(cfg.layers):
            summed = params[f"rnn.bias_ih_l{k}"] + params[f"rnn.bias_hh_l{k}"]
            np.testing.assert_array_equal(again[f"rnn.bias_ih_l{k}"], summed)
            assert not again[f"rnn.bias_hh_l{k}"].any()
    # the gate order, seen from the equations: Keras' GRU update gate z is torch's second block
    if cell == "gru":
        z_rows = params["rnn.weight_ih_l0"][H:2 * H]
        np.testing.assert_array_equal(canonical_to_keras(cfg, params)["rnn_l0.kernel"][:, :H], z_rows.T)


@pytest.mark.parametrize("impl", list(TF_ENGINES))
def test_parameters_come_back_and_initial_weights_equal_every_engine(impl):
    cfg = config("lstm")
    expected = init_parameters(cfg, 7)
    params = TF_ENGINES[impl](cfg, seed=7).get_parameters()
    assert list(params) == list(expected)
    for name, value in params.items():
        assert value.dtype == np.float32
        if impl == "keras" and name.startswith("rnn.bias"):
            k = name[-1]
            np.testing.assert_array_equal(params[f"rnn.bias_ih_l{k}"] + params[f"rnn.bias_hh_l{k}"],   # one float32
                                          expected[f"rnn.bias_ih_l{k}"] + expected[f"rnn.bias_hh_l{k}"])  # sum each
        else:
            np.testing.assert_array_equal(value, expected[name], err_msg=name)
    from charrnn.errors import UserError

    with pytest.raises(UserError, match="head.bias"):
        TF_ENGINES[impl](cfg).set_parameters({k: v for k, v in expected.items() if k != "head.bias"})


# -- the optimizers and the training step -------------------------------------------------------

UPDATE_OPS = 10   # float ops one update passes through (lerp, square, sqrt, bias corrections, eps, divisions, lr)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind,wd", [("adagrad", 0.0), ("adagrad", 0.1), ("adam", 0.0), ("adam", 0.05),
                                     ("adamw", 0.0), ("adamw", 0.01)])
def test_optimizer_updates_equal_torch_optim(kind, wd, dtype):
    """Same gradients, same formulas: the weights differ only by the rounding of each update's ops, in another
    order. Bound per step: eps * (|w| + UPDATE_OPS * |update|), summed over the steps (m and v carry it on,
    scaled by betas < 1). In float64 it is ~1e-14: a wrong constant (or one rounded to float32) shows."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    shapes = [(5, 3), (7,), (4, 4)]
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ours = [tf.Variable(a) for a in init]
    opt = TFOptimizer(kind, [(f"p{i}", v) for i, v in enumerate(ours)], 0.1, wd)
    theirs = [torch.nn.Parameter(torch.tensor(a)) for a in init]
    torch_opt = {"adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind](
        theirs, lr=0.1, weight_decay=wd)
    apply = tf.function(lambda *g: opt.apply(list(g)))
    bound = [np.zeros(s) for s in shapes]
    for step in range(15):
        lr = 0.1 * 0.9 ** step                                      # the lr changes between steps, as schedules do
        opt.lr.assign(lr)
        for group in torch_opt.param_groups:
            group["lr"] = lr
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        before = [p.detach().numpy().astype(np.float64) for p in theirs]
        apply(*[tf.constant(g) for g in grads])
        for p, g in zip(theirs, grads):
            p.grad = torch.tensor(g)
        torch_opt.step()
        for i, (a, b) in enumerate(zip(ours, theirs)):
            w = b.detach().numpy().astype(np.float64)
            bound[i] += EPS[dtype] * (np.abs(w) + UPDATE_OPS * np.abs(w - before[i]))
            np.testing.assert_array_less(np.abs(a.numpy() - w), bound[i])
    arrays, meta = opt.state_dict("canonical")
    assert meta["step"] == 15 and meta["type"] == kind


def test_optimizer_state_is_the_naive_engines_format():
    """--impl tf saves its slots under canonical names, as the naive engine does: each loads the other's."""
    from charrnn.train.numpy_optim import make_optimizer

    cfg = config("gru")
    model = TFModel(cfg, seed=1)
    learner = TFLearner(model, "adam", 1e-2, 0.0, 5.0)
    _, inputs, targets, _ = problem(cfg)
    learner.train_step(inputs, targets, learner.zero_state(B))
    arrays, meta = learner.optimizer_state()
    naive_params = {k: v.astype(np.float64) for k, v in model.get_parameters().items()}
    naive_opt = make_optimizer("adam", naive_params, 1e-2)
    naive_opt.load_state_dict(arrays, meta)
    assert naive_opt.steps == 1
    learner.load_optimizer_state(*naive_opt.state_dict())
    from charrnn.errors import UserError

    with pytest.raises(UserError, match="optimizer"):
        learner.load_optimizer_state(arrays, {**meta, "type": "adagrad"})


def canonical_float64(learner, cfg) -> dict:
    """A learner's weights under canonical names in float64 (a TF learner's unrounded: get_parameters rounds to
    float32), each summed bias as b_ih + b_hh in bias_ih (the keras engine's one bias; sum_the_biases)."""
    model = learner.model
    if isinstance(model, KerasModel):
        params = keras_to_canonical(cfg, model.get_keras_weights())
    elif isinstance(model, TFModel):
        params = {name: v.numpy() for name, v in zip(learner.optimizer.names, learner.optimizer.variables)}
    else:
        params = learner.get_parameters()
    return sum_the_biases({k: np.asarray(v, np.float64) for k, v in params.items()}, cfg)


def assert_within(learners: dict, bound: TrajectoryBound, cfg) -> None:
    """Every learner's weights within the derived bound of the exact run's (see TrajectoryBound)."""
    exact, limit = sum_the_biases(bound.exact_weights(), cfg), sum_the_biases(bound.bound, cfg)
    for impl, learner in learners.items():
        params = canonical_float64(learner, cfg)
        for name, value in exact.items():
            np.testing.assert_array_less(np.abs(params[name] - value), limit[name] + 1e-300, err_msg=f"{impl} {name}")


def step_learners(learners: dict, exact, bound: TrajectoryBound, windows, states: dict, exact_state):
    """The same windows through every learner and the exact one; each loss within the bound of the exact loss."""
    for x, y in windows:
        exact_loss, exact_state = exact.train_step(x, y, exact_state)
        loss_tol = bound.step(exact_loss)
        for k, s in learners.items():
            loss, states[k] = s.train_step(x, y, states[k])
            assert abs(loss - exact_loss) <= loss_tol, (k, loss, exact_loss, loss_tol)
    return exact_state


def all_learners(cfg, optimizer, lr, wd, clip, seed=3, dtype="float32") -> dict:
    torch = pytest.importorskip("torch")
    from charrnn.train.learners import TorchLearner

    return {"library": TorchLearner(build_model("library", cfg, seed=seed, dtype=dtype), optimizer, lr, wd, clip,
                                    torch.device("cpu")),
            **{impl: TFLearner(cls(cfg, seed=seed, dtype=dtype), optimizer, lr, wd, clip)
               for impl, cls in TF_ENGINES.items()}}


@pytest.mark.parametrize("cell,optimizer,wd", [("rnn", "adagrad", 0.0),   # every optimizer and cell: in-process above
                                              ("lstm", "adam", 0.05),     # L2 on Keras' one bias (issue #26, 10)
                                              pytest.param("rnn", "adagrad", 0.1, marks=SLOW),
                                              pytest.param("gru", "adamw", 0.1, marks=SLOW),
                                              pytest.param("lstm", "adam", 0.0, marks=SLOW)])
def test_a_training_step_is_the_torch_engines_step(cell, optimizer, wd):
    """Loss, clipping (active: clip 0.5), optimizer and carried state, four windows: every float32 engine (TF
    engines and library) stays within float32 rounding of the exact trajectory, the library engine in float64.
    The bound is derived from the computation, not fitted (tests/tolerances.py, TrajectoryBound)."""
    cfg = config(cell, hidden=12, embed=6)
    Bw, Tw, lr = 4, 8, 0.02
    rng = np.random.default_rng(4)
    windows = [(rng.integers(0, V, (Bw, Tw)), rng.integers(0, V, (Bw, Tw))) for _ in range(4)]
    exact = all_learners(cfg, optimizer, lr, wd, 0.5, dtype="float64")["library"]
    learners = all_learners(cfg, optimizer, lr, wd, 0.5)
    bound = TrajectoryBound(exact, Bw * Tw, window_terms(cfg, Tw))
    step_learners(learners, exact, bound, windows, {k: s.zero_state(Bw) for k, s in learners.items()},
                  exact.zero_state(Bw))
    ref = bound.exact_weights()
    assert max(np.abs(ref[k] - init_parameters(cfg, 3)[k]).max() for k in ref) > 1e-2   # it did train
    assert_within(learners, bound, cfg)
    typical = float(np.median(np.concatenate([b.ravel() for b in bound.bound.values()])))
    assert typical < 0.01 * lr * len(windows), "most weights' bound must see an update wrong by 1% of a step"


@pytest.mark.parametrize("optimizer,wd", [("adamw", 0.01), ("adam", 0.05)])   # adam: L2 sees each bias half
@pytest.mark.parametrize("impl", list(TF_ENGINES))
def test_resume_from_saved_learner_state_is_exact(impl, optimizer, wd):
    """Weights, optimizer slots (and a summed bias's b_hh half), step count, lr, dropout RNG and carried state
    saved as NumPy and loaded into a fresh learner: the next windows are bit for bit those of the run that went on."""
    cfg = config("lstm", dropout=0.3, hidden=10)
    rng = np.random.default_rng(5)
    windows = [(rng.integers(0, V, (4, 8)), rng.integers(0, V, (4, 8))) for _ in range(5)]

    def fresh():
        return TFLearner(TF_ENGINES[impl](cfg, seed=2), optimizer, 1e-2, wd, 1.0)

    first = fresh()
    state = first.zero_state(4)
    for x, y in windows[:3]:
        _, state = first.train_step(x, y, state)
    saved = (first.get_parameters(), first.optimizer_state(), first.rng_state(), first.state_to_numpy(state))
    assert saved[2][0], "dropout > 0 must have RNG state to save"
    first.set_lr(5e-3)
    straight = [first.train_step(x, y, state)[0] for x, y in windows[3:]]

    second = fresh()
    second.model.set_parameters(saved[0])
    second.load_optimizer_state(*saved[1])
    second.set_rng_state(*saved[2])
    second.set_lr(5e-3)
    state = second.state_from_numpy(saved[3])
    resumed = [second.train_step(x, y, state)[0] for x, y in windows[3:]]
    assert resumed == straight
    for name, value in first.get_parameters().items():
        np.testing.assert_array_equal(second.get_parameters()[name], value, err_msg=name)


def test_a_keras_checkpoint_from_before_the_bias_halves_still_resumes():
    """Older keras checkpoints have one set of slots per summed bias and no b_hh: both halves take those slots
    (what the optimizer then did) and b_hh is zeros (the saved weights put the whole bias in bias_ih)."""
    cfg = config("lstm", hidden=10)
    learner = TFLearner(KerasModel(cfg, seed=2), "adam", 1e-2, 0.0, 1.0)
    _, inputs, targets, _ = problem(cfg)
    learner.train_step(inputs, targets, learner.zero_state(B))
    arrays, meta = learner.optimizer_state()
    assert {"bias_hh.rnn_l0.bias", "exp_avg.rnn_l0.bias_hh"} <= set(arrays)
    older = {k: v for k, v in arrays.items() if not (k.startswith("bias_hh.") or k.endswith(".bias_hh"))}
    second = TFLearner(KerasModel(cfg, seed=2), "adam", 1e-2, 0.0, 1.0)
    second.load_optimizer_state(older, meta)
    again, _ = second.optimizer_state()
    np.testing.assert_array_equal(again["exp_avg.rnn_l0.bias_hh"], arrays["exp_avg.rnn_l0.bias"])
    assert not again["bias_hh.rnn_l0.bias"].any()
    from charrnn.errors import UserError

    with pytest.raises(UserError, match="missing"):              # some of the halves' arrays but not all: damaged
        second.load_optimizer_state({k: v for k, v in arrays.items() if k != "bias_hh.rnn_l0.bias"}, meta)


def test_dropout_is_training_only_and_eval_loss_is_the_forward():
    cfg = config("gru", dropout=0.5)
    params, inputs, targets, state = problem(cfg)
    for impl, cls in TF_ENGINES.items():
        model = cls(cfg, params=params)
        learner = TFLearner(model, "adam", 1e-3, 0.0, 5.0)
        ref_logits, _ = build_model("naive", cfg, params=params, dtype="float64").eval().forward(inputs, state)
        logits_tol, _, loss_tol = forward_tolerances("float32", cfg, ref_logits, state)
        loss, _ = learner.eval_loss(inputs, targets, learner.state_from_numpy(list(state)))
        assert abs(loss - cross_entropy(ref_logits, targets)[0]) < loss_tol, impl
        train_a = model.train().forward(inputs, state)[0].numpy()
        train_b = model.forward(inputs, state)[0].numpy()
        assert np.abs(train_a - train_b).max() > 1e-3, f"{impl}: dropout draws new masks each window"
        assert np.abs(model.eval().forward(inputs, state)[0].numpy() - ref_logits).max() < logits_tol


# -- through the command line: train, read with other engines, resume, refuse ------------------

SMALL = ["--layers", 1, "--hidden", 16, "--embed", 8, "--batch-size", 4, "--seq-len", 16, "--log-every", 1,
         "--eval-every", 1000, "--seed", 3]


@pytest.fixture
def corpus(tmp_path):
    from conftest import write_word_text

    return write_word_text(tmp_path / "corpus.txt", 300)


def cli(args, capsys):
    """`charrnn ARGS` in this process (TensorFlow is imported once per test session, not per command)."""
    from charrnn.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def weights(run):
    from safetensors.numpy import load_file

    return load_file(str(run / "model.safetensors"))


@pytest.mark.parametrize("impl,flags", [("tf", []), ("keras", []),
                                       ("tf", ["--embed", 0, "--cell", "rnn"])])   # the seed's section IV model
def test_cli_trains_and_every_engine_reads_the_run(impl, flags, corpus, tmp_path, capsys):
    import json

    run = tmp_path / "run"
    code, _, err = cli(["train", "--impl", impl, "--data", corpus, "--out", run, *SMALL, "--max-iters", 8,
                        "--lr", 1e-2, "--head-bias", "random", *flags], capsys)   # from a drawn bias, eight steps
    # have the characters' frequencies to learn (a unigram start already holds them: tests/test_head_bias.py)
    assert code == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.1, losses     # it learns
    saved = weights(run)
    cell, embed = ("rnn", 0) if flags else ("lstm", 8)
    assert set(saved) == set(parameter_shapes(config(cell, layers=1, hidden=16, embed=embed)).keys())
    assert ("embed.weight" in saved) == bool(embed)
    evals = {}
    for reader in ("naive", impl):
        code, out, err = cli(["eval", "--checkpoint", run, "--impl", reader, "--data", corpus, "--json"], capsys)
        assert code == 0, err
        evals[reader] = json.loads(out)["loss"]
    assert abs(evals["naive"] - evals[impl]) < 1e-5 and 1.0 < evals[impl] < 3.0, evals
    code, out, err = cli(["sample", "--checkpoint", run, "--impl", "naive", "--length", 40, "--seed", 1,
                          "--prime", "the"], capsys)
    assert code == 0 and out.startswith("the") and len(out.rstrip("\n")) == 43, err
    code, out_tf, err = cli(["sample", "--checkpoint", run, "--impl", impl, "--length", 40, "--seed", 1,
                             "--prime", "the"], capsys)
    assert code == 0 and out_tf == out, err                                # same weights, same draws


def test_any_run_evaluates_fine_tunes_and_resumes_in_the_tf_engines(corpus, tmp_path, capsys):
    """The other way round: a naive run read by tf and keras (same loss), fine-tuned by keras (--init-from), and
    resumed by tf (its optimizer slots are the naive engine's format; a keras run's are not, in one line)."""
    import json

    run = tmp_path / "naive"
    flags = ["--data", corpus, *SMALL, "--cell", "gru", "--layers", 2]
    assert cli(["train", "--impl", "naive", "--out", run, *flags, "--max-iters", 3], capsys)[0] == 0
    losses = {}
    for reader in ("naive", "tf", "keras"):
        code, out, err = cli(["eval", "--checkpoint", run, "--impl", reader, "--data", corpus, "--json"], capsys)
        assert code == 0, err
        losses[reader] = json.loads(out)["loss"]
    assert max(losses.values()) - min(losses.values()) < 1e-5, losses
    code, _, err = cli(["train", "--impl", "keras", "--init-from", run, "--out", tmp_path / "ft", "--data", corpus,
                        "--max-iters", 2, "--batch-size", 4, "--seq-len", 16], capsys)
    assert code == 0, err
    code, out, err = cli(["train", "--impl", "tf", "--optimizer", "adagrad", "--data", corpus, "--out", run,
                          "--max-iters", 5, "--resume"], capsys)
    assert code == 0 and "resuming" in out, err
    code, _, err = cli(["train", "--impl", "naive", "--optimizer", "adamw", "--data", corpus, "--out", tmp_path / "ft",
                        "--max-iters", 4, "--resume"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "optimizer" in err, err


@SLOW   # the quick subset checks resume in-process (test_resume_from_saved_learner_state_is_exact)
@pytest.mark.parametrize("impl", list(TF_ENGINES))
def test_cli_resume_is_exact(impl, corpus, tmp_path, capsys):
    """10 iterations + --resume to 20 == 20 straight, dropout on (its RNG state is in the checkpoint)."""
    common = ["--impl", impl, "--data", corpus, *SMALL, "--layers", 2, "--dropout", 0.3, "--eval-every", 7]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert cli(["train", *common, "--out", straight, "--max-iters", 20], capsys)[0] == 0
    assert cli(["train", *common, "--out", split, "--max-iters", 10], capsys)[0] == 0
    code, out, err = cli(["train", "--data", corpus, "--out", split, "--max-iters", 20, "--resume"], capsys)
    assert code == 0 and "resuming" in out and "iteration 10" in out, err
    a, b = weights(straight), weights(split)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_tf_engines_refuse_what_they_cannot_honour(corpus, tmp_path, capsys, monkeypatch):
    for flag in ("--bf16", "--compile"):
        code, _, err = cli(["train", "--impl", "tf", "--data", corpus, "--out", tmp_path / "a", flag], capsys)
        assert code == 2
        assert err.strip() == f"charrnn: error: --impl tf does not support {flag}; use --impl library or scratch"
    if not tf.config.list_physical_devices("GPU"):
        code, _, err = cli(["train", "--impl", "keras", "--data", corpus, "--out", tmp_path / "c", "--device", "cuda"],
                           capsys)
        assert code == 2 and err.startswith("charrnn: error: --device cuda: TensorFlow sees no GPU here")
        assert len(err.strip().splitlines()) == 1
    monkeypatch.setenv("RANK", "0")          # as torchrun starts a process
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    code, _, err = cli(["train", "--impl", "keras", "--data", corpus, "--out", tmp_path / "b"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("charrnn: error: --impl keras cannot train under torchrun (2 processes)")
    assert not (tmp_path / "b").exists()


def test_without_tensorflow_the_cli_says_what_to_install(corpus, tmp_path, run_cli):
    """TensorFlow unimportable: --impl tf|keras is one line and exit 2; nothing else changes or imports it."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None\n"
            "from charrnn.cli import main\n"
            f"run = {str(tmp_path / 'run')!r}\n"
            f"args = ['--data', {str(corpus)!r}, '--layers', '1', '--hidden', '8', '--embed', '4', '--batch-size', '2',"
            " '--seq-len', '8', '--max-iters', '2']\n"
            "assert main(['train', '--impl', 'naive', '--out', run, *args]) == 0\n"
            "print('codes', main(['train', '--impl', 'tf', '--out', run + '2', *args]),"
            " main(['eval', '--checkpoint', run, '--impl', 'keras', '--data', args[1]]))\n"
            "assert main(['eval', '--checkpoint', run, '--impl', 'naive', '--data', args[1]]) == 0\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root,
                         env=run_cli.env())
    assert out.returncode == 0, out.stderr
    assert "codes 2 2" in out.stdout
    errors = [line for line in out.stderr.splitlines() if line.startswith("charrnn: error")]
    assert len(errors) == 2 and all("pip install" in e and "TensorFlow" in e for e in errors), out.stderr
    assert "Traceback" not in out.stderr
