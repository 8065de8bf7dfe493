"""TensorBoard events beside metrics.jsonl, read back with TensorBoard's own readers.

EventAccumulator (TensorBoard's Python reader) reads every run's events here; the slow test asks a real
`tensorboard --logdir` server (its Rust data server, another reader). EventAccumulator reads records with
TensorFlow when TensorFlow is installed (5 s to import) and with TensorBoard's own stub otherwise, the one a
TensorBoard without TensorFlow runs: these tests use the stub, to stay quick.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from charrnn.train.tensorboard import EVENTS_PREFIX, SAMPLE_TAG, sample_text, tag_for

needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="tensorboard is not installed (the tensorboard extra)")
if "tensorflow" not in sys.modules:  # see the module docstring
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))

FLAGS = ["--cell", "gru", "--hidden", "12", "--embed", "4", "--layers", "1", "--batch-size", "2", "--seq-len", "8",
         "--log-every", "3", "--eval-every", "5", "--sample-every", "5", "--val-frac", "0.2"]


def train(run_cli, text, out, *extra, impl="naive"):
    done = run_cli.in_process(["train", "--data", text, "--out", out, "--impl", impl, *FLAGS, *extra])
    assert done.returncode == 0, done.stderr
    return done


def read_events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})  # 0: keep every event
    events.Reload()
    return events


def rows(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_events_equal_metrics(run_dir: Path) -> int:
    """Every number of every metrics.jsonl row is a scalar at the row's iteration, once, equal to it; and the
    events hold nothing else. Returns how many scalars were compared."""
    events = read_events(run_dir)
    expected = {}
    for row in rows(run_dir):
        for key, value in row.items():
            if key != "iter":
                # a row and the next at the same iteration share epoch and elapsed_s: one point each
                assert expected.setdefault((tag_for(key), row["iter"]), value) == value
    tags = {tag for tag, _ in expected}
    assert set(events.Tags()["scalars"]) == tags
    got = {}
    for tag in tags:
        for event in events.Scalars(tag):
            assert (tag, event.step) not in got, f"{tag} has two points at step {event.step}"
            got[(tag, event.step)] = event.value
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        # events store scalars as float32: the JSON number rounded to float32, exactly
        assert got[key] == np.float32(value), (key, got[key], value)
    return len(got)


def printed_samples(stderr: str) -> dict:
    """{iteration: sample} from the training log's '--- sample at iteration N ---' blocks."""
    found = {}
    for block in stderr.split("--- sample at iteration ")[1:]:
        head, rest = block.split(" ---\n", 1)
        found[int(head)] = rest.split("\n---\n", 1)[0]
    return found


@needs_tensorboard
@pytest.mark.parametrize("impl", ["naive", "library"])
def test_events_hold_every_metrics_row_and_the_samples(impl, tiny_text, tmp_path, run_cli):
    out = tmp_path / "run"
    done = train(run_cli, tiny_text, out, "--max-iters", "11", impl=impl)
    assert len(list(out.glob(EVENTS_PREFIX + "*"))) == 1
    compared = assert_events_equal_metrics(out)
    keys = {key for row in rows(out) for key in row}
    assert {"train_loss", "train_bpc", "val_loss", "val_bpc", "lr", "chars_per_sec"} <= keys
    assert compared >= 6 * 5  # six train rows (3, 5, 6, 9, 10, 11), and validation at 5, 10, 11
    samples = read_events(out).Tensors(SAMPLE_TAG)
    shown = {e.step: sample_text(e.tensor_proto.string_val[0].decode("utf-8")) for e in samples}
    assert shown == printed_samples(done.stderr) and sorted(shown) == [5, 10]


@needs_tensorboard
@pytest.mark.slow
def test_tf_engine_logs_through_the_same_place(tiny_text, tmp_path, run_cli):
    pytest.importorskip("tensorflow")
    out = tmp_path / "run"
    train(run_cli, tiny_text, out, "--max-iters", "6", impl="tf")
    assert assert_events_equal_metrics(out) > 0


@needs_tensorboard
def test_resume_replaces_the_steps_after_the_checkpoint(tiny_text, tmp_path, run_cli):
    """A run killed after its checkpoint at 6 had logged up to 12 (with another --lr, so those points differ):
    after the resume, each step has one point, the resumed run's, as metrics.jsonl keeps them."""
    out = tmp_path / "run"
    train(run_cli, tiny_text, out, "--max-iters", "6")
    at_checkpoint = tmp_path / "at-checkpoint"
    shutil.copytree(out, at_checkpoint, ignore=shutil.ignore_patterns(EVENTS_PREFIX + "*"))
    train(run_cli, tiny_text, out, "--resume", "--max-iters", "12", "--lr", "0.5")   # the lost session
    assert max(e.step for e in read_events(out).Scalars("train/lr")) == 12
    for path in at_checkpoint.iterdir():                  # the kill: the run directory as it was at 6, but
        shutil.copy2(path, out / path.name)               # the lost session's events are still there
    train(run_cli, tiny_text, out, "--resume", "--max-iters", "14")
    assert len(list(out.glob(EVENTS_PREFIX + "*"))) == 3
    assert assert_events_equal_metrics(out) > 0
    lr = {e.step: e.value for e in read_events(out).Scalars("train/lr")}
    assert lr[9] == lr[3] != np.float32(0.5)              # the resumed run's rate, not the lost session's


