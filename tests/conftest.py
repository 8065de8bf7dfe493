"""Shared fixtures: the real corpus when present, a small made-up text, and a CLI runner.

Subprocesses get their own XDG cache directory so no test writes into the
user's ~/.cache; CHARRNN_DATA_DIR passes through unless a test overrides it.
"""
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.fixture
def run_cli(cli_cache_dir):
    """run_cli(args, env=None, timeout=120, **kw) -> CompletedProcess of `python -m charrnn ARGS`.

    `env` entries override the defaults; a value of None removes the variable.
    """

    def run(args, env=None, timeout=120, **kw):
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
        full_env["XDG_CACHE_HOME"] = str(cli_cache_dir)
        for key, value in (env or {}).items():
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = str(value)
        return subprocess.run([sys.executable, "-m", "charrnn", *map(str, args)], env=full_env,
                              capture_output=True, text=True, timeout=timeout, **kw)

    return run


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
