"""A head tied to the embedding (--tied): one weight, trained by the PyTorch engines, run by every runtime.

The references are independent of the tying code: the naive engine (which knows nothing of tying) run on the
tied model's canonical weights, where head.weight is a copy of embed.weight, for the logits; finite differences
of the loss in the shared weight for its gradient, which must be the sum of its two uses. The whole lifecycle
(resume, fine-tune, ONNX, int8, the web page) is walked by the conformance rows that tie (tests/test_conformance.py).
"""
import dataclasses
import hashlib
import json

import numpy as np
import pytest
from conftest import write_word_text
from tolerances import gradient_terms, rounding_bound

from charrnn.config import IMPLS, TF_IMPLS, ModelConfig
from charrnn.errors import UserError
from charrnn.models import build_model
from charrnn.models.base import init_parameters

V, H, L, B, T = 9, 6, 2, 3, 5
TORCH_ENGINES = ["library", "scratch"]


def config(cell="lstm", **kw) -> ModelConfig:
    return ModelConfig(vocab_size=V, cell=cell, layers=L, hidden=H, embed=H, tied=True, **kw)


def problem(cfg, seed=0):
    rng = np.random.default_rng(seed)
    params = {k: rng.uniform(-0.6, 0.6, v.shape) for k, v in init_parameters(cfg, seed).items()}
    params["head.weight"] = params["embed.weight"]
    return params, rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


def snapshot(run) -> dict:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*"))
            if p.is_file()}


def refused(result, needle: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and result.stdout == "", (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1 and needle in lines[0], result.stderr
    return lines[0]


# -- the config and the canonical weights --------------------------------------------------------------------------

def test_a_tied_head_needs_the_embedding_as_wide_as_the_head_and_says_so_in_one_line():
    with pytest.raises(UserError, match="--tied needs --embed equal to --hidden .* not 4 and 6") as caught:
        ModelConfig(vocab_size=V, hidden=H, embed=4, tied=True)
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="not 0 and 6"):
        ModelConfig(vocab_size=V, hidden=H, embed=0, tied=True)


def test_a_tied_models_first_head_is_its_embedding_and_every_other_weight_the_untied_seeds():
    tied, untied = init_parameters(config(), 7), init_parameters(dataclasses.replace(config(), tied=False), 7)
    assert list(tied) == list(untied)
    np.testing.assert_array_equal(tied["head.weight"], tied["embed.weight"])
    for name in untied:
        if name != "head.weight":
            np.testing.assert_array_equal(tied[name], untied[name], err_msg=name)


@pytest.mark.parametrize("impl", TORCH_ENGINES)
def test_a_torch_engine_holds_one_weight_for_both_and_gives_the_naive_logits(impl):
    torch = pytest.importorskip("torch")
    cfg = config()
    params, inputs, _ = problem(cfg)
    model = build_model(impl, cfg, params=params, dtype="float64", device=torch.device("cpu"))
    names = [name for name, _ in model.named_parameters()]
    assert "head.weight" not in names and model.head.weight is model.embed.weight
    got = model.get_parameters()
    assert list(got) == list(params)                                           # the canonical names, in order
    np.testing.assert_array_equal(got["head.weight"], got["embed.weight"])
    naive = build_model("naive", cfg, params=params, dtype="float64")          # reads head.weight as any model
    expected = naive.forward(inputs, naive.initial_state(B))[0]
    logits = model.forward(inputs, model.initial_state(B))[0].detach().numpy()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("impl", TORCH_ENGINES)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_shared_weights_gradient_is_the_finite_difference_of_the_loss(impl, cell):
    """d loss / d W for W both the embedding and the head: the central difference of the loss when one entry of
    the one weight moves (so both uses see it), in float64. A step h leaves a truncation error ~h^2 * f''' and a
    rounding error ~ (the loss's own rounding) / h: h = 1e-5 keeps both under 1e-8 for losses of size ~2."""
    torch = pytest.importorskip("torch")
    cfg = config(cell)
    params, inputs, targets = problem(cfg, seed=3)
    model = build_model(impl, cfg, params=params, dtype="float64", device=torch.device("cpu"))

    def loss() -> torch.Tensor:
        logits = model.forward(inputs, model.initial_state(B))[0]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.as_tensor(targets).reshape(-1))

    loss().backward()
    grad = model.embed.weight.grad.numpy().copy()
    h, bound = 1e-5, 1e-8 + rounding_bound("float64", gradient_terms(cfg, B, T), 1.0) / 1e-5
    rng = np.random.default_rng(0)
    for row, col in zip(rng.integers(0, V, 6), rng.integers(0, H, 6)):
        with torch.no_grad():
            model.embed.weight[row, col] += h
            up = loss().item()
            model.embed.weight[row, col] -= 2 * h
            down = loss().item()
            model.embed.weight[row, col] += h
        assert abs((up - down) / (2 * h) - grad[row, col]) < bound, (row, col)
    # and the two uses' gradients do add up: the untied model's embedding and head gradients, summed
    untied = build_model(impl, dataclasses.replace(cfg, tied=False), params=params, dtype="float64",
                         device=torch.device("cpu"))
    logits = untied.forward(inputs, untied.initial_state(B))[0]
    torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.as_tensor(targets).reshape(-1)).backward()
    np.testing.assert_allclose(grad, (untied.embed.weight.grad + untied.head.weight.grad).numpy(), rtol=0,
                               atol=1e-12)