@needs_tensorboard
def test_a_fresh_run_removes_an_earlier_runs_events(tiny_text, tmp_path, run_cli):
    out = tmp_path / "run"
    train(run_cli, tiny_text, out, "--max-iters", "9")
    train(run_cli, tiny_text, out, "--max-iters", "4", "--overwrite")
    assert len(list(out.glob(EVENTS_PREFIX + "*"))) == 1
    assert assert_events_equal_metrics(out) > 0
    assert max(e.step for e in read_events(out).Scalars("loss/train")) == 4


@needs_tensorboard
def test_a_fresh_run_keeps_event_files_another_program_wrote(tiny_text, tmp_path, run_cli):
    """--out on a folder that is not a charrnn run (a TensorBoard logdir, say): only charrnn's own event files
    (named ...charrnn) are an earlier run's; another writer's are the user's and stay, byte for byte."""
    out = tmp_path / "logs"
    out.mkdir()
    theirs = out / f"{EVENTS_PREFIX}1700000000.host.42"       # SummaryWriter's naming: no .charrnn
    theirs.write_bytes(b"another program's events")
    train(run_cli, tiny_text, out, "--max-iters", "3")
    assert theirs.read_bytes() == b"another program's events"
    assert len(list(out.glob(EVENTS_PREFIX + "*.charrnn"))) == 1


def test_without_tensorboard_one_line_says_how_to_install_it(tiny_text, tmp_path, run_cli, monkeypatch):
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)   # import tensorboard -> ImportError
    out = tmp_path / "run"
    done = train(run_cli, tiny_text, out, "--max-iters", "6")
    notes = [line for line in done.stderr.splitlines() if "tensorboard" in line.lower()]
    assert len(notes) == 1 and "pip install 'charrnn-toolkit[tensorboard]'" in notes[0]
    assert not list(out.glob(EVENTS_PREFIX + "*")) and len(rows(out)) >= 3


@needs_tensorboard
def test_a_full_disk_while_writing_events_is_one_line(tiny_text, tmp_path, run_cli, monkeypatch):
    import errno

    from charrnn.train.tensorboard import EventLog

    def no_space(self, event):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "run"
    train(run_cli, tiny_text, out, "--max-iters", "3")
    monkeypatch.setattr(EventLog, "_write", no_space)
    done = run_cli.in_process(["train", "--data", tiny_text, "--out", out, "--impl", "naive", *FLAGS, "--resume",
                               "--max-iters", "6"])
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "cannot write a checkpoint" in done.stderr and os.strerror(errno.ENOSPC) in done.stderr


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_tensorboard
@pytest.mark.slow
def test_tensorboard_server_shows_every_run(tiny_text, tmp_path, run_cli):
    """`tensorboard --logdir runs/`: both runs listed, each tag's points those of metrics.jsonl."""
    binary = Path(sys.executable).with_name("tensorboard")
    if not binary.exists():
        pytest.skip("the tensorboard command is not installed beside this Python")
    runs = tmp_path / "runs"
    train(run_cli, tiny_text, runs / "first", "--max-iters", "6")
    train(run_cli, tiny_text, runs / "second", "--max-iters", "4", impl="library")
    port = free_port()
    server = subprocess.Popen([str(binary), "--logdir", str(runs), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/data"
    try:
        listed, deadline = [], time.monotonic() + 60
        while sorted(listed) != ["first", "second"]:
            assert time.monotonic() < deadline and server.poll() is None, f"tensorboard listed {listed}"
            time.sleep(0.5)
            try:
                listed = json.load(urllib.request.urlopen(base + "/runs", timeout=5))
            except OSError:
                continue
        for name in listed:
            for key, tag in (("train_loss", "loss/train"), ("val_bpc", "bpc/validation")):
                want = [[r["iter"], np.float32(r[key])] for r in rows(runs / name) if key in r]
                while True:  # the server loads files in the background: wait for the last point
                    url = f"{base}/plugin/scalars/scalars?run={name}&tag={tag}"
                    got = [[step, value] for _, step, value in json.load(urllib.request.urlopen(url, timeout=5))]
                    if len(got) >= len(want) or time.monotonic() > deadline:
                        break
                    time.sleep(0.5)
                assert got == want, (name, tag)
    finally:
        server.terminate()
        server.wait(timeout=20)
