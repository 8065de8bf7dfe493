"""--preset auto (the rule, the probe, the command), --bf16 on a CPU and --val-chars."""
import json
import time

import numpy as np
import pytest

from charrnn.train import auto
from charrnn.train.auto import Speed, Workload, choose, weights


def nothing_measured_yet(tmp_path) -> dict:
    """A user cache of its own: a budget this short plans from the speed an earlier run measured on this machine
    (train/speed_cache.py), where there is one; these tests are about the probe."""
    return {"XDG_CACHE_HOME": tmp_path / "cache"}


@pytest.fixture
def text_file(tmp_path):
    from conftest import write_word_text

    return write_word_text(tmp_path / "corpus.txt", 400)


@pytest.mark.parametrize("hidden,vocab", [(16, 5), (256, 65), (640, 300), (128, 700), (192, 3000), (512, 3000)])
def test_weights_counts_what_the_library_engine_builds(hidden, vocab):
    torch = pytest.importorskip("torch")
    from charrnn.config import ModelConfig
    from charrnn.models import build_model

    config = ModelConfig(vocab_size=vocab, hidden=hidden, layers=auto.LAYERS, embed=auto.embed_for(vocab, hidden),
                         tied=auto.tied_for(vocab, hidden))
    model = build_model("library", config, device=torch.device("cpu"))
    assert weights(hidden, vocab) == sum(p.numel() for p in model.parameters())   # a tied weight counted once
    assert auto.step_weights(hidden, vocab) == sum(v.size for v in model.get_parameters().values())


@pytest.mark.parametrize("vocab,embed,tied", [(auto.WIDE_ALPHABET, auto.EMBED, False),
                                              (auto.WIDE_ALPHABET + 1, 2 * auto.EMBED, False),
                                              (8 * 128 * auto.LAYERS, 2 * auto.EMBED, False),
                                              (8 * 128 * auto.LAYERS + 1, 128, True)])
def test_a_wide_alphabet_embeds_wider_and_ties_its_head_where_the_head_is_most_of_the_model_and_says_so(
        vocab, embed, tied):
    """At 128 wide (the budget here allows no more) the head is V x 128 and the recurrent layers 8 x 128^2 each."""
    choice = choose(Workload(2_000_000, vocab, max_time=300), _speed(2000, vocab))
    assert choice.values["hidden"] == 128
    assert (choice.values["embed"], choice.values["tied"]) == (embed, tied)
    shown = f"embedding {embed}" + (" tied to the head" if tied else "") + ")"
    assert (shown in choice.reason) == (embed != auto.EMBED) and ("embedding" in choice.reason) == (embed != auto.EMBED)
    assert weights(128, vocab, tied=False) - weights(128, vocab) == (128 * vocab if tied else 0)


