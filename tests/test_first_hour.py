"""The first hour of a new user (issue 15): what to run after the quick start, `eval --unknown skip`,
contradictory sampling flags refused, help that lists choices and defaults, mistyped flags answered
with the closest one, and README examples that do what they say.

Commands run in this process through `charrnn.cli.main` (what `charrnn` calls) on a small naive-engine
run trained once for the module.
"""
import contextlib
import io
import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import CharrnnCLI

import charrnn
from charrnn.cli import build_parser, main
from charrnn.config import CELLS, DEVICES, IMPLS, OPTIMIZERS, SCHEDULES

ROOT = Path(__file__).resolve().parents[1]
TEXT = "".join(f"the king {w} of love, my lord hath {n} queens.\n"
               for n in range(40) for w in ("and", "to", "thou", "art"))


def run(*args) -> tuple:
    """`charrnn ARGS` in this process (conftest's CharrnnCLI.in_process): (exit code, stdout, stderr)."""
    done = CharrnnCLI.in_process(args)
    return done.returncode, done.stdout, done.stderr


def assert_one_line_error(result, *needles):
    code, out, err = result
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith("charrnn: error:") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run directory, its training text file): a 1x16 LSTM after 6 iterations of the naive engine."""
    base = tmp_path_factory.mktemp("first-hour")
    data = base / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    code, _, err = run("train", "--data", data, "--out", base / "run", "--impl", "naive", "--layers", 1,
                       "--hidden", 16, "--embed", 8, "--batch-size", 4, "--seq-len", 16, "--max-iters", 6,
                       "--eval-every", 6, "--seed", 3)
    assert code == 0, err
    return base / "run", data


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


# -- eval --unknown error|skip -----------------------------------------------------------------------

ODD = "the king Zé of love,\nmy lord€ hath 3 queens. Zé."   # Z, é, €: not in TEXT; Z twice, é twice


def test_eval_unknown_skip_reports_the_count_and_is_the_loss_without_them(trained, tmp_path):
    run_dir, _ = trained
    odd, clean = tmp_path / "odd.txt", tmp_path / "clean.txt"
    odd.write_text(ODD, encoding="utf-8")
    without = "".join(c for c in ODD if c not in "Zé€")
    clean.write_text(without, encoding="utf-8")
    common = ("eval", "--checkpoint", run_dir, "--impl", "naive")

    code, out, err = run(*common, "--data", odd, "--unknown", "skip", "--json")
    assert code == 0, err
    skipped = json.loads(out)
    reference = json.loads(run(*common, "--data", clean, "--json")[1])
    assert skipped["skipped"] == 5 and skipped["skipped_chars"] == ["Z", "é", "€"]
    assert skipped["characters"] == len(without) - 1 == reference["characters"]
    assert math.isclose(skipped["loss"], reference["loss"], rel_tol=1e-12)
    assert reference["skipped"] == 0 and reference["skipped_chars"] == []

    code, out, _ = run(*common, "--data", odd, "--unknown", "skip")
    assert code == 0 and out.count("\n") == 2 and out.splitlines()[1].startswith("model trained on ")
    assert f"over {len(without) - 1} predicted characters; skipped 5 outside the model's vocabulary: 'Z' 'é' '€'" in out
    assert f"loss {reference['loss']:.4f} nats/char" in out

    # the Python API: the same numbers, from a str
    model = charrnn.load(run_dir, impl="naive")
    result = model.evaluate(ODD, unknown="skip")
    assert (result.skipped, result.skipped_chars, result.characters) == (5, ("Z", "é", "€"), len(without) - 1)
    assert math.isclose(result.loss, model.evaluate(without).loss, rel_tol=1e-12)
    assert math.isclose(result.loss, reference["loss"], rel_tol=1e-9)


def test_eval_unknown_characters_are_refused_with_a_hint_each_audience_can_use(trained, tmp_path):
    run_dir, _ = trained
    odd = tmp_path / "odd.txt"
    odd.write_text(ODD, encoding="utf-8")
    assert_one_line_error(run("eval", "--checkpoint", run_dir, "--impl", "naive", "--data", odd),
                          str(odd), "'Z' 'é' '€'", "--unknown skip")
    model = charrnn.load(run_dir, impl="naive")
    with pytest.raises(charrnn.UserError) as refused:
        model.evaluate(ODD)
    assert "unknown='skip'" in str(refused.value) and "--" not in str(refused.value)
    with pytest.raises(charrnn.UserError, match="unknown= 'drop' is not one of error, skip"):
        model.evaluate(ODD, unknown="drop")
    with pytest.raises(charrnn.UserError, match="fewer than 2 characters left"):
        model.evaluate("ZéZ€t", unknown="skip")
    # a prime refused in the web page names no flag and no Python argument
    with pytest.raises(charrnn.UserError) as web:
        model.prime("Zé", audience="web")
    assert "--unknown" not in str(web.value) and "unknown=" not in str(web.value)


# -- sample: contradictory or empty requests are refused, --json reports what was used --------------

@pytest.mark.parametrize("flags, needles", [
    (("--beam", 3, "--num-samples", 2), ("--beam", "--num-samples")),
    (("--beam", 3, "--top-p", 0.9), ("--beam", "--top-p")),
    (("--beam", 3, "--temperature", 0.7), ("--beam", "--temperature")),
    (("--beam", 3, "--top-k", 5, "--seed", 1), ("--beam", "--top-k", "--seed")),
    (("--beam", 3, "--greedy"), ("--beam", "--greedy")),
    (("--greedy", "--temperature", 0.7), ("--greedy", "--temperature")),
    (("--length", 0), ("--length 0",)),
    (("--length", 0, "--json"), ("--length 0",)),
])
def test_contradictory_or_empty_sample_requests_are_one_line_exit_2(trained, flags, needles):
    assert_one_line_error(run("sample", "--checkpoint", trained[0], "--impl", "naive", "--prime", "the ", *flags),
                          *needles)


def test_sample_json_reports_the_settings_used(trained):
    common = ("sample", "--checkpoint", trained[0], "--impl", "naive", "--prime", "the ", "--length", 12, "--json")
    code, out, err = run(*common, "--top-k", 4, "--top-p", 0.8, "--temperature", 0.7, "--seed", 2,
                         "--num-samples", 2)
    assert code == 0, err
    sampled = json.loads(out)
    assert {k: sampled[k] for k in ("prime", "length", "temperature", "top_k", "top_p", "greedy", "seed", "impl",
                                    "which", "quantize")} == {
        "prime": "the ", "length": 12, "temperature": 0.7, "top_k": 4, "top_p": 0.8, "greedy": False, "seed": 2,
        "impl": "naive", "which": "latest", "quantize": None}
    assert len(sampled["samples"]) == 2 and "beam" not in sampled
    code, out, err = run(*common, "--beam", 3)
    assert code == 0, err
    beam = json.loads(out)
    assert beam["beam"] == 3 and len(beam["samples"]) == 1 and beam["samples"][0].startswith("the ")
    assert not {"temperature", "top_k", "top_p", "greedy", "seed"} & set(beam)  # beam search uses none of them


# -- help ------------------------------------------------------------------------------------------

def help_of(command: str) -> str:
    code, out, err = run(command, "--help") if command else run("--help")
    return " ".join(out.split())   # argparse wraps lines; compare as one line


def subparser(command: str):
    actions = [a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"]
    return actions[0].choices[command]


def test_train_help_lists_choices_and_real_defaults(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag, choices in [("--impl", IMPLS), ("--cell", CELLS), ("--optimizer", OPTIMIZERS),
                          ("--schedule", SCHEDULES), ("--device", DEVICES), ("--preset", ("auto", "cpu-10min", "gpu"))]:
        assert f"{flag} {{{','.join(choices)}}}" in text, flag
    assert "naive,scratch,library" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    for needle in ["(default: library)", "(default: lstm)", "(default: 256)", "(default: adagrad for --impl naive, "
                   "adamw otherwise)", "(default: 0.1 for adagrad, 2e-3 for adam and adamw)", "(default: no limit)",
                   "(default: 10 when neither --max-iters nor --max-time is given)", "(default: 1337)"]:
        assert needle in text, needle
    # every flag that takes a value states its default
    for action in subparser("train")._actions:
        if action.option_strings and action.nargs != 0:
            assert "(default: " in action.help and "None" not in action.help, action.option_strings


@pytest.mark.parametrize("command", ["sample", "eval", "serve", "export"])
def test_sample_eval_serve_and_export_help_state_every_default(command):
    parser = subparser(command)
    one_of_required = {id(a) for group in parser._mutually_exclusive_groups if group.required
                       for a in group._group_actions}                  # --checkpoint | --onnx
    for action in parser._actions:
        if (not action.option_strings or action.nargs == 0 or action.required or id(action) in one_of_required
                or action.dest == "prime_file"):
            continue   # a flag without a value, a required one, or --prime-file (the alternative to --prime)
        assert "(default: " in action.help and "None" not in action.help, (command, action.option_strings)


@pytest.mark.parametrize("args, suggestion, see", [
    (["sample", "--checkpoint", "r", "--temprature", "0.5"], "did you mean --temperature?", "charrnn sample --help"),
    (["sample", "--checkpoint", "r", "--top_k=3"], "did you mean --top-k?", "charrnn sample --help"),
    (["train", "--hiden", "64"], "did you mean --hidden?", "charrnn train --help"),
    (["eval", "--checkpoint", "r", "--data", "d", "--prime", "x"], "--prime is an option of 'charrnn sample'",
     "charrnn eval --help"),
    (["train", "--impl", "libary"], "did you mean 'library'?", "charrnn train --help"),
    (["train", "--preset", "cpu"], "did you mean 'cpu-10min'?", "charrnn train --help"),
    (["sampel", "--checkpoint", "r"], "did you mean 'sample'?", "charrnn --help"),
    # a value that is a flag (or '--') cannot be taken as --prime's: the error says how to give it
    (["sample", "--checkpoint", "r", "--prime", "--"], "write --prime=VALUE", "charrnn sample --help"),
    (["sample", "--checkpoint", "r", "--prime", "-h"], "write --prime=VALUE", "charrnn sample --help"),
    (["sample", "--checkpoint", "r", "--prime", "--temp"], "write --prime=VALUE", "charrnn sample --help"),
])
def test_a_mistyped_flag_gets_the_closest_one_and_the_command_help_in_one_line(args, suggestion, see):
    assert_one_line_error(run(*args), suggestion, f"(see '{see}')")


@pytest.mark.parametrize("name", ["no-such-file.txt", "."])
def test_info_errors_speak_of_its_argument_not_of_data(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run("info", name)
    assert_one_line_error((code, out, err), f"charrnn: error: {name}")
    assert "--data" not in err


# -- after the quick start -------------------------------------------------------------------------

def quickstart_tail() -> str:
    script = (ROOT / "scripts" / "quickstart.sh").read_text()
    return script[script.index("# next commands"):]


@pytest.mark.parametrize("data, prime", [("tinyshakespeare", "ROMEO:"), ("pystdlib", "def ")])
def test_quickstart_ends_with_the_next_commands_on_the_real_run(data, prime, tmp_path):
    """The script's last lines, run with the variables the script sets: commands that name the run made."""
    setup = f'charrnn=.venv/bin/charrnn; out="runs/my run"; data={data}\n'
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", setup + quickstart_tail()], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "charrnn is installed in .venv" in lines[0] and str(tmp_path) in lines[0]
    assert "source .venv/bin/activate" in lines[1] and ".venv/bin/charrnn" in lines[1]
    commands = [line.split("#")[0].strip() for line in lines[2:]]
    run_dir = r"runs/my\ run"
    assert f'charrnn sample --checkpoint {run_dir} --which best --prime "{prime}"' in commands[0]
    assert any(c.startswith(f"charrnn eval --checkpoint {run_dir}") and "--unknown skip" in c for c in commands)
    assert any(c.startswith(f"charrnn serve --checkpoint {run_dir}") for c in commands)
    assert "pip install -e '.[serve]'" in done.stdout   # no .venv here, so no FastAPI in it


def test_readme_quick_start_says_how_to_run_charrnn():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick_start = readme[readme.index("## Quick start"):readme.index("## Usage")]
    assert "source .venv/bin/activate" in quick_start and ".venv/bin/charrnn" in quick_start


def test_readme_python_example_runs_and_ends_the_streamed_line(trained, tmp_path, monkeypatch):
    """The README's Python API block, run on a small run: the beam result starts on a line of its own."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    run_dir, _ = trained
    (tmp_path / "valid.txt").write_text(TEXT[-400:], encoding="utf-8")
    code = code.replace('"runs/shakespeare"', repr(str(run_dir))).replace('"ROMEO:"', '"the "')
    code = code.replace('charrnn.load(' + repr(str(run_dir)) + ', quantize="int8")',
                        'charrnn.load(' + repr(str(run_dir)) + ', impl="naive", quantize="int8")')
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        exec(compile(code, "README.md", "exec"), {})
    beam = charrnn.load(run_dir, impl="naive").beam("the ", 60, beam=5)
    assert ("\n" + beam + "\n") in out.getvalue()
    assert np.isfinite(float(out.getvalue().strip().splitlines()[-1]))
