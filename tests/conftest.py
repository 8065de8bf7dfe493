"""Shared fixtures: the real corpus when present, a small made-up text, and the CLI runner.

Subprocesses get their own XDG cache directory so no test writes into the
user's ~/.cache; CHARRNN_DATA_DIR passes through unless a test overrides it.
"""
import contextlib
import io
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]


# Hypothesis draws the same examples on every run and machine (derandomize; no example database), so a
# run's result depends on the code alone: a failure it finds is kept as an @example beside the test.
# HYPOTHESIS_PROFILE=explore draws fresh examples, to look for new failures by hand.
settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


def pytest_configure(config):
    """One torch thread in this process, as run_cli gives its subprocesses (OMP_NUM_THREADS=1): the tests'
    models are tiny, and on a busy CPU torch's second thread makes every small op wait for a time slice
    (an in-process library-engine eval took 20 s instead of 0.2 s while another process used both cores)."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """tinyshakespeare.txt from $CHARRNN_DATA_DIR; the test is skipped when it is not there."""
    directory = os.environ.get("CHARRNN_DATA_DIR")
    if not directory:
        pytest.skip("CHARRNN_DATA_DIR is not set; tinyshakespeare.txt is not available")
    path = Path(directory).expanduser() / "tinyshakespeare.txt"
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    return path


@pytest.fixture(scope="session")
def cli_cache_dir(tmp_path_factory) -> Path:
    """XDG_CACHE_HOME for every CLI subprocess of the session."""
    return tmp_path_factory.mktemp("xdg-cache")


class CharrnnCLI:
    """`python -m charrnn ARGS` in a subprocess: the one way tests start the command.

    Every process gets this checkout first on PYTHONPATH and the session's private XDG cache, so no
    test imports an installed charrnn or writes into the user's ~/.cache, and one thread unless
    OMP_NUM_THREADS is set. `env` entries override
    those defaults (a value of None removes the variable); `launcher` goes between the interpreter
    and `-m charrnn` (e.g. torch.distributed.run's flags).
    """

    def __init__(self, cache_dir: Path):
        self.cache_dir = cache_dir

    def env(self, overrides=None) -> dict:
        """The environment of a CLI subprocess (also for `python -c` snippets that import charrnn)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["XDG_CACHE_HOME"] = str(self.cache_dir)
        env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: more threads only contend on a busy machine
        for key, value in (overrides or {}).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(value)
        return env

    @staticmethod
    def command(args, launcher=()) -> list:
        return [sys.executable, *map(str, launcher), "-m", "charrnn", *map(str, args)]

    def __call__(self, args, env=None, timeout=120, launcher=(), **kw) -> subprocess.CompletedProcess:
        """Run to the end: a CompletedProcess with text stdout and stderr."""
        return subprocess.run(self.command(args, launcher), env=self.env(env), capture_output=True, text=True,
                              timeout=timeout, **kw)

    def popen(self, args, env=None, launcher=(), **kw) -> subprocess.Popen:
        """Start it and return at once (to signal it, or to read its output as it comes); pipes text by default."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("text", True)
        return subprocess.Popen(self.command(args, launcher), env=self.env(env), **kw)

    @staticmethod
    def in_process(args) -> subprocess.CompletedProcess:
        """The same command through `charrnn.cli.main` (what `charrnn` calls) in this process: no interpreter
        or torch import to pay for, where a test needs no fresh process (signals, resume from a cold start).
        The signal handlers that `train` installs are put back, so pytest's Ctrl-C still works."""
        from charrnn.cli import main

        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main([str(a) for a in args])
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
        return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def run_cli(cli_cache_dir) -> CharrnnCLI:
    """run_cli(args, env=None, timeout=120, **kw) -> CompletedProcess of `python -m charrnn ARGS`;
    run_cli.popen(args, ...) starts one; run_cli.env(...) is the environment they get;
    run_cli.in_process(args) runs the command in this process (see CharrnnCLI)."""
    return CharrnnCLI(cli_cache_dir)


@pytest.fixture
def tiny_text(tmp_path) -> Path:
    """A few thousand characters of made-up English-like text (ASCII only), written to tmp_path."""
    rng = random.Random(1234)
    subjects = ["The old fox", "A quiet river", "Every lantern", "My neighbour", "That small bird"]
    verbs = ["watches", "remembers", "carries", "follows", "forgets"]
    objects = ["the morning light", "a broken wheel", "seven stones", "the last letter", "our garden"]
    lines = []
    while sum(len(line) + 1 for line in lines) < 4000:
        sentence = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}"
        lines.append(sentence + rng.choice([".", "!", "?", ", and then waits."]))
    path = tmp_path / "tiny.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_word_text(path: Path, lines: int) -> Path:
    """`lines` sentences of eight words drawn from twelve (seeded): a small text every engine learns quickly."""
    import numpy as np

    rng = np.random.default_rng(0)
    words = ["the", "king", "queen", "of", "and", "to", "thou", "art", "my", "lord", "hath", "love"]
    path.write_text("\n".join(" ".join(rng.choice(words, 8)) + "." for _ in range(lines)), encoding="utf-8")
    return path


class ScriptedValidation:
    """A learner whose validation losses are given (early stopping, a loss that overflowed): the inner
    learner does everything else."""

    def __init__(self, inner, losses):
        self.inner, self.losses = inner, iter(losses)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def eval_loss(self, x, y, state, labels=None):
        return next(self.losses), state