@pytest.mark.parametrize("impl", TORCH_ENGINES)
def test_a_training_step_moves_the_one_weight_and_saves_it_as_both(impl):
    torch = pytest.importorskip("torch")
    from charrnn.train.learners import TorchLearner

    cfg = config()
    params, inputs, targets = problem(cfg, seed=5)
    model = build_model(impl, cfg, params={k: v.astype(np.float32) for k, v in params.items()},
                        device=torch.device("cpu"))
    learner = TorchLearner(model, "adamw", 1e-2, 0.01, 1.0, torch.device("cpu"))
    learner.train_step(inputs, targets, learner.zero_state(B))
    after = learner.get_parameters()
    np.testing.assert_array_equal(after["head.weight"], after["embed.weight"])
    assert not np.allclose(after["embed.weight"], params["embed.weight"].astype(np.float32))
    optimized = [p for group in learner.optimizer.param_groups for p in group["params"]]
    assert len(optimized) == len(after) - 1 and any(p is model.embed.weight for p in optimized)   # one weight
    assert len(learner.optimizer.state) == len(optimized)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_tied_checkpoint_whose_head_was_changed_is_refused_by_every_engine(impl):
    pytest.importorskip("tensorflow" if impl in TF_IMPLS else "torch" if impl in TORCH_ENGINES else "numpy")
    params, _, _ = problem(config())
    build_model(impl, config(), params=params)   # the copy as saved: taken
    params["head.weight"] = params["head.weight"] + 1e-3
    with pytest.raises(UserError, match="head.weight differs from its embed.weight"):
        build_model(impl, config(), params=params)


# -- the command ---------------------------------------------------------------------------------------------------

@pytest.fixture
def text(tmp_path):
    return write_word_text(tmp_path / "text.txt", 200)


def small(*extra):
    return ["--layers", "1", "--batch-size", "4", "--seq-len", "16", "--max-iters", "2", *extra]


def test_tied_alone_embeds_in_the_heads_width(text, tmp_path, run_cli):
    run = tmp_path / "run"
    done = run_cli.in_process(["train", "--data", text, "--out", run, "--tied", "--hidden", "24", *small()])
    assert done.returncode == 0, done.stderr
    model = json.loads((run / "config.json").read_text())["model"]
    assert model["tied"] is True and model["embed"] == model["hidden"] == 24
    untied = tmp_path / "untied"
    assert run_cli.in_process(["train", "--data", text, "--out", untied, *small()]).returncode == 0
    assert "tied" not in json.loads((untied / "config.json").read_text())["model"]   # unchanged for others


@pytest.mark.parametrize("args,needle", [
    (["--tied", "--embed", "16", "--hidden", "24"], "--tied needs --embed equal to --hidden"),
    (["--tied", "--impl", "naive"], "--impl naive cannot train a tied head"),
    (["--tied", "--embed", "0"], "--tied needs --embed equal to --hidden (the head's rows are the embedding's), "
                                 "not 0 and 256"),   # one-hot inputs: no table to tie, and no width to take
])
def test_a_tied_head_an_engine_or_a_shape_cannot_have_is_refused_before_anything_is_written(args, needle, text,
                                                                                           tmp_path, run_cli):
    run = tmp_path / "run"
    refused(run_cli.in_process(["train", "--data", text, "--out", run, *small(*args)]), needle)
    assert not run.exists()


