"""What this machine can do is found by trying (charrnn/capabilities.py), and every command follows it.

Each test runs on the machine as it is and once more as a CPU without bfloat16 units, two ways:
oneDNN held to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2: the real refusal of a bf16 LSTM, which an AVX-512 machine
then reproduces) and CHARRNN_FAKE_CPU=no-bf16 (every bf16 trial fails). So the fallbacks run wherever
the suite does, and on an AVX2-only CPU the first case is that CPU itself.
"""
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

# held to AVX2 is oneDNN's own refusal, with no fake on top, even where the whole suite runs under CHARRNN_FAKE_CPU
AS_IS, HELD_TO_AVX2 = {}, {"ONEDNN_MAX_CPU_ISA": "AVX2", "CHARRNN_FAKE_CPU": None}
FAKED = {"CHARRNN_FAKE_CPU": "no-bf16"}
MACHINES = pytest.mark.parametrize("machine", [AS_IS, HELD_TO_AVX2, FAKED],
                                   ids=["as-is", "onednn-avx2", "fake-no-bf16"])
SMALL = ["--hidden", 16, "--embed", 8, "--batch-size", 4, "--seq-len", 16, "--eval-every", 1000, "--log-every", 1000]


@pytest.fixture
def text_file(tmp_path):
    from conftest import write_word_text

    return write_word_text(tmp_path / "corpus.txt", 300)