@pytest.mark.parametrize("steps_at_b32, batch", [(0.3, 8), (0.45, 8), (0.6, 16), (1.0, 32)])
def test_where_even_the_narrowest_width_steps_too_few_times_on_a_wide_alphabet_the_batch_shrinks(
        steps_at_b32, batch):
    """A budget that reads `steps_at_b32` of MIN_STEPS windows of B32: on a wide alphabet the batch is the largest
    of 32, 16 and 8 that steps MIN_STEPS times (8 where none does), and the plan counts its steps in that batch's
    windows; a small alphabet's stays 32 (its steps' fixed cost is most of them)."""
    chars = steps_at_b32 * auto.MIN_STEPS * auto.BATCH * auto.SEQ_LEN
    wide = auto.WIDE_ALPHABET + 1
    assert choose(Workload(2_000_000, auto.WIDE_ALPHABET, epochs=chars / 2_000_000), None).values["batch_size"] == 32
    choice = choose(Workload(2_000_000, wide, epochs=chars / 2_000_000), None)
    assert choice.values["batch_size"] == batch
    assert (choice.values["hidden"] == auto.WIDTHS[0]) or batch == auto.BATCH   # a budget of epochs reads the
    #                                                              same characters at every width: wider fits there
    steps = int(chars // (batch * auto.SEQ_LEN))
    assert choice.values["eval_every"] == max(1, steps // auto.EVALS)
    assert (f"on B{batch} windows it steps {steps:,} times" in choice.reason) == (batch < auto.BATCH)


def test_a_given_batch_or_a_budget_in_steps_keeps_its_batch():
    """--batch-size is the user's; with --max-iters the steps are given, and a smaller batch would only read less."""
    chars = 0.3 * auto.MIN_STEPS * auto.BATCH * auto.SEQ_LEN
    given = choose(Workload(2_000_000, 6000, epochs=chars / 2_000_000, batch=24), None)
    assert given.values["batch_size"] == 24 and "windows it steps" not in given.reason
    steps = choose(Workload(2_000_000, 6000, max_iters=500), None)
    assert steps.values["batch_size"] == auto.BATCH


def _speed(chars_per_s_at_512: float, vocab: int = 65) -> Speed:
    """A machine whose seconds per character are proportional to the weights."""
    per_weight = 1 / (chars_per_s_at_512 * auto.step_weights(512, vocab))
    return Speed({False: tuple((auto.step_weights(h, vocab), per_weight * auto.step_weights(h, vocab))
                               for h in (256, 1024))})


def test_more_time_never_chooses_a_smaller_model():
    chosen = [choose(Workload(20_000_000, 65, max_time=t), _speed(8000)).values["hidden"]
              for t in (30, 120, 600, 3600, 36000)]
    assert chosen == sorted(chosen) and chosen[0] < chosen[-1]


def test_width_is_the_widest_that_trains_long_enough_reads_enough_and_does_not_memorize():
    speed, share = _speed(8000), 1 - auto.EVALS * auto.EVAL_SHARE
    for train_chars in (50_000, 1_000_000, 30_000_000):
        for seconds in (60, 600, 6000):
            chosen = choose(Workload(train_chars, 65, max_time=seconds), speed).values
            window = chosen["batch_size"] * auto.SEQ_LEN

            def fits(width, seconds=seconds, train_chars=train_chars, window=window):
                read = seconds * share * speed.chars_per_second(width, 65)
                n = weights(width, 65)
                return (read >= auto.MIN_STEPS * window and n <= auto.WEIGHTS_PER_CHAR * train_chars
                        and read >= auto.chars_needed(n, read / train_chars))

            h = chosen["hidden"]
            assert fits(h) or h == auto.WIDTHS[0]
            assert not any(fits(w) for w in auto.WIDTHS if w > h)
            assert "epochs" not in chosen   # no pass cap: a plateau ends a run that has read enough


def kept_passes(choice) -> str:
    """The passes a B32 choice's reason says it reads."""
    return choice.reason.split(" passes over")[0].rsplit("= ", 1)[1]


def test_a_text_read_many_times_halves_its_batch_to_train_wider_and_decays_its_weights_more():
    """Past MANY_PASSES the text, not the compute, is the limit: B16 windows step twice as often per character, so
    a wider model still trains MIN_STEPS times, weight decay rises and the weights saved are an average; the
    user's --batch-size, or a budget in steps (where a smaller batch only reads less), keeps its batch and still
    gets the weight decay and the average."""
    speed = _speed(8000)
    small = choose(Workload(150_000, 65, max_time=300), speed)
    kept = choose(Workload(150_000, 65, max_time=300, batch=auto.BATCH), speed)
    assert small.values["batch_size"] == auto.MANY_PASSES_BATCH and kept.values["batch_size"] == auto.BATCH
    assert small.values["hidden"] > kept.values["hidden"]
    assert small.values["weight_decay"] == kept.values["weight_decay"] == auto.MANY_PASSES_WEIGHT_DECAY
    assert (f"on B32 windows it would read the text {kept_passes(kept)} times, and a text read that often is learnt by "
            f"heart: weight decay 0.3 holds that back, the weights validated and saved are an average over the "
            f"last steps (--weight-average ema), and B16 windows step twice as often, so the wider "
            f"2×{small.values['hidden']} still steps {auto.MIN_STEPS} times") in small.reason
    assert "holds that back" in kept.reason and "B16" not in kept.reason
    assert small.values["weight_average"] == kept.values["weight_average"] == "ema"
    assert "weights averaged" in small.reason.splitlines()[0]
    in_epochs = choose(Workload(150_000, 65, epochs=40), None)
    assert in_epochs.values["batch_size"] == auto.MANY_PASSES_BATCH
    in_steps = choose(Workload(150_000, 65, max_iters=4000), None)
    assert in_steps.values["batch_size"] == auto.BATCH and in_steps.values["weight_decay"] == 0.3
    for passes, many in ((auto.MANY_PASSES, False), (auto.MANY_PASSES + 0.5, True)):   # the threshold, in epochs
        chosen = choose(Workload(3_000_000, 65, epochs=passes), None).values
        assert ((chosen["batch_size"], chosen["weight_decay"], chosen["weight_average"])
                == ((16, 0.3, "ema") if many else (32, 0.01, "none")))
    large = choose(Workload(50_000_000, 65, max_time=300), speed)
    assert large.values["batch_size"] == auto.BATCH and large.values["weight_decay"] == 0.01
    assert large.values["weight_average"] == "none" and "averaged" not in large.reason


def test_a_text_read_many_times_needs_fewer_chars_per_weight():
    assert auto.chars_needed(1_000_000, 0.5) == auto.chars_needed(1_000_000, 1.0) == auto.CHARS_PER_WEIGHT * 1e6
    assert auto.chars_needed(1_000_000, 4.0) == pytest.approx(auto.CHARS_PER_WEIGHT * 1e6 / 4)


def test_many_passes_bring_dropout_and_early_stopping_one_pass_brings_neither():
    """In a time budget early stopping is the plan's (a plateau starts the decay, replan.py), in epochs --patience."""
    small = choose(Workload(200_000, 65, max_time=3600), _speed(8000))
    large = choose(Workload(50_000_000, 65, max_time=120), _speed(8000))
    assert small.values["dropout"] >= 0.2 and small.plan["anneal_after"] == auto.ANNEAL_AFTER
    assert "patience" not in small.values and "epochs" not in small.values and "ends early on a plateau" in small.reason
    assert large.values["dropout"] == 0.0 and "patience" not in large.values
    in_epochs = choose(Workload(200_000, 65, epochs=30), None)
    assert in_epochs.values["patience"] == 3 and in_epochs.plan is None


def test_a_cheap_validation_is_run_more_often_within_the_time_reserved_for_validations():
    """A small text's validation split costs little: auto validates up to MAX_EVALS times (so a plateau is seen
    soon), spending no more time on validations than EVALS of them at their reserved share would."""
    speed = _speed(8000)
    small = choose(Workload(200_000, 65, max_time=600, val_chars=20_000), speed)
    large = choose(Workload(20_000_000, 65, max_time=600, val_chars=2_000_000), speed)
    assert large.plan["evals"] == auto.EVALS
    assert auto.EVALS < small.plan["evals"] <= auto.MAX_EVALS
    for choice in (small, large):
        plan = choice.plan
        assert plan["evals"] * plan["eval_seconds"] == pytest.approx(auto.EVALS * auto.EVAL_SHARE * 600, rel=1e-3)
        assert choice.values["eval_every"] == max(1, plan["iterations"] // plan["evals"])


def test_an_epoch_budget_needs_no_probe_and_sizes_by_the_text():
    few = choose(Workload(100_000, 65, epochs=2), None).values
    many = choose(Workload(5_000_000, 65, epochs=2), None).values
    assert few["hidden"] < many["hidden"] and "max_time" not in few and not few["bf16"]


def test_the_probe_recovers_a_machines_speed_line_and_picks_the_faster_precision():
    """A fake machine whose step takes (base + slope * weights) per character, bf16 twice as fast."""
    base, slope, vocab = 2e-6, 4e-11, 65

    def make_step(hidden, bf16):
        seconds = (base + slope * weights(hidden, vocab)) * auto.BATCH * auto.PROBE_SEQ_LEN / (2 if bf16 else 1)
        return lambda: time.sleep(seconds)

    speed = auto.probe(make_step, bf16_possible=True, vocab_size=vocab)
    assert speed.bf16_for(512, vocab) and speed.bf16_for(128, vocab)
    for hidden in (128, 512, 1024):  # between the probed widths and beyond them on either side
        assert speed.chars_per_second(hidden, vocab) == pytest.approx(2 / (base + slope * weights(hidden, vocab)),
                                                                      rel=0.25)
    assert set(speed.measured) == {f"{h}/{p}" for h in auto.PROBE_WIDTHS for p in ("float32", "bf16")}
    assert not auto.probe(make_step, bf16_possible=False, vocab_size=vocab).bf16_for(512, vocab)


def test_each_width_gets_the_precision_that_trains_it_faster():
    """bf16 that pays off only for wide models (a fixed cost per step, cheaper products) is chosen only there."""
    def line(base, slope):
        return tuple((weights(h, 65), base + slope * weights(h, 65)) for h in (256, 640))

    speed = Speed({False: line(1e-6, 4e-11), True: line(2e-5, 1e-11)})
    assert not speed.bf16_for(128, 65) and speed.bf16_for(1024, 65)
    assert speed.chars_per_second(1024, 65) == pytest.approx(1 / (2e-5 + 1e-11 * weights(1024, 65)))


def test_speed_follows_the_probed_points_where_cost_is_not_linear():
    """Wide layers that fall out of the caches cost more per weight: between two probed widths the
    estimate is their straight line, not one line through all."""
    probed = ((weights(192, 65), 1e-5), (weights(384, 65), 2e-5), (weights(640, 65), 8e-5))
    speed = Speed({True: probed})
    assert 1 / speed.chars_per_second(384, 65) == pytest.approx(2e-5)
    assert 1 / speed.chars_per_second(512, 65) == pytest.approx(
        2e-5 + 6e-5 * (weights(512, 65) - probed[1][0]) / (probed[2][0] - probed[1][0]))


def test_preset_auto_trains_says_why_and_records_it(text_file, tmp_path, run_cli):
    out = tmp_path / "r"
    r = run_cli(["train", "--data", text_file, "--out", out, "--preset", "auto", "--max-time", 6,
                 "--seq-len", 16, "--log-every", 1000], env=nothing_measured_yet(tmp_path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    said = next(i for i, line in enumerate(lines) if line.startswith("auto: 2×"))
    assert "LSTM" in lines[said] and lines[said + 1].strip().startswith("because")
    assert "your flags replace auto's --seq-len" in lines[said + 2]
    config = json.loads((out / "config.json").read_text())
    record = config["train"]["auto"]
    assert record["reason"].startswith("auto: 2×") and record["overridden_by_flags"] == ["seq_len"]
    assert f"{auto.PROBE_WIDTHS[0]}/float32" in record["probe_chars_per_s"]   # the narrowest at least: 0.6 s of 6
    assert {k.split("/")[0] for k in record["probe_chars_per_s"]} <= {str(h) for h in auto.PROBE_WIDTHS}
    assert config["train"]["seq_len"] == 16                                   # the explicit flag won
    assert config["model"]["hidden"] in auto.WIDTHS and config["train"]["max_time"] < 6  # the probe came out of it
    assert (out / "best.safetensors").exists()


@pytest.mark.parametrize("preset, extra, needle", [("auto", [], "add --max-time"),
                                                   ("auto", ["--max-time", 5, "--init-from", "x"], "--init-from"),
                                                   ("auto", ["--max-time", 5, "--impl", "naive"], "--impl naive"),
                                                   ("cpu-10min", ["--init-from", "x"], "--init-from"),
                                                   ("cpu-10min", ["--impl", "keras"], "--impl keras")])
def test_preset_auto_refuses_what_it_cannot_do_in_one_line(preset, extra, needle, text_file, tmp_path, run_cli):
    """cpu-10min is auto with 600 s: refused alike, in words that name the preset the user gave."""
    r = run_cli(["train", "--data", text_file, "--out", tmp_path / "r", "--preset", preset, *extra])
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert f"--preset {preset} " in r.stderr
    assert not (tmp_path / "r").exists()



def test_preset_auto_on_a_text_too_short_for_its_windows_is_refused_before_the_probe(tmp_path, run_cli):
    """auto trains on windows of BATCH x SEQ_LEN: a shorter text is one line (exit 2, nothing on stdout, no
    probe), naming the flags that make it fit; with them given, auto trains."""
    short = tmp_path / "short.txt"
    short.write_text("the cat sat on the mat. " * 40, encoding="utf-8")        # 960 characters < 32 x 100
    r = run_cli(["train", "--data", short, "--out", tmp_path / "r", "--preset", "auto", "--max-time", 3])
    assert r.returncode == 2 and r.stdout == "", r.stdout
    assert len(r.stderr.strip().splitlines()) == 1 and "--batch-size 32 x --seq-len 100" in r.stderr
    assert not (tmp_path / "r").exists()
    fits = run_cli(["train", "--data", short, "--out", tmp_path / "r", "--preset", "auto", "--max-time", 3,
                    "--batch-size", 4, "--seq-len", 16, "--log-every", 1000])
    assert fits.returncode == 0, fits.stderr

@pytest.mark.parametrize("impl", ["library", "scratch"])
def test_bf16_on_a_cpu_trains_in_bfloat16_and_validates_in_float32(impl):
    torch = pytest.importorskip("torch")
    from charrnn import capabilities
    from charrnn.config import ModelConfig
    from charrnn.models import build_model
    from charrnn.train.learners import TorchLearner

    cfg = ModelConfig(vocab_size=11, hidden=32, layers=2, embed=8)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (4, 12)), rng.integers(0, 11, (4, 12))
    if not capabilities.bf16_training(torch.device("cpu"), impl, "lstm"):  # tests/test_capabilities.py: the refusal
        pytest.skip(f"this CPU cannot train {impl}'s LSTM in bfloat16")
    results = {}
    for bf16 in (False, True):
        learner = TorchLearner(build_model(impl, cfg, seed=3, device=torch.device("cpu")), "adamw", 1e-3, 0.0,
                               1.0, torch.device("cpu"), bf16=bf16)
        state = learner.zero_state(4)
        results[bf16] = learner.eval_loss(x, y, state)[0], learner.train_step(x, y, state)[0]
    assert results[True][0] == pytest.approx(results[False][0], abs=1e-6)   # validation: float32 either way
    assert results[True][1] != results[False][1]                            # training really ran in bfloat16
    assert results[True][1] == pytest.approx(results[False][1], abs=0.02)


def test_val_chars_validates_on_the_start_of_the_split_only(text_file, tmp_path, run_cli):
    """With one stream, in-training validation over --val-chars N equals `charrnn eval` of the same
    weights on the first N characters of the split, read from a zero state."""
    out = tmp_path / "r"
    n = 300
    r = run_cli(["train", "--data", text_file, "--out", out, "--hidden", 16, "--embed", 8, "--batch-size", 1,
                 "--seq-len", 20, "--max-iters", 3, "--eval-every", 3, "--val-chars", n])
    assert r.returncode == 0, r.stderr
    text = text_file.read_text(encoding="utf-8")
    val = text[len(text) - int(len(text) * 0.1):]
    usable = (n - 1) // 20 * 20 + 1                     # whole windows of 20 only, as training validates
    (tmp_path / "start.txt").write_text(val[:usable], encoding="utf-8")
    e = run_cli(["eval", "--checkpoint", out, "--data", tmp_path / "start.txt", "--json"])
    assert e.returncode == 0, e.stderr
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "val_loss" in line]
    assert logged[-1]["val_loss"] == pytest.approx(json.loads(e.stdout)["loss"], abs=2e-4)


def test_resume_keeps_what_auto_chose(text_file, tmp_path, run_cli):
    """The same command with --resume continues the run auto sized; it neither probes nor chooses again."""
    out = tmp_path / "r"
    first = run_cli(["train", "--data", text_file, "--out", out, "--preset", "auto", "--max-time", 4])
    assert first.returncode == 0, first.stderr
    before = json.loads((out / "config.json").read_text())
    again = run_cli(["train", "--data", text_file, "--out", out, "--preset", "auto", "--max-time", 8, "--resume"])
    assert again.returncode == 0, again.stderr
    assert "probing" not in again.stdout and "resuming" in again.stdout
    after = json.loads((out / "config.json").read_text())
    assert after["model"] == before["model"] and after["train"]["auto"] == before["train"]["auto"]


def _fake_machine(noise_rng=None, busy_share=0.0, base=2e-6, slope=4e-11, vocab=65, cpu=None, own=None):
    """make_step for a machine whose step costs (base + slope * weights) per character; with noise_rng, a
    share of the steps take three times as long (another process had the core). With `cpu` (a _FakeCpu) each
    step also counts `own` of that cost (default all of it) as the process's CPU time: what it took of the
    core, however long the wall clock says."""
    def make_step(hidden, bf16):
        seconds = (base + slope * weights(hidden, vocab)) * auto.BATCH * auto.PROBE_SEQ_LEN

        def step():
            slow = noise_rng is not None and noise_rng.random() < busy_share
            time.sleep(seconds * (3 if slow else 1))
            if cpu is not None:
                cpu.seconds += seconds * (own or 1.0)
        return step
    return make_step


class _FakeCpu:
    """A process CPU clock the fake machine advances: sleeping steps take none of the real one."""

    def __init__(self):
        self.seconds = 0.0

    def __call__(self):
        return self.seconds


def test_a_probe_with_busy_moments_chooses_within_one_width_of_the_quiet_choice():
    work = Workload(train_chars=2_000_000, vocab_size=65, max_time=300)
    quiet = choose(work, auto.probe(_fake_machine(), False, 65)).values["hidden"]
    rng = np.random.default_rng(0)
    for _ in range(3):
        busy = choose(work, auto.probe(_fake_machine(rng, busy_share=0.3), False, 65)).values["hidden"]
        assert abs(auto.WIDTHS.index(busy) - auto.WIDTHS.index(quiet)) <= 1, (busy, quiet)


def test_a_probe_keeps_to_its_seconds_and_still_gives_a_usable_speed():
    started = time.perf_counter()
    speed = auto.probe(_fake_machine(base=2e-5), True, 65, seconds=0.05)  # one step: 32 ms at the narrowest
    took = time.perf_counter() - started
    one_step = (2e-5 + 4e-11 * weights(auto.PROBE_WIDTHS[0], 65)) * auto.BATCH * auto.PROBE_SEQ_LEN
    assert took < 0.05 + 4 * one_step          # the deadline, overshot by at most the steps under way
    assert f"{auto.PROBE_WIDTHS[0]}/float32" in speed.measured and len(speed.measured) < 2 * len(auto.PROBE_WIDTHS)
    assert choose(Workload(1_000_000, 65, max_time=60), speed).values["hidden"] in auto.WIDTHS


def test_max_time_bounds_the_whole_run_probe_included(text_file, tmp_path, run_cli):
    """--max-time 5 ends within 5 s of the probe's start (the probe counts), and its --resume is no change."""
    out = tmp_path / "r"
    process = run_cli.popen(["train", "--data", text_file, "--out", out, "--preset", "auto", "--max-time", 5,
                             "--log-every", 100000], env=nothing_measured_yet(tmp_path))
    for line in process.stdout:
        if line.startswith("auto: probing"):
            started = time.perf_counter()
            break
    process.communicate(timeout=120)
    assert process.returncode == 0
    wall = time.perf_counter() - started
    config = json.loads((out / "config.json").read_text())["train"]
    trained = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["elapsed_s"]
    # the probe's seconds come out of the budget: what it took and the training after it stay within 5 s, but for
    # the step under way when the clock ran out (a step of this model is well under a second)
    assert config["auto"]["probe_seconds"] + trained < 5 + 1.0
    assert config["auto"]["max_time_given"] == 5 and config["max_time"] <= 5 - config["auto"]["probe_seconds"] + 0.01
    assert wall < 5 + 10   # + building models, the last checkpoint and the exit: seconds, not the probe's 27 s
    again = run_cli(["train", "--data", text_file, "--out", out, "--preset", "auto", "--max-time", 5, "--resume"])
    assert again.returncode == 0, again.stderr
    assert "differ" not in again.stdout


def test_without_validation_auto_neither_chooses_nor_names_early_stopping():
    """--patience watches validation: with none (--val-frac 0) auto does not set it, nor say it did."""
    many_passes = dict(train_chars=50_000, vocab_size=65, epochs=20)
    assert choose(Workload(**many_passes), None).values["patience"] == 3
    without = choose(Workload(**many_passes, validates=False), None)
    assert "patience" not in without.values and "--patience" not in without.reason
    timed = dict(train_chars=50_000, vocab_size=65, max_time=600)
    assert choose(Workload(**timed), _speed(8000)).plan["anneal_after"] == auto.ANNEAL_AFTER
    unwatched = choose(Workload(**timed, validates=False), _speed(8000))
    assert unwatched.plan["anneal_after"] is None and "plateau" not in unwatched.reason


class _FakeLoad:
    """Other processes keep `others` of this process's `cores` busy, whatever the probe does."""

    def __init__(self, cores: int, others: float):
        self.cores, self.others = cores, others

    def start(self):
        pass

    def others_cores(self):
        return self.others


@pytest.mark.parametrize("cores, threads, others, share", [
    (1, 1, 0.5, 0.5),     # one core, shared half and half with a spinning process
    (2, 2, 0.67, 0.665),  # two threads on two cores, a third process on one: two thirds each
    (2, 1, 1.0, 1.0),     # one thread, and the other core busy: nothing taken from this process
    (2, 1, 0.0, 1.0),
])
def test_own_share_is_what_the_others_left_per_thread(cores, threads, others, share):
    from charrnn.train.machine_load import own_share

    assert own_share(_FakeLoad(cores, others), threads) == pytest.approx(share, abs=0.01)


@pytest.mark.parametrize("cores, threads", [(1, 1), (2, 2)])
def test_a_probe_on_a_machine_busy_throughout_chooses_what_the_quiet_machine_would_and_says_so(cores, threads):
    """Every step twice as slow because another process holds half the cores: with the load measured, the probe
    gives the quiet machine's speed line (the same width chosen), and the auto line names the busy probe. One
    thread's quiet step is its CPU time; several threads' (whose CPU time counts their waits for each other
    too: here twice the wall time) is the wall time times their share."""
    work = Workload(train_chars=2_000_000, vocab_size=65, max_time=300)
    quiet = auto.probe(_fake_machine(), False, 65)
    slowed = auto.probe(_fake_machine(base=4e-6, slope=8e-11), False, 65)
    cpu = _FakeCpu()
    corrected = auto.probe(_fake_machine(base=4e-6, slope=8e-11, cpu=cpu, own=0.5 if threads == 1 else 4.0), False,
                           65, load=_FakeLoad(cores, cores * 0.5), threads=threads, cpu_clock=cpu)
    assert choose(work, slowed).values["hidden"] < choose(work, quiet).values["hidden"]
    assert choose(work, corrected).values["hidden"] == choose(work, quiet).values["hidden"]
    for hidden in (192, 384):
        assert corrected.chars_per_second(hidden, 65) == pytest.approx(quiet.chars_per_second(hidden, 65), rel=0.2)
    assert corrected.busy_share == 0.5 and quiet.busy_share is None
    assert "the probe had 50% of its cores" in choose(work, corrected).reason


def test_the_load_meter_reads_what_other_processes_took_from_proc_stat(tmp_path, monkeypatch):
    """/proc/stat's busy ticks on this process's cores (idle and iowait left out, other cores and the total line
    ignored), less this process's own CPU time, per second of wall."""
    from charrnn.train import machine_load

    stat = tmp_path / "stat"
    meter = machine_load.ProcStatLoad(stat)
    meter.ids, meter.cores, meter.tick = [0], 1, 100

    def write(user, idle, iowait, other_core):
        stat.write_text(f"cpu  {user + other_core} 0 0 {idle} {iowait} 0 0 0 0 0\n"
                        f"cpu0 {user} 0 0 {idle} {iowait} 0 0 0 0 0\ncpu1 {other_core} 0 0 1 0 0 0 0 0 0\n")

    clock = {"wall": 10.0, "own": 3.0}
    monkeypatch.setattr(machine_load.time, "perf_counter", lambda: clock["wall"])
    monkeypatch.setattr(machine_load.time, "process_time", lambda: clock["own"])
    write(user=1000, idle=500, iowait=20, other_core=700)
    meter.start()
    write(user=1200, idle=700, iowait=90, other_core=1100)   # core 0: 2 s busy, 2.7 s idle or waiting; core 1 busy
    clock.update(wall=14.0, own=4.0)                          # in 4 s, of which this process took 1 s
    assert meter.others_cores() == pytest.approx(0.25)
    stat.unlink()                                             # unreadable: no correction
    assert meter.others_cores() == 0.0


@pytest.mark.parametrize("content, limited", [("max 100000", False), ("50000 100000", True), ("-1", False),
                                              ("200000", True)])
def test_a_container_cpu_quota_turns_the_load_meter_off(content, limited, tmp_path):
    """Under a cgroup quota /proc/stat counts the whole host while the quota limits this process for good: the
    probe is not corrected there."""
    from charrnn.train import machine_load

    quota = tmp_path / "cpu.max"
    quota.write_text(content + "\n")
    assert machine_load._cpu_quota((tmp_path / "absent", quota)) is limited


def test_a_load_that_comes_and_goes_is_left_to_the_fastest_steps():
    """Several threads' steps that spread widely (another process came and went) are not corrected by the share
    on top of keeping the fastest ones: that would count the same slowdown twice."""
    rng = np.random.default_rng(0)
    quiet = auto.probe(_fake_machine(), False, 65)
    spread = auto.probe(_fake_machine(rng, busy_share=0.5), False, 65, load=_FakeLoad(2, 1.0), threads=2,
                        cpu_clock=_FakeCpu())
    assert spread.busy_share is None
    for hidden in (192, 384):
        assert spread.chars_per_second(hidden, 65) <= 1.3 * quiet.chars_per_second(hidden, 65)


def test_one_threads_probe_on_a_busy_core_is_timed_by_its_own_cpu_time():
    """A single thread's step on a shared core takes the CPU time it was given, whatever the wall clock says and
    however unevenly the others took the core: the quiet speed, and the auto line names the busy probe."""
    rng = np.random.default_rng(0)
    quiet = auto.probe(_fake_machine(), False, 65)
    cpu = _FakeCpu()
    busy = auto.probe(_fake_machine(rng, busy_share=0.7, cpu=cpu), False, 65, load=_FakeLoad(1, 0.6), threads=1,
                      cpu_clock=cpu)
    assert busy.busy_share == pytest.approx(0.4)
    for hidden in (192, 384):
        assert busy.chars_per_second(hidden, 65) == pytest.approx(quiet.chars_per_second(hidden, 65), rel=0.2)


def test_the_load_meter_is_for_cpu_steps_of_every_engine():
    """NumPy's steps (no device), TensorFlow's on its CPU and torch's on the CPU share the cores with others; a GPU's
    steps are the device's."""
    import torch

    from charrnn.train.cli import _load_meter
    from charrnn.train.machine_load import ProcStatLoad

    for device in (None, "/CPU:0", torch.device("cpu")):
        assert isinstance(_load_meter(device), ProcStatLoad), device
    for device in ("/GPU:0", torch.device("cuda")):
        assert _load_meter(device) is None, device


@pytest.mark.parametrize("impl", ["naive", pytest.param("keras", marks=pytest.mark.slow),
                                  pytest.param("tf", marks=pytest.mark.slow)])
def test_a_time_budget_plans_from_the_clock_on_every_engine(impl, text_file, tmp_path, run_cli):
    """--max-time with the cosine: the schedule is planned from the clock (and the cores metered) for the engines
    without torch too."""
    if impl != "naive":
        pytest.importorskip("tensorflow")
    out = tmp_path / impl
    r = run_cli(["train", "--data", text_file, "--out", out, "--impl", impl, "--max-time", 4, "--schedule", "cosine",
                 "--hidden", 16, "--seq-len", 16, "--batch-size", 4, "--eval-every", 20, "--log-every", 1000])
    assert r.returncode == 0, r.stderr
    assert (out / "best.safetensors").exists() and "Traceback" not in r.stderr


def test_with_the_epoch_schedule_auto_keeps_patience_and_names_no_plateau():
    """--schedule epoch has no cosine to plan from the clock: no plateau rule, so --patience stops an overfit."""
    work = dict(train_chars=50_000, vocab_size=65, max_time=3600)
    epoch = choose(Workload(**work, cosine=False), _speed(8000))
    assert epoch.plan is None and epoch.values["patience"] == 3 and "plateau" not in epoch.reason
    assert choose(Workload(**work), _speed(8000)).plan is not None


@pytest.mark.parametrize("flags,embed,tied,said", [
    ([], 128, False, "--layers\n"),              # auto's 128 wide: 600 characters' head is not most of the model
    (["--hidden", "24"], 24, True, "--hidden, --layers; at that width the embedding is 24, tied to the head"),
    (["--hidden", "24", "--embed", "32"], 32, False, "--embed, --hidden, --layers, --tied\n"),   # yours: untied
    (["--hidden", "24", "--tied"], 24, True, "--embed, --hidden, --layers, --tied\n"),   # --tied gives --embed 24
    (["--embed", "32", "--tied"], 32, True, "--embed, --hidden, --layers, --tied\n"),   # your width, by --embed
    (["--hidden", "64", "--embed", "64"], 64, True, "--embed, --hidden, --layers; at that width the head is tied to "
                                                    "the embedding"),   # 600 x 64 > 8 x 64^2: tied, and said
])
def test_auto_on_a_wide_alphabet_ties_the_head_where_it_is_most_of_the_model(flags, embed, tied, said, tmp_path,
                                                                             run_cli):
    """600 characters: auto's narrowest width, one layer of 128, has more recurrent weights (8 x 128^2) than head
    (600 x 128) and keeps two tables; at 24 the head is most of the model and auto ties it, in that width."""
    text = tmp_path / "wide.txt"
    text.write_text("".join("".join(chr(0x4E00 + (7 * i + j) % 600) for j in range(40)) + "\n" for i in range(90)),
                    encoding="utf-8")
    out = tmp_path / "run"
    done = run_cli.in_process(["train", "--data", text, "--out", out, "--preset", "auto", "--epochs", "0.01",
                               "--layers", "1", *flags])
    assert done.returncode == 0, done.stderr
    model = json.loads((out / "config.json").read_text())["model"]
    assert model["embed"] == embed and model.get("tied", False) is tied
    assert f"your flags replace auto's {said}" in done.stdout