@pytest.mark.parametrize("impl", ["naive", pytest.param("keras", marks=pytest.mark.slow)])
def test_a_tied_run_is_continued_only_by_an_engine_that_ties_and_run_by_every_one(impl, text, tmp_path, run_cli):
    if impl == "keras":
        pytest.importorskip("tensorflow")
    run = tmp_path / "run"
    assert run_cli.in_process(["train", "--data", text, "--out", run, "--tied", "--hidden", "16",
                               *small()]).returncode == 0
    before = snapshot(run)
    refused(run_cli.in_process(["train", "--data", text, "--out", run, "--resume", "--impl", impl,
                                "--max-iters", "4"]), f"--impl {impl} cannot continue the library run")
    refused(run_cli.in_process(["train", "--data", text, "--out", tmp_path / "ft", "--init-from", run, "--impl",
                                impl, "--max-iters", "1"]), f"--impl {impl} cannot train a tied head")
    assert snapshot(run) == before and not (tmp_path / "ft").exists()
    scores = [json.loads(run_cli.in_process(["eval", "--checkpoint", run, "--data", text, "--impl", engine,
                                             "--json"]).stdout)["loss"] for engine in ("library", impl)]
    assert abs(scores[0] - scores[1]) < 1e-4, scores


def test_resume_with_tied_of_an_untied_run_is_refused(text, tmp_path, run_cli):
    run = tmp_path / "run"
    assert run_cli.in_process(["train", "--data", text, "--out", run, *small()]).returncode == 0
    before = snapshot(run)
    refused(run_cli.in_process(["train", "--data", text, "--out", run, "--resume", "--tied"]), "--tied")
    assert snapshot(run) == before


def test_a_tied_web_page_holds_the_table_once_and_reads_it_as_the_head(text, tmp_path, run_cli):
    """model.js names head.weight at embed.weight's offset, so the page's head is the embedding (the page's samples
    against the checkpoint's are the conformance rows' web column) and the file is one V x H table smaller."""
    import base64

    from charrnn.checkpoint import read_safetensors

    sizes = {}
    for name, flags in (("tied", ["--tied"]), ("untied", ["--embed", "16"])):
        run = tmp_path / name
        assert run_cli.in_process(["train", "--data", text, "--out", run, "--hidden", "16", *flags,
                                   *small()]).returncode == 0
        assert run_cli.in_process(["export", "--checkpoint", run, "--format", "web", "--out",
                                   tmp_path / f"site-{name}"]).returncode == 0
        script = (tmp_path / f"site-{name}" / "model.js").read_text(encoding="utf-8")
        model = json.loads(script[script.index("{"):script.rindex("}") + 1])
        tensors, blob = model["tensors"], base64.b64decode(model["data"])
        sizes[name] = len(blob)
        shared = tensors["head.weight"]["offset"] == tensors["embed.weight"]["offset"]
        assert shared == (name == "tied")
        saved = read_safetensors(run / "model.safetensors")[0]["head.weight"]
        head = np.frombuffer(blob, "<f4", count=saved.size, offset=tensors["head.weight"]["offset"])
        np.testing.assert_array_equal(head.reshape(saved.shape), saved)
    vocab = len(json.loads((tmp_path / "tied" / "vocab.json").read_text(encoding="utf-8")))
    assert sizes["untied"] - sizes["tied"] == vocab * 16 * 4


def test_a_tied_checkpoint_whose_head_was_edited_is_refused_wherever_it_is_read(text, tmp_path, run_cli):
    """Every runtime reads head.weight (the copy), so the check is where weights enter, not in an engine."""
    from charrnn.checkpoint import read_safetensors, save_weights

    run = tmp_path / "run"
    assert run_cli.in_process(["train", "--data", text, "--out", run, "--tied", "--hidden", "16",
                               *small()]).returncode == 0
    params = read_safetensors(run / "model.safetensors")[0]
    params["head.weight"] = params["head.weight"] * 1.5
    save_weights(run / "model.safetensors", params)
    before = snapshot(run)
    for command in (["sample", "--checkpoint", run, "--impl", "naive", "--length", "5"],
                    ["eval", "--checkpoint", run, "--data", text, "--impl", "naive"],
                    ["export", "--checkpoint", run, "--format", "web", "--out", tmp_path / "site"],
                    ["export", "--checkpoint", run, "--format", "onnx", "--out", tmp_path / "model.onnx"],
                    ["train", "--data", text, "--out", tmp_path / "ft", "--init-from", run, *small()]):
        refused(run_cli.in_process(command), "head.weight differs from its embed.weight")
    assert not any((tmp_path / name).exists() for name in ("site", "model.onnx", "ft"))
    assert snapshot(run) == before