def bf16_trainable(run_cli, machine, impl="library", cell="lstm") -> bool:
    """capabilities.bf16_training in a fresh process with this environment (oneDNN reads it at start)."""
    code = ("import torch; from charrnn import capabilities; "
            f"print(capabilities.bf16_training(torch.device('cpu'), {impl!r}, {cell!r}))")
    r = subprocess.run([sys.executable, "-c", code], env=run_cli.env(machine), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip() == "True"


def tree_digest(folder) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_trial_finds_what_onednn_refuses(run_cli):
    """Held to AVX2, oneDNN has no bfloat16 LSTM (on any x86 CPU): the trial must say so, not crash."""
    assert not bf16_trainable(run_cli, HELD_TO_AVX2)
    assert not bf16_trainable(run_cli, FAKED)
    assert bf16_trainable(run_cli, HELD_TO_AVX2, "scratch")   # matrix products run bfloat16 anywhere (emulated)


@MACHINES
def test_bf16_trains_where_it_can_and_is_refused_in_one_line_where_it_cannot(machine, text_file, tmp_path, run_cli):
    out = tmp_path / "r"
    r = run_cli(["train", "--data", text_file, "--out", out, *SMALL, "--max-iters", 3, "--bf16", "--device", "cpu"],
                env=machine)
    if bf16_trainable(run_cli, machine):
        assert r.returncode == 0, r.stderr
        assert json.loads((out / "config.json").read_text())["train"]["bf16"] is True
        from safetensors.numpy import load_file

        assert all(w.dtype == np.float32 for w in load_file(str(out / "model.safetensors")).values())  # float32
    else:
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [
            "charrnn: error: this CPU cannot train in bfloat16 (no AVX-512 BF16/AMX); drop --bf16"]
        assert not out.exists()


def test_a_refused_bf16_resume_changes_nothing(text_file, tmp_path, run_cli):
    out = tmp_path / "r"
    assert run_cli(["train", "--data", text_file, "--out", out, *SMALL, "--max-iters", 2]).returncode == 0
    before = tree_digest(out)
    r = run_cli(["train", "--data", text_file, "--out", out, "--resume", "--max-iters", 4, "--bf16"], env=FAKED)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "drop --bf16" in r.stderr
    assert r.stdout == ""                     # nor "these settings differ" first: a refusal is its one line
    assert tree_digest(out) == before


def test_info_device_reports_an_int8_path_it_cannot_build_and_refuses_text_flags(run_cli, tmp_path):
    r = run_cli(["info", "--device", "--json"], env={"CHARRNN_NATIVE_ISA": "bogus"})
    assert r.returncode == 0 and json.loads(r.stdout)["int8_step"].startswith("none: CHARRNN_NATIVE_ISA=bogus")
    r = run_cli(["info", "--device", "--include", "*.txt"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_the_capability_cache_is_not_written_into_a_read_only_folder(run_cli, tmp_path):
    cache = tmp_path / "cache"
    (cache / "charrnn").mkdir(parents=True)
    (cache / "charrnn").chmod(0o555)
    try:
        r = run_cli(["info", "--device", "--json"], env={"XDG_CACHE_HOME": cache})
        assert r.returncode == 0, r.stderr
        assert not list((cache / "charrnn").glob("capabilities-*"))
    finally:
        (cache / "charrnn").chmod(0o755)


@MACHINES
def test_auto_probes_only_the_precisions_this_machine_trains_in(machine, text_file, tmp_path, run_cli):
    out = tmp_path / "r"
    r = run_cli(["train", "--data", text_file, "--out", out, "--preset", "auto", "--max-time", 5, "--seq-len", 16,
                 "--log-every", 1000], env={**machine, "XDG_CACHE_HOME": tmp_path / "cache"})  # nothing measured yet:
    # a budget this short would plan from a speed measured here before, with no probe (train/speed_cache.py)
    assert r.returncode == 0, r.stderr
    probing = next(line for line in r.stdout.splitlines() if line.startswith("auto: probing"))
    record = json.loads((out / "config.json").read_text())["train"]
    precisions = {key.split("/")[1] for key in record["auto"]["probe_chars_per_s"]}
    if bf16_trainable(run_cli, machine):
        assert precisions == {"float32", "bf16"} and "float32 and bfloat16" in probing
    else:
        assert precisions == {"float32"} and not record["bf16"]
        assert "float32 only: this CPU cannot train in bfloat16" in probing


def test_the_answer_is_cached_per_onednn_setting(run_cli, cli_cache_dir):
    """Held to AVX2 the answer is No, uncapped: whatever the machine says; neither answer is taken for the other."""
    uncapped = {"ONEDNN_MAX_CPU_ISA": None, "DNNL_MAX_CPU_ISA": None,  # even where the suite runs held to AVX2
                "CHARRNN_FAKE_CPU": None}                               # or faked
    as_is = bf16_trainable(run_cli, uncapped)
    assert not bf16_trainable(run_cli, HELD_TO_AVX2)
    assert bf16_trainable(run_cli, uncapped) == as_is
    files = sorted((cli_cache_dir / "charrnn").glob("capabilities-*.json"))
    assert len(files) >= 2                                    # one per fingerprint (CPU, torch, oneDNN cap)
    for f in files:                                           # a damaged cache is tried again, not believed
        f.write_text("{not json")
    assert bf16_trainable(run_cli, uncapped) == as_is and not bf16_trainable(run_cli, HELD_TO_AVX2)


@MACHINES
def test_info_device_says_what_this_machine_runs(machine, run_cli):
    r = run_cli(["info", "--device", "--json"], env=machine)
    assert r.returncode == 0, r.stderr
    facts = json.loads(r.stdout)
    assert facts["bf16_training"]["library/lstm"] == bf16_trainable(run_cli, machine)
    assert facts["int8_step"]
    lines = run_cli(["info", "--device"], env=machine).stdout
    assert "int8 generation (--quantize int8):" in lines and "training in float32: every engine" in lines
    if not facts["bf16_training"]["library/lstm"]:
        assert "refused for library/lstm" in lines


@pytest.mark.parametrize("value", ["no-vnni", "no-bf16,no-avx2", "bogus"])
def test_a_capability_that_cannot_be_faked_is_refused_not_reported_faked(value, run_cli):
    r = run_cli(["info", "--device"], env={"CHARRNN_FAKE_CPU": value})
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, (r.stdout, r.stderr)
    assert f"CHARRNN_FAKE_CPU={value} fakes only no-bf16" in r.stderr


def test_info_takes_a_text_or_device_not_both(run_cli, text_file):
    for args in (["info"], ["info", text_file, "--device"]):
        r = run_cli(args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--device" in r.stderr


def test_a_preset_that_asks_for_bf16_trains_in_float32_where_it_cannot(text_file, tmp_path, run_cli):
    """--preset gpu sets bf16 (the user did not): on a machine without it the run goes on in float32, saying so."""
    out = tmp_path / "r"
    r = run_cli(["train", "--data", text_file, "--out", out, "--preset", "gpu", "--device", "cpu", *SMALL,
                 "--layers", 1, "--max-iters", 1], env=FAKED)
    assert r.returncode == 0, r.stderr
    assert "training in float32: the preset asks for bfloat16" in r.stderr
    assert json.loads((out / "config.json").read_text())["train"]["bf16"] is False


def test_a_bf16_run_resumed_where_bf16_cannot_run_says_so_in_its_own_words(text_file, tmp_path, run_cli):
    """A run trained with --bf16 (here: its config.json says so, as one trained on a machine with bfloat16 units
    would), resumed on one without: float32 from then on, and the note names the run, not a preset."""
    out = tmp_path / "r"
    assert run_cli(["train", "--data", text_file, "--out", out, *SMALL, "--max-iters", 2]).returncode == 0
    config = json.loads((out / "config.json").read_text())
    config["train"]["bf16"] = True
    (out / "config.json").write_text(json.dumps(config))
    r = run_cli(["train", "--data", text_file, "--out", out, "--resume", "--max-iters", 3], env=FAKED)
    assert r.returncode == 0, r.stderr
    assert "note: training in float32 from now on: the run trained in bfloat16" in r.stderr and "preset" not in r.stderr
    assert json.loads((out / "config.json").read_text())["train"]["bf16"] is False


def test_info_device_names_the_int8_path_the_compiled_step_runs(run_cli):
    """CHARRNN_NATIVE_ISA=avx2 holds the int8 step to the path an AVX2-only CPU gets (on x86 with a compiler)."""
    import platform
    import shutil

    if platform.machine() not in ("x86_64", "AMD64") or not shutil.which("cc"):
        pytest.skip("the AVX2 path needs an x86 CPU and a C compiler")
    facts = json.loads(run_cli(["info", "--device", "--json"], env={"CHARRNN_NATIVE_ISA": "avx2"}).stdout)
    assert facts["int8_step"] == "compiled step, avx2 path"
