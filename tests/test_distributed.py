"""Training under torchrun: CPU processes talking over gloo, checked against one process.

The reference is a single process trained on the same global batch: with equal
shards, DDP's averaged gradients are the gradients of the mean loss over all
B*T characters, so the weights must agree to float32 rounding.
"""
import json
import random
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("this torch build has no gloo backend", allow_module_level=True)

from charrnn.checkpoint import read_safetensors  # noqa: E402
from charrnn.errors import UserError  # noqa: E402
from charrnn.train.distributed import World  # noqa: E402

SMALL = ["--device", "cpu", "--hidden", 24, "--embed", 8, "--layers", 2, "--batch-size", 4, "--seq-len", 16,
         "--log-every", 1, "--dropout", 0]


@pytest.fixture(autouse=True)
def _own_cache(cli_cache_dir, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cli_cache_dir))  # no test writes into the user's ~/.cache


ONE_THREAD = {"OMP_NUM_THREADS": 1}  # torchrun sets 1 per process; the single-process reference must match


def torchrun(run_cli, args, nproc: int, timeout: float = 120) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node NPROC -m charrnn ARGS`, through conftest's run_cli."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", nproc]
    return run_cli(args, env=ONE_THREAD, timeout=timeout, launcher=launcher)


def free_port() -> int:
    """A free port below the kernel's ephemeral range (32768 and up on Linux). A port that bind(0)
    handed out and was closed again may be taken, before rank 0 listens on it, by any outgoing
    connection (the gloo ranks of a test beside this one); a CI run once hung so."""
    rng = random.SystemRandom()
    while True:
        port = rng.randrange(20000, 32768)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def launch_ranks(run_cli, args, world_size: int):
    """Start the ranks by hand with the environment torchrun gives them (one torch import fewer than
    torchrun, and a test can signal one rank). Output goes to files, which a rank cannot fill as it can
    a pipe nobody reads while `finish` waits on another rank."""
    port = free_port()
    procs = []
    for r in range(world_size):
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        proc = run_cli.popen(args, stdout=out, stderr=err,
                             env={**ONE_THREAD, "RANK": r, "LOCAL_RANK": r, "WORLD_SIZE": world_size,
                                  "LOCAL_WORLD_SIZE": world_size, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
        proc.outputs = (out, err)
        procs.append(proc)
    return procs


def charrnn(run_cli, args, nproc: int = 1, timeout: float = 120) -> subprocess.CompletedProcess:
    """`charrnn ARGS` as `nproc` ranks: rank 0's output, and the first non-zero exit code of any rank."""
    if nproc == 1:
        return run_cli(args, env=ONE_THREAD, timeout=timeout)
    procs = launch_ranks(run_cli, args, nproc)
    outputs = finish(procs, timeout)
    code = next((p.returncode for p in procs if p.returncode), 0)
    return subprocess.CompletedProcess(args, code, outputs[0][0], "".join(err for _, err in outputs))


def finish(procs, timeout: float = 120, grace: float = 20) -> list:
    """(stdout, stderr) of each rank, once all have exited. A rank that fails leaves the others waiting
    in a collective or the rendezvous: they are killed `grace` seconds later. A hang past `timeout`
    kills every rank and fails the test with what each one printed."""
    deadline, failed_at = time.monotonic() + timeout, None
    try:
        while [p.poll() for p in procs].count(None):   # every rank polled each time: any one may fail first
            now = time.monotonic()
            if failed_at is None and any(p.returncode for p in procs):
                failed_at = now
            if now > deadline or (failed_at is not None and now > failed_at + grace):
                break
            time.sleep(0.1)
        hung = [r for r, p in enumerate(procs) if p.poll() is None]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outputs = []
    for p in procs:
        for f in p.outputs:
            f.seek(0)
        outputs.append(tuple(f.read() for f in p.outputs))
        for f in p.outputs:
            f.close()
    if hung and not any(p.returncode > 0 for r, p in enumerate(procs) if r not in hung):
        pytest.fail(f"ranks {hung} still ran after {timeout} s, or {grace} s after another was killed; what each "
                    f"printed: {outputs}")
    return outputs


def weights(run: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(run / "model.safetensors"))


def progress(run: Path) -> dict:
    return read_safetensors(run / "resume.safetensors")[1]["progress"]


def val_losses(run: Path) -> list:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["val_loss"] for r in rows if "val_loss" in r]


@pytest.fixture
def text(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    words = ["the", "king", "queen", "of", "and", "to", "thou", "art", "my", "lord", "hath", "love"]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(words, 8)) + "." for _ in range(250)), encoding="utf-8")
    return path


def train_losses(run):
    return [r["train_loss"] for r in map(json.loads,
                                         (run / "metrics.jsonl").read_text().splitlines()) if "train_loss" in r]


def test_shard_rows_split_the_global_batch_into_contiguous_shares():
    assert [World(r, 4).shard_rows(8) for r in range(4)] == [(0, 2, 8), (2, 4, 8), (4, 6, 8), (6, 8, 8)]
    assert World().shard_rows(5) == (0, 5, 5)
    with pytest.raises(UserError, match="--batch-size 6 does not divide among 4 processes"):
        World(1, 4).shard_rows(6)


@pytest.mark.slow
@pytest.mark.parametrize("impl, launch, average", [("library", "torchrun", "none"), ("scratch", "ranks", "ema")])
def test_two_processes_train_exactly_like_one_on_the_global_batch(impl, launch, average, text, tmp_path, run_cli):
    """(With --weight-average ema, every process averages the same weights, and the saved average is one
    process's.)"""
    common = ["train", "--impl", impl, "--data", text, *SMALL, "--max-iters", 6, "--eval-every", 3,
              "--weight-average", average]
    two = (torchrun if launch == "torchrun" else charrnn)(run_cli, [*common, "--out", tmp_path / "two"], nproc=2)
    assert two.returncode == 0, two.stderr
    one = charrnn(run_cli, [*common, "--out", tmp_path / "one"])
    assert one.returncode == 0, one.stderr
    assert two.stdout.count("done: iteration 6") == 1 and two.stderr.count("iter 6: validation") == 1  # rank 0 speaks
    a, b = weights(tmp_path / "two"), weights(tmp_path / "one")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-5, err_msg=name)
    # the carried state is gathered from both ranks into the global batch's order
    arrays_two = read_safetensors(tmp_path / "two" / "resume.safetensors")[0]
    arrays_one = read_safetensors(tmp_path / "one" / "resume.safetensors")[0]
    assert any(k.startswith("average/") for k in arrays_two) == (average == "ema")
    if average == "ema":   # model.safetensors, compared above, is the average, not the last step's weights
        assert any(not np.array_equal(a[k], arrays_two[f"param/{k}"]) for k in a)
    for name in (k for k in arrays_one if k.startswith("state/")):
        assert arrays_two[name].shape == arrays_one[name].shape
        np.testing.assert_allclose(arrays_two[name], arrays_one[name], rtol=0, atol=1e-5, err_msg=name)
    # validation is sharded, then all-reduced: the same mean as one process
    np.testing.assert_allclose(val_losses(tmp_path / "two"), val_losses(tmp_path / "one"), rtol=0, atol=1e-4)
    # the logged training loss is the whole world's mean, not rank 0's half of the batch (audit #20.5)
    np.testing.assert_allclose(train_losses(tmp_path / "two"), train_losses(tmp_path / "one"), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_resume_with_a_different_number_of_processes(text, tmp_path, run_cli):
    """2 processes -> 1 -> 2 (10 windows an epoch: the state is carried mid-epoch and reset at the
    boundaries) ends where 1 process trained straight ends, with the same weights."""
    common = ["train", "--data", text, *SMALL, "--batch-size", 8, "--seq-len", 96, "--eval-every", 100]
    run, straight = tmp_path / "run", tmp_path / "straight"
    first = charrnn(run_cli, [*common, "--out", run, "--max-iters", 6], nproc=2)
    assert first.returncode == 0, first.stderr
    for nproc, until in ((1, 13), (2, 20)):
        before = progress(run)
        r = charrnn(run_cli, ["train", "--data", text, "--out", run, "--resume", "--max-iters", until], nproc=nproc)
        assert r.returncode == 0, r.stderr
        where = f"iteration {before['iteration']} (epoch {before['epoch']}, window {before['window']})"
        assert f"resuming {run} at {where}" in r.stdout
        assert progress(run)["iteration"] == until
    reference = charrnn(run_cli, [*common, "--out", straight, "--max-iters", 20])
    assert reference.returncode == 0, reference.stderr
    assert progress(run)["epoch"] == progress(straight)["epoch"] >= 1
    assert progress(run)["window"] == progress(straight)["window"]
    a, b = weights(run), weights(straight)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", 3], "charrnn: error: --batch-size 3 does not divide among 2 processes"),
    (["--impl", "naive"], "charrnn: error: --impl naive cannot train under torchrun"),
])
def test_refusals_under_torchrun_are_one_line_and_exit_2_on_every_rank(flags, message, text, tmp_path, run_cli):
    procs = launch_ranks(run_cli, ["train", "--data", text, "--out", tmp_path / "run", "--max-iters", 2, *flags],
                         world_size=2)
    for proc, (_stdout, stderr) in zip(procs, finish(procs, 60)):
        assert proc.returncode == 2, stderr
        assert stderr.strip().startswith(message) and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "run").exists()


def test_a_master_port_in_use_is_refused_in_one_line(text, tmp_path, run_cli):
    """Ranks started by hand on a MASTER_PORT another program holds: rank 0 says so and exits 2 (it
    printed torch's traceback), before the run directory exists."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        r = run_cli(["train", "--data", text, "--out", tmp_path / "run", *SMALL, "--max-iters", 2], timeout=120,
                    env={**ONE_THREAD, "RANK": 0, "LOCAL_RANK": 0, "WORLD_SIZE": 2, "LOCAL_WORLD_SIZE": 2,
                         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"charrnn: error: MASTER_PORT {port} is already in use on this machine; set a free "
                                "one, or launch with torchrun --standalone, which picks one"), r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_naive_under_torchrun_fails_with_its_message(text, tmp_path, run_cli):
    r = torchrun(run_cli, ["train", "--impl", "naive", "--data", text, "--out", tmp_path / "run", "--max-iters", 2],
                 nproc=2)
    assert r.returncode != 0  # torchrun's own exit code; each worker exited 2
    assert "charrnn: error: --impl naive cannot train under torchrun (2 processes)" in r.stderr
    assert "exitcode  : 2" in r.stderr


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_every_rank_at_the_same_iteration(text, tmp_path, run_cli):
    run = tmp_path / "run"
    procs = launch_ranks(run_cli, ["train", "--data", text, "--out", run, *SMALL, "--max-iters", 100000,
                                   "--eval-every", 100000],
                         world_size=2)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 3:
        assert time.time() < deadline and all(p.poll() is None for p in procs), finish(procs, 1)
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    outputs = finish(procs)
    assert [p.returncode for p in procs] == [0, 0], outputs
    iteration = progress(run)["iteration"]
    assert f"another process was asked to stop: saving a checkpoint at iteration {iteration}" in outputs[0][1]
    assert f"done: iteration {iteration}," in outputs[0][0]


class _FakeWorld(World):
    """A world whose `max` collective answers as the other ranks would."""

    def __init__(self, reduce_max, rank=0):
        super().__init__(rank=rank, size=2)
        self.reduce_max = reduce_max

    def max(self, values):
        return self.reduce_max(list(values))

    def sum(self, values):
        return list(values)

    def gather_state(self, states):
        return states

    def shard_rows(self, batch_size):
        return (0, batch_size // 2, batch_size)


def _tiny_trainer(tmp_path, reduce_max, logs, is_main=True):
    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.data.batching import make_streams
    from charrnn.models import build_model
    from charrnn.train.learners import TorchLearner
    from charrnn.train.loop import Trainer

    data = np.random.default_rng(1).integers(0, 7, size=4 * 50 + 1).astype(np.uint8)
    cfg = TrainConfig(max_time=3600, eval_every=1000, log_every=1, out=str(tmp_path))
    model = build_model("library", ModelConfig(vocab_size=7, layers=1, hidden=8, embed=4))
    stepper = TorchLearner(model, "adam", 1e-2, 0.0, 5.0, torch.device("cpu"))
    return Trainer(cfg, stepper, make_streams(data, 4, 10), None, tmp_path,
                   world=_FakeWorld(reduce_max, rank=0 if is_main else 1), log=logs.append)


def test_every_rank_stops_on_the_slowest_clock(tmp_path):
    """--max-time: a rank whose own clock is short of the budget stops when another rank's is past it."""
    other_clock = iter([0, 0, 0, 7200])  # as all_reduce(MAX) returns it: before the loop, then after each step

    def reduce_max(values):
        return [max(values[0], next(other_clock)), *values[1:]]

    trainer = _tiny_trainer(tmp_path, reduce_max, [], is_main=False)  # a rank > 0: it writes nothing
    assert trainer.run().iteration == 3
    assert trainer.progress.elapsed >= 7200
    assert list(tmp_path.iterdir()) == []


def test_a_loss_blown_up_on_another_rank_stops_this_one_with_the_same_error(tmp_path):
    """Divergence is decided collectively, as --max-time is: no rank trains on (or waits) alone (audit #20)."""
    from charrnn.errors import TrainingDiverged

    other_blew_up = iter([0.0, 0.0, 0.0, 1.0])  # before the loop, then after each step: another rank's NaN at step 3

    def reduce_max(values):
        return [*values[:2], max(values[2], next(other_blew_up))] if len(values) == 3 else values

    with pytest.raises(TrainingDiverged, match="blew up on another process at iteration 3"):
        _tiny_trainer(tmp_path, reduce_max, []).run()


def test_a_stop_request_on_another_rank_stops_this_one(tmp_path):
    other_asks = iter([0.0, 0.0, 1.0])  # another rank got SIGTERM during step 2

    def reduce_max(values):
        return [values[0], max(values[1], next(other_asks)), *values[2:]]

    logs = []
    assert _tiny_trainer(tmp_path, reduce_max, logs).run().iteration == 2
    assert "another process was asked to stop: saving a checkpoint at iteration 2" in logs
