"""Plans that follow the clock (train/replan.py) and the speed cache (train/speed_cache.py).

The Trainer runs a tiny NumPy model on a fake clock: each training step takes `step` seconds of it and each
validation window `window` seconds, so a run is exactly as fast as a test says, however busy this machine is.
"""
from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest

from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.batching import make_streams
from charrnn.models import build_model
from charrnn.train import auto, replan
from charrnn.train.learners import NumpyLearner
from charrnn.train.loop import Trainer

B, T = 2, 4                    # 8 characters per iteration
CHARS = B * T
MAX_TIME = 100.0               # seconds of the fake clock
LR0 = 0.01
FLOOR = LR0 / 10
VAL_WINDOWS = 10
VALIDATION = 1.0               # seconds a validation takes: what auto's plan reserves for one here
OLD_PASS_CAP = 6.0             # the pass cap auto's plans held before plateaus ended them: such runs still resume


class _NoPlot:
    def __init__(self, *args):
        pass

    def request(self):
        pass

    def finish(self):
        pass


@pytest.fixture(autouse=True)
def no_loss_plots(monkeypatch):
    """loss.png is drawn at every validation (0.2 s each, in this process or a child one, however the loop does
    it): not what these tests are about."""
    from charrnn.train import loop

    if hasattr(loop, "plot_losses"):
        monkeypatch.setattr(loop, "plot_losses", lambda *args: None)
    if hasattr(loop, "LossPlot"):
        monkeypatch.setattr(loop, "LossPlot", _NoPlot)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TimedLearner:
    """A real learner whose steps take `step(i)` seconds of the fake clock (i counts this learner's steps) and
    whose validation windows take VALIDATION / VAL_WINDOWS each; it records every learning rate it is given."""

    def __init__(self, inner, clock: FakeClock, step, stop_after=None):
        self.inner, self.clock, self.step, self.stop_after = inner, clock, step, stop_after
        self.lrs, self.steps, self.trainer = [], 0, None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def set_lr(self, lr):
        self.lrs.append(lr)
        self.inner.set_lr(lr)

    def train_step(self, x, y, state, **labels):
        self.clock.now += self.step(self.steps)
        self.steps += 1
        if self.stop_after is not None and self.steps == self.stop_after:
            self.trainer.stop_requested = "stopped by the test"   # as Ctrl-C does: save and return
        return self.inner.train_step(x, y, state, **labels)

    def eval_loss(self, x, y, state, **labels):
        self.clock.now += VALIDATION / VAL_WINDOWS
        return self.inner.eval_loss(x, y, state, **labels)


def _config(tmp_path, planned_chars_per_s=None, planned_iters=None, anneal_after=None, pass_cap=OLD_PASS_CAP,
            evals=auto.EVALS, **overrides) -> TrainConfig:
    """A --max-time cosine run; with planned_chars_per_s, auto's (its plan from a probe that said so)."""
    values = dict(impl="naive", optimizer="adam", lr=LR0, schedule="cosine", max_time=MAX_TIME, batch_size=B,
                  seq_len=T, eval_every=10_000, log_every=10_000, grad_clip=1.0, out=str(tmp_path))
    if planned_chars_per_s is not None:
        iterations = planned_iters or int(MAX_TIME * (1 - auto.EVALS * auto.EVAL_SHARE) * planned_chars_per_s / CHARS)
        values.update(eval_every=max(1, iterations // evals), auto={"plan": {
            "iterations": iterations, "chars_per_s": planned_chars_per_s, "max_passes": pass_cap,
            "evals": evals, "eval_seconds": VALIDATION, "anneal_after": anneal_after}})
    values.update(overrides)
    return TrainConfig(**values)


def _trainer(cfg, tmp_path, step, stop_after=None, lines=None, windows=400, clock=None, load=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).integers(0, 5, size=B * windows * T + 1).astype(np.uint8)   # windows an epoch
    val = np.random.default_rng(1).integers(0, 5, size=VAL_WINDOWS * T + 1).astype(np.uint8)
    model = build_model("naive", ModelConfig(vocab_size=5, cell="rnn", layers=1, hidden=8, embed=4), seed=0)
    clock = clock or FakeClock()
    learner = TimedLearner(NumpyLearner(model, "adam", LR0, 0.0, 1.0, seed=0), clock, step, stop_after)
    log = lines.append if lines is not None else (lambda message: None)
    trainer = Trainer(cfg, learner, make_streams(data, B, T), make_streams(val, 1, T), tmp_path, log=log, clock=clock,
                      load=load, threads=1)
    learner.trainer = trainer
    return trainer, learner


def _replan_lines(lines):
    return [line for line in lines if "the schedule now ends at iteration" in line]


def test_a_run_at_half_the_probed_speed_replans_once_and_ends_its_cosine_before_the_deadline(tmp_path):
    """The probe said 2 steps a second; every step takes a second. From a tenth of the budget the checks find the
    plan too long; a whole window later the run re-plans (one line, with the speed it measured), and ends at its
    new plan's end, at the floor, just before the clock runs out: not cut off halfway down its cosine."""
    lines = []
    cfg = _config(tmp_path, planned_chars_per_s=2 * CHARS)
    trainer, learner = _trainer(cfg, tmp_path, step=lambda i: 1.0, lines=lines)
    planned = trainer.progress.plan_iters
    progress = trainer.run()
    said = _replan_lines(lines)
    assert len(said) == 1, lines
    assert said[0].startswith(f"auto: training runs at {CHARS:,} chars/s, not the {2 * CHARS:,} planned")
    now_ends = int(re.search(r"ends at iteration ([\d,]+) \(was ([\d,]+)\)", said[0]).group(1).replace(",", ""))
    assert re.search(r"\(was ([\d,]+)\)", said[0]).group(1).replace(",", "") == str(planned)
    assert progress.iteration == progress.plan_iters == now_ends < planned / 2 + planned / 20
    assert learner.lrs[-1] == FLOOR   # the plan's last step trains at the floor: 1 + cos(pi) is exactly 0
    assert all(b <= a for a, b in zip(learner.lrs[1:], learner.lrs[2:]))   # and it never jumped back up
    # it used the budget: ended within the margin (and the slack it keeps) of the deadline, not past it
    assert MAX_TIME * (1 - replan.MARGIN - replan.SLACK) <= progress.elapsed <= MAX_TIME
    assert (tmp_path / "best.safetensors").exists()


def test_a_run_faster_than_planned_lengthens_its_schedule_to_the_budget(tmp_path):
    lines = []
    cfg = _config(tmp_path, planned_chars_per_s=CHARS)          # the probe said 1 step a second: it takes half
    trainer, learner = _trainer(cfg, tmp_path, step=lambda i: 0.5, lines=lines)
    planned = trainer.progress.plan_iters
    progress = trainer.run()
    said = _replan_lines(lines)
    assert len(said) == 1 and f"runs at {2 * CHARS:,} chars/s, not the {CHARS:,} planned" in said[0], lines
    assert progress.iteration == progress.plan_iters > 1.8 * planned
    assert learner.lrs[-1] == FLOOR
    assert MAX_TIME * (1 - replan.MARGIN - replan.SLACK) <= progress.elapsed <= MAX_TIME


def test_one_slow_moment_on_a_shared_machine_does_not_replan(tmp_path):
    """Two steps four times slower (another job's burst: 3 s lost, under MARGIN) change nothing: the run re-plans
    exactly as the same run without them does (the checks over a whole window must agree), and ends at the floor
    (the clock drives the cosine where it is ahead of the plan)."""
    runs = {}
    for name, step in (("steady", lambda i: 0.5), ("burst", lambda i: 2.0 if 60 <= i < 62 else 0.5)):
        lines = []
        trainer, learner = _trainer(_config(tmp_path / name, planned_chars_per_s=2 * CHARS), tmp_path / name,
                                    step=step, lines=lines)
        progress = trainer.run()
        runs[name] = [re.sub(r"at [\d,]+ chars/s", "", line) for line in _replan_lines(lines)], progress
        assert learner.lrs[-1] == FLOOR and progress.elapsed <= MAX_TIME + 0.5, lines   # the step in flight ends
    assert len(runs["burst"][0]) == len(runs["steady"][0])


def test_a_machine_that_gets_busy_still_ends_fully_decayed_with_a_best_checkpoint(tmp_path):
    """Planned and running at 2 steps a second, then four times slower from the 40th second on: the validations
    that follow re-plan, and the run ends at the floor, before the deadline, with best.safetensors written."""
    lines = []
    cfg = _config(tmp_path, planned_chars_per_s=2 * CHARS)
    trainer, learner = _trainer(cfg, tmp_path, step=lambda i: 0.5 if i < 80 else 2.0, lines=lines)
    progress = trainer.run()
    assert len(_replan_lines(lines)) >= 1, lines
    assert progress.iteration == progress.plan_iters and learner.lrs[-1] == FLOOR, lines
    assert progress.elapsed <= MAX_TIME
    assert (tmp_path / "best.safetensors").exists() and math.isfinite(progress.best_val)


class FakeLoad:
    """Other processes hold `others` of the one core while the fake clock is between `since` and `until`."""

    cores = 1

    def __init__(self, clock: FakeClock, until: float, others: float = 0.5, since: float = 0.0):
        self.clock, self.until, self.others, self.since, self.started = clock, until, others, since, clock.now

    def start(self):
        self.started = self.clock.now

    def others_cores(self):
        span = self.clock.now - self.started
        held = max(0.0, min(self.clock.now, self.until) - max(self.started, self.since))
        return self.others * held / span if span > 0 else 0.0


def _busy_run(tmp_path, busy_for: float, metered: bool, lines: list):
    """Planned at 2 steps a second, the quiet machine's speed; others hold half the core for the first `busy_for`
    seconds (a step takes twice as long then). `metered`: the run's load meter sees them."""
    clock = FakeClock()
    until = clock.now + busy_for
    trainer, learner = _trainer(_config(tmp_path, planned_chars_per_s=2 * CHARS), tmp_path, lines=lines, clock=clock,
                                step=lambda i: 1.0 if clock.now < until else 0.5,
                                load=FakeLoad(clock, until) if metered else None)
    return trainer.run(), learner, trainer


def test_a_load_that_comes_and_goes_is_planned_as_lasting_as_long_again_not_for_good(tmp_path):
    """Others take half the core for the first 30 s. Planning the rest of the run at the busy speed (no meter)
    shortens the schedule to what that speed allows and decays the rate ahead of time; with the meter, the plan
    counts on the busy speed for as long again as the load has lasted, says so in one line, and reaches the
    load's end at a higher rate. Both end at the floor, by the deadline, within the margin of it."""
    runs = {}
    for metered in (False, True):
        lines = []
        progress, learner, trainer = _busy_run(tmp_path / str(metered), 30.0, metered, lines)
        assert learner.lrs[-1] == FLOOR and progress.iteration == progress.plan_iters, lines
        assert MAX_TIME * (1 - replan.MARGIN - replan.SLACK) <= progress.elapsed <= MAX_TIME
        runs[metered] = learner.lrs, _replan_lines(lines)
    at_load_end = 30   # the 30th step ends when the load does (a second each until then)
    assert runs[True][0][at_load_end] > runs[False][0][at_load_end]
    assert any("other processes have had 50% of its cores for" in line and "planned as lasting as long again"
               in line for line in runs[True][1]), runs[True][1]
    assert not any("other processes" in line for line in runs[False][1])


def test_a_load_that_stays_is_planned_in_full_and_the_run_still_ends_decayed(tmp_path):
    """Others hold half the core throughout: the plan counts on the busy speed for ever longer, in full once the
    load has run for half the budget, and the run ends at the floor before the deadline with a best checkpoint."""
    lines = []
    progress, learner, _ = _busy_run(tmp_path, MAX_TIME * 2, True, lines)
    assert any("other processes have had 50% of its cores" in line for line in lines), lines
    assert learner.lrs[-1] == FLOOR and progress.iteration == progress.plan_iters, lines
    assert MAX_TIME * (1 - replan.MARGIN - replan.SLACK) <= progress.elapsed <= MAX_TIME
    assert all(b <= a for a, b in zip(learner.lrs[1:], learner.lrs[2:]))   # the rate never jumped back up
    assert (tmp_path / "best.safetensors").exists() and math.isfinite(progress.best_val)


@pytest.mark.parametrize("load_starts", [35.5, 36.0, 48.5])
def test_a_load_that_starts_mid_run_never_lengthens_the_plan(load_starts, tmp_path):
    """Quiet at 2 steps a second until `load_starts`, then others take three quarters of the core (steps 4x slower):
    the window the speed is measured over still holds quiet steps, but the speed the plan counts on after the load
    is never above what the run measured quiet, so no re-plan moves the end further out."""
    lines = []
    clock = FakeClock()
    since = clock.now + load_starts
    trainer, learner = _trainer(_config(tmp_path, planned_chars_per_s=2 * CHARS), tmp_path, lines=lines, clock=clock,
                                step=lambda i: 2.0 if clock.now >= since else 0.5,
                                load=FakeLoad(clock, since + 10 * MAX_TIME, others=0.75, since=since))
    planned = trainer.progress.plan_iters
    progress = trainer.run()
    ends = [int(m.group(1).replace(",", "")) for m in (re.search(r"ends at iteration ([\d,]+)", line)
                                                          for line in _replan_lines(lines)) if m]
    assert ends and all(b <= a for a, b in zip([planned, *ends], ends)), lines
    assert learner.lrs[-1] == FLOOR and progress.iteration == progress.plan_iters, lines


def test_a_plain_max_time_cosine_run_plans_from_what_it_measures_and_says_nothing(tmp_path):
    """Without auto there is no probe: the cosine follows the clock until a tenth of the budget, then the plan
    made from the measured speed (silently: the schedule did not change, it became exact)."""
    lines = []
    trainer, learner = _trainer(_config(tmp_path), tmp_path, step=lambda i: 1.0, lines=lines)
    assert trainer.progress.plan_iters is None
    progress = trainer.run()
    assert _replan_lines(lines) == [] and progress.plan_iters is not None
    assert progress.iteration == progress.plan_iters and learner.lrs[-1] == FLOOR
    # 1 s a step from the check at 10 s on, no validation before the end: as many steps as the time left holds,
    # less the slack the plan keeps
    assert progress.plan_iters == int(replan.FIRST_CHECK * MAX_TIME + (1 - replan.FIRST_CHECK) * MAX_TIME
                                      * (1 - replan.SLACK))


@pytest.mark.parametrize("bound", [dict(max_iters=60), dict(epochs=0.15)])
def test_a_run_bounded_by_iterations_or_epochs_is_never_replanned(bound, tmp_path):
    """--max-iters or --epochs with --max-time: the cosine follows the iterations, whatever the speed (here a
    quarter of what auto's probe said), exactly lr0/10 + (lr0 - lr0/10)(1 + cos(pi i / N)) / 2."""
    lines = []
    cfg = _config(tmp_path, planned_chars_per_s=4 * CHARS, **bound)
    trainer, learner = _trainer(cfg, tmp_path, step=lambda i: 1.0, lines=lines)
    progress = trainer.run()
    n = 60
    assert trainer.planner is None and progress.plan_iters is None and _replan_lines(lines) == []
    assert progress.iteration == n
    expected = [FLOOR + 0.5 * (LR0 - FLOOR) * (1 + math.cos(math.pi * i / n)) for i in range(n)]
    assert learner.lrs == pytest.approx(expected, rel=1e-12)   # the same formula, evaluated in another order


def test_resume_after_a_replan_continues_the_replanned_schedule_exactly(tmp_path):
    """Stopped (as by Ctrl-C) after the re-plan and resumed, the run gives the same learning rates, step for step,
    as the run that was never stopped, and ends at the same iteration: resume.safetensors holds the plan."""
    from charrnn.checkpoint import read_resume

    half = lambda i: 1.0   # noqa: E731 - half the probed speed, as above
    straight, _ = _trainer(_config(tmp_path / "a", planned_chars_per_s=2 * CHARS), tmp_path / "a", half)
    whole = straight.run()
    first, first_learner = _trainer(_config(tmp_path / "b", planned_chars_per_s=2 * CHARS), tmp_path / "b", half,
                                    stop_after=40)
    first.run()
    saved = read_resume(tmp_path / "b", first_learner.model.config).progress
    assert saved["iteration"] == 40 and saved["plan_iters"] == whole.plan_iters     # the re-plan is in the file
    lines = []
    again, again_learner = _trainer(_config(tmp_path / "b", planned_chars_per_s=2 * CHARS), tmp_path / "b", half,
                                    lines=lines)
    again.restore()
    again.run()
    assert first_learner.lrs + again_learner.lrs == straight.learner.lrs
    assert again.progress.iteration == whole.iteration and _replan_lines(lines) == []


def test_a_longer_max_time_on_resume_replans_for_the_time_now_left(tmp_path):
    """Stopped after 40 steps and resumed with twice the --max-time: the plan is made again for the time now left
    at the speed it measured (a step a second), and the cosine goes on from the rate it had down to the floor at
    the new end."""
    cfg = _config(tmp_path, planned_chars_per_s=2 * CHARS)
    first, first_learner = _trainer(cfg, tmp_path, step=lambda i: 1.0, stop_after=40)
    stopped = first.run()
    longer = _config(tmp_path, planned_chars_per_s=2 * CHARS, max_time=2 * MAX_TIME)
    again, again_learner = _trainer(longer, tmp_path, step=lambda i: 1.0)
    again.restore()
    assert stopped.plan_iters < 100 and again.progress.plan_iters > 40 + 0.9 * (2 * MAX_TIME - stopped.elapsed)
    progress = again.run()
    assert again_learner.lrs[0] == pytest.approx(first_learner.lrs[-1], rel=0.02)   # no jump, up or down
    assert again_learner.lrs[-1] == FLOOR and progress.iteration == progress.plan_iters
    assert progress.elapsed <= 2 * MAX_TIME


def test_the_plan_is_recorded_in_metrics_and_a_damaged_plan_is_refused(tmp_path):
    import json

    from charrnn.checkpoint import read_resume, read_safetensors, write_safetensors
    from charrnn.errors import UserError

    trainer, learner = _trainer(_config(tmp_path, planned_chars_per_s=2 * CHARS), tmp_path, step=lambda i: 1.0)
    progress = trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    plans = [r for r in rows if "plan_iters" in r]
    assert len(plans) == 1 and plans[0]["plan_iters"] == progress.plan_iters
    assert plans[0]["plan_chars_per_s"] == pytest.approx(CHARS)
    arrays, meta = read_safetensors(tmp_path / "resume.safetensors")
    meta["progress"]["plan_iters"] = 0
    write_safetensors(tmp_path / "resume.safetensors", arrays, meta)
    with pytest.raises(UserError, match="plan_iters is 0, not a positive count"):
        read_resume(tmp_path, learner.model.config)


def test_the_validations_are_left_out_of_the_measured_speed():
    """Steps of 1 s, and a validation of 3 s after every fifth: the speed is a step a second, and a validation
    costs 3 s (what the interval held beyond its step)."""
    meter = replan.SpeedMeter(window=5.0)
    meter.start(0.0)
    now = 0.0
    for i in range(1, 21):
        now += 1.0 + (3.0 if i > 1 and (i - 1) % 5 == 0 else 0.0)
        meter.tick(now, "validation" if i > 1 and (i - 1) % 5 == 0 else "step")
    assert meter.seconds_per_step() == 1.0 and meter.validation == 3.0


# ---- planning on machines of another kind, and the speed cache -------------------------------------------------
VOCAB = 65


def _fake_probe_step(cfg, model_cfg, hidden, bf16, device, world):
    """A step of a machine whose cost grows with the weights, bf16 1.6x faster, two threads 1.9x faster."""
    import torch

    per_char = (2e-7 + 4e-12 * auto.weights(hidden, VOCAB)) / (1.6 if bf16 else 1.0)
    per_char /= 1.9 if torch.get_num_threads() >= 2 else 1.0
    seconds = per_char * auto.BATCH * auto.PROBE_SEQ_LEN
    return lambda: time.sleep(seconds)


@pytest.fixture
def plan_auto(monkeypatch, tmp_path):
    """_apply_auto for a 5M-character text with the fake probe, in a private user cache; returns (train, model)."""
    import torch

    from charrnn import capabilities
    from charrnn.train import cli
    from charrnn.train.distributed import World

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "_probe_step", _fake_probe_step)
    monkeypatch.setattr(cli, "_load_meter", lambda device: None)   # the fake machine sleeps: no load of its own to see
    capabilities._cache.cache_clear()
    threads = torch.get_num_threads()

    def plan(max_time=600.0, threads_now=1, fake_cpu=None):
        if fake_cpu:
            monkeypatch.setenv(capabilities.FAKE_VARIABLE, fake_cpu)
        else:
            monkeypatch.delenv(capabilities.FAKE_VARIABLE, raising=False)
        torch.set_num_threads(threads_now)
        try:
            cfg = TrainConfig(max_time=max_time, out=str(tmp_path / "r"))
            return cli._apply_auto(cfg, ModelConfig(vocab_size=VOCAB), set(), 5_000_000, 500_000,
                                   torch.device("cpu"), World())
        finally:
            torch.set_num_threads(threads)
    yield plan
    capabilities._cache.cache_clear()


def _narrowest(train) -> float:
    """The probe's best speed at its narrowest width, either precision: the same model on both machines."""
    return max(v for k, v in train.auto["probe_chars_per_s"].items() if k.startswith(f"{auto.PROBE_WIDTHS[0]}/"))


def test_fewer_threads_plan_a_slower_machine_and_no_wider_a_model(plan_auto):
    one_train, one_model = plan_auto(threads_now=1)
    two_train, two_model = plan_auto(threads_now=2)
    assert _narrowest(one_train) < _narrowest(two_train)
    assert one_model.hidden <= two_model.hidden


def test_a_cpu_without_bf16_plans_in_float32_and_no_wider_a_model(plan_auto):
    import torch

    from charrnn import capabilities

    without_train, without_model = plan_auto(fake_cpu="no-bf16")
    assert not without_train.bf16 and set(k.split("/")[1] for k in without_train.auto["probe_chars_per_s"]) == \
        {"float32"}
    with_train, with_model = plan_auto()
    assert without_model.hidden <= with_model.hidden
    if capabilities.bf16_training(torch.device("cpu"), "library", "lstm"):   # where bf16 runs, it was chosen
        assert with_train.bf16 and _narrowest(without_train) < _narrowest(with_train)


def test_a_short_budget_plans_from_the_speed_measured_here_and_says_so(plan_auto, capsys):
    """A long run probes and keeps what it found; a short one (no cache for its threads: it probes) then plans
    from that, says so, and probes nothing; another number of threads is another machine."""
    plan_auto(max_time=600.0, threads_now=2)
    assert "auto: probing" in capsys.readouterr().out
    plan_auto(max_time=20.0, threads_now=1)
    assert "auto: probing" in capsys.readouterr().out              # one thread: nothing kept for it
    train, _ = plan_auto(max_time=20.0, threads_now=2)
    said = capsys.readouterr().out
    assert "auto: probing" not in said and "as a run measured it" in said
    assert train.auto["speed_measured_ago_s"] is not None and train.auto["probe_seconds"] == 0.0
    assert train.max_time == 20.0                                 # no probe: the whole budget trains


def test_calibrating_the_cache_makes_it_predict_what_training_measured(monkeypatch, tmp_path):
    """The kept line of a precision is rescaled so that it predicts the measured speed at the trained width, and
    every other width in proportion."""
    from charrnn.train import speed_cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    points = ((auto.weights(192, VOCAB), 4e-5), (auto.weights(640, VOCAB), 2e-4))
    speed_cache.store("m", auto.Speed({False: points}))
    before = speed_cache.load("m")
    speed_cache.calibrate("m", 384, VOCAB, False, 0.5 * before.chars_per_second(384, VOCAB))
    after = speed_cache.load("m")
    assert after.chars_per_second(384, VOCAB) == pytest.approx(0.5 * before.chars_per_second(384, VOCAB), rel=1e-12)
    assert after.chars_per_second(1024, VOCAB) == pytest.approx(0.5 * before.chars_per_second(1024, VOCAB), rel=1e-12)
    assert after.measured_ago is not None and after.measured_ago < 60
    (tmp_path / "charrnn").joinpath(speed_cache._path().name).write_text("{not json")
    assert speed_cache.load("m") is None                           # a damaged cache is a probe, not a crash


def test_a_plan_record_that_does_not_read_plans_as_a_plain_run(tmp_path):
    """config.json's auto.plan is read once, here: damaged, the run still follows the clock (no crash, no probe's
    plan); a sound one gives auto's rule."""
    sound = _config(tmp_path, planned_chars_per_s=2 * CHARS)
    assert replan.rule_for(sound, 400).first == (sound.auto["plan"]["iterations"], 2 * CHARS)
    for damage in ({"iterations": "many"}, {"chars_per_s": None}, {"chars_per_s": -1.0}):
        cfg = _config(tmp_path, auto={"plan": {**sound.auto["plan"], **damage}})
        rule = replan.rule_for(cfg, 400)
        assert rule is not None and rule.first is None and rule.evals is None


def test_auto_first_plan_ends_within_its_pass_cap_in_whole_windows(tmp_path):
    """(A run made while auto capped its passes resumes with its cap.) auto counts its pass cap in characters
    (here 67.5 iterations' worth); the run counts whole windows (66): the
    first plan must end there, at the floor, not be cut off by the cap one step above it."""
    cfg = _config(tmp_path, planned_chars_per_s=2 * CHARS, planned_iters=10_000)
    trainer, learner = _trainer(cfg, tmp_path, step=lambda i: 0.001)
    cap = int(OLD_PASS_CAP * trainer.train.num_windows)
    assert trainer.progress.plan_iters == cap
    progress = trainer.run()
    assert progress.iteration == cap and learner.lrs[-1] == FLOOR


class ScriptedValidation(TimedLearner):
    """Validations score `losses[k]` at the k-th validation (then the last one again), whatever the model does."""

    def __init__(self, *args, losses, **kwargs):
        super().__init__(*args, **kwargs)
        self.losses, self.validations, self.windows, self.at = losses, 0, 0, []

    def eval_loss(self, x, y, state, **labels):
        _, state = super().eval_loss(x, y, state, **labels)
        if self.windows == 0:
            self.at.append(self.trainer.progress.iteration)   # the iteration each validation scores
        loss = self.losses[min(self.validations, len(self.losses) - 1)]
        self.windows += 1
        if self.windows == VAL_WINDOWS:
            self.windows, self.validations = 0, self.validations + 1
        return loss, state


def _scripted(cfg, tmp_path, losses, step=lambda i: 0.5, lines=None, stop_after=None, windows=20):
    """A small text (20 windows: the plateau comes after several passes) whose validations score `losses`."""
    trainer, learner = _trainer(cfg, tmp_path, step, stop_after=stop_after, lines=lines, windows=windows)
    scripted = ScriptedValidation(learner.inner, learner.clock, step, stop_after, losses=losses)
    scripted.trainer, trainer.learner = trainer, scripted
    return trainer, scripted


def _anneal_lines(lines):
    return [line for line in lines if "decays to its floor by iteration" in line]


PLATEAU = [3.0, 2.2, 2.3, 2.4, 2.0, 1.9, 1.8, 1.8]   # best at the 2nd validation, then two worse ones


def test_a_plateau_decays_to_the_floor_over_a_short_tail_and_ends_the_run_there(tmp_path):
    """auto's plan, planned right (2 steps a second) over the whole budget: the validation loss stops improving at
    the second validation; after two more without a new best the schedule decays from the rate it has to its floor
    over a quarter of the iterations run so far, says so in one line, and the run ends there, well before the
    deadline, with the decay's validations run and best.safetensors written."""
    lines = []
    cfg = _config(tmp_path, planned_chars_per_s=2 * CHARS, anneal_after=2, pass_cap=None)
    trainer, learner = _scripted(cfg, tmp_path, PLATEAU, lines=lines)
    planned, every = trainer.progress.plan_iters, trainer.progress.plan_eval_every
    progress = trainer.run()
    said = _anneal_lines(lines)
    assert len(said) == 1, lines
    at = 4 * every                                  # the fourth validation is the second without a new best
    tail = max(replan.ANNEAL_EVALS, int(replan.ANNEAL_SHARE * at))
    assert said[0] == (f"auto: no new best in 2 validations (best 2.2000, iteration {2 * every:,}): back to the best "
                       f"weights, the learning rate now decays to its floor by iteration {at + tail:,} "
                       f"(was {planned:,}), and the run ends there")
    assert progress.plan_annealed_at == at and progress.iteration == progress.plan_iters == at + tail
    assert learner.lrs[-1] == FLOOR
    assert all(b <= a for a, b in zip(learner.lrs[at - 1:], learner.lrs[at:]))   # no jump at the change
    assert learner.lrs[at] == pytest.approx(learner.lrs[at - 1], rel=0.05)
    assert learner.validations >= 4 + replan.ANNEAL_EVALS          # the tail is validated on the way down
    assert progress.best_val == pytest.approx(1.8) and progress.elapsed < MAX_TIME * 0.75
    assert (tmp_path / "best.safetensors").exists()


def test_a_loss_that_keeps_improving_runs_the_whole_plan(tmp_path):
    lines = []
    falling = [3.0 - 0.1 * k for k in range(30)]
    cfg = _config(tmp_path, planned_chars_per_s=2 * CHARS, anneal_after=2, pass_cap=None)
    trainer, learner = _scripted(cfg, tmp_path, falling, lines=lines)
    planned = trainer.progress.plan_iters
    progress = trainer.run()
    assert _anneal_lines(lines) == [] and progress.plan_annealed_at is None
    assert progress.iteration == planned and learner.lrs[-1] == FLOOR


def test_a_plateau_shorter_than_half_the_run_so_far_is_noise_and_the_plan_goes_on(tmp_path):
    """Best at the 8th validation, two a little worse (within RISE), then better again: at the 10th, two validations
    span a fifth of the iterations run (a high learning rate's noise on a busy machine ended a run at a fifth of its
    plan that way); the run goes on. A run that stays worse starts the decay once as long has passed since its best as
    before it, and not one validation sooner."""
    late = [3.0 - 0.1 * k for k in range(8)] + [2.32, 2.33] + [2.2 - 0.05 * k for k in range(30)]   # within RISE
    stuck = [3.0 - 0.1 * k for k in range(8)] + [2.32] * 30   # a flat plateau, within RISE of the best
    ends = {}
    for name, losses in (("late", late), ("stuck", stuck)):
        lines = []
        cfg = _config(tmp_path / name, planned_chars_per_s=2 * CHARS, anneal_after=2, pass_cap=None, evals=32)
        trainer, learner = _scripted(cfg, tmp_path / name, losses, lines=lines)
        progress = trainer.run()
        ends[name] = (progress.plan_annealed_at, len(_anneal_lines(lines)), learner.at)
    assert ends["late"][:2] == (None, 0)
    annealed_at, said, at = ends["stuck"]
    best_at = at[7]                       # the 8th validation scored the best loss; every later one is worse
    assert said == 1 and annealed_at in at and annealed_at - best_at >= replan.PLATEAU_SHARE * annealed_at
    before = at[at.index(annealed_at) - 1]
    assert before - best_at < replan.PLATEAU_SHARE * before   # the validation before was still too soon


class Rewinds:
    """Records each set_parameters of the trainer's model with best.safetensors as it is at that moment."""

    def __init__(self, trainer, tmp_path):
        from charrnn.checkpoint import load_weights

        self.calls, model = [], trainer.learner.model
        original = model.set_parameters

        def spy(params):
            best = load_weights(tmp_path / "best.safetensors", model.config) if (
                tmp_path / "best.safetensors").exists() else None   # (none before the first validation is saved)
            self.calls.append((trainer.progress.iteration, {k: np.array(v) for k, v in params.items()}, best))
            original(params)
        model.set_parameters = spy


@pytest.mark.parametrize("average", ["none", "ema"])
def test_a_loss_risen_well_above_its_best_decays_from_the_best_weights_before_half_the_run(average, tmp_path):
    """Best at the 8th validation, then two averaging more than RISE above it (a small text learnt by heart): the
    decay starts at the 10th, long before as long since the best as before it, from the best validation's weights
    (those in best.safetensors, not the drifted ones), and the line says why. With --weight-average ema the best
    weights are the average validated then, and the average starts again from them."""
    lines = []
    risen = [3.0 - 0.1 * k for k in range(8)] + [2.4, 2.45] + [2.2 - 0.05 * k for k in range(30)]
    cfg = _config(tmp_path, planned_chars_per_s=2 * CHARS, anneal_after=2, pass_cap=None, evals=32,
                  weight_average=average)
    trainer, learner = _scripted(cfg, tmp_path, risen, lines=lines)
    rewinds = Rewinds(trainer, tmp_path)
    restarts = []
    if trainer.average is not None:
        restart = trainer.average.restart
        trainer.average.restart = lambda params, at: (restarts.append((at, params)), restart(params, at))
    progress = trainer.run()
    at, said = learner.at, _anneal_lines(lines)
    assert progress.plan_annealed_at == at[9] and at[9] - at[7] < replan.PLATEAU_SHARE * at[9]
    assert len(said) == 1 and said[0].startswith(
        f"auto: the last 2 validations averaged over 2% above the best (best 2.3000, iteration {at[7]:,}): back to "
        "the best weights"), said
    rewound = [call for call in rewinds.calls
               if call[2] is not None and all(np.array_equal(call[1][k], call[2][k]) for k in call[2])]
    assert [call[0] for call in rewound] == [at[9]]
    if average == "none":
        assert rewound == rewinds.calls
    else:   # each validation put the average in and the last step's weights back, around the rewind
        assert len(rewinds.calls) == 2 * len(at) + 1
    _, params, best = rewound[0]
    assert params.keys() == best.keys() and all(np.array_equal(params[k], best[k]) for k in best)
    assert [a for a, _ in restarts] == ([at[9]] if average == "ema" else [])   # and the average starts again there
    assert all(np.array_equal(restarts[0][1][k], best[k]) for k in best) if restarts else True
    drifted = learner.get_parameters()   # the weights went on training after the rewind: not the best's any more
    assert not all(np.array_equal(drifted[k], best[k]) for k in best)


def test_a_run_stopped_between_its_best_and_the_plateau_rewinds_to_the_same_weights_when_resumed(tmp_path):
    """The best weights live in memory; a resumed run reads them from best.safetensors: stopped after the best,
    resumed, it rewinds to the same weights and ends on the same weights as the run never stopped."""
    risen = [3.0 - 0.1 * k for k in range(8)] + [2.4, 2.45] + [2.2 - 0.05 * k for k in range(30)]

    def cfg(name):
        return _config(tmp_path / name, planned_chars_per_s=2 * CHARS, anneal_after=2, pass_cap=None, evals=32)

    straight, straight_learner = _scripted(cfg("a"), tmp_path / "a", risen)
    whole = straight.run()
    stop = straight_learner.at[8]                # at the first validation past the best
    first, first_learner = _scripted(cfg("b"), tmp_path / "b", risen, stop_after=stop)
    first.run()
    again, again_learner = _scripted(cfg("b"), tmp_path / "b", risen[first_learner.validations:])
    again.restore()
    rewinds = Rewinds(again, tmp_path / "b")
    progress = again.run()
    assert progress.plan_annealed_at == whole.plan_annealed_at == straight_learner.at[9]
    assert len(rewinds.calls) == 1 and progress.iteration == whole.iteration
    ended, resumed = straight_learner.get_parameters(), again_learner.get_parameters()
    assert all(np.array_equal(ended[k], resumed[k]) for k in ended)


def test_a_resumed_run_without_its_best_weights_decays_from_where_it_is_and_does_not_say_it_went_back(tmp_path):
    """best.safetensors gone (deleted by hand) before --resume: nothing to rewind to, so the plateau's decay starts
    from the weights the run has, and its line does not claim otherwise."""
    risen = [3.0 - 0.1 * k for k in range(8)] + [2.4, 2.45] + [2.2 - 0.05 * k for k in range(30)]
    cfg = _config(tmp_path, planned_chars_per_s=2 * CHARS, anneal_after=2, pass_cap=None, evals=32)
    straight, straight_learner = _scripted(cfg, tmp_path / "straight", risen)
    straight.run()
    first, first_learner = _scripted(cfg, tmp_path, risen, stop_after=straight_learner.at[8])
    first.run()
    (tmp_path / "best.safetensors").unlink()
    lines = []
    again, again_learner = _scripted(cfg, tmp_path, risen[first_learner.validations:], lines=lines)
    again.restore()
    calls = []
    again.learner.model.set_parameters = calls.append
    progress = again.run()
    said = _anneal_lines(lines)
    assert progress.plan_annealed_at == straight_learner.at[9] and calls == []
    assert len(said) == 1 and "back to the best weights" not in said[0] and said[0].startswith(
        "auto: the last 2 validations averaged over 2% above the best"), said


def test_a_plateau_within_the_first_passes_is_noise_and_the_plan_goes_on(tmp_path):
    """On a text the run has read less than twice (400 windows: the whole run is half a pass) the same losses start
    no decay: fresh text does not overfit, so two worse validations are a high learning rate's noise."""
    lines = []
    cfg = _config(tmp_path, planned_chars_per_s=2 * CHARS, anneal_after=2, pass_cap=None)
    trainer, learner = _scripted(cfg, tmp_path, PLATEAU, lines=lines, windows=400)
    planned = trainer.progress.plan_iters
    progress = trainer.run()
    assert _anneal_lines(lines) == [] and progress.plan_annealed_at is None
    assert progress.iteration == planned and learner.lrs[-1] == FLOOR


@pytest.mark.parametrize("who", ["plain", "no validation to watch"])
def test_only_auto_with_validation_ends_on_a_plateau(who, tmp_path):
    """A plain --max-time run (the user's schedule) and an auto run without validation never anneal early."""
    lines = []
    cfg = (_config(tmp_path) if who == "plain"
           else _config(tmp_path, planned_chars_per_s=2 * CHARS, anneal_after=None, pass_cap=None))
    if who == "plain":
        cfg = TrainConfig(**{**cfg.__dict__, "eval_every": 20})
    trainer, learner = _scripted(cfg, tmp_path, PLATEAU, lines=lines)
    progress = trainer.run()
    assert _anneal_lines(lines) == [] and progress.plan_annealed_at is None
    assert progress.elapsed > MAX_TIME * 0.9 and learner.lrs[-1] == pytest.approx(FLOOR, rel=0.02)


@pytest.mark.parametrize("decay_step", [0.25, 4.0])
def test_during_the_decay_the_clock_may_bring_its_end_nearer_never_further(decay_step, tmp_path):
    """Annealing, then twice as fast: the tail's end stays where the plateau put it. Eight times slower: the
    deadline would fall inside the tail, so a re-plan brings the end nearer, and the run still ends at the floor,
    before the deadline."""
    lines = []
    cfg = _config(tmp_path, planned_chars_per_s=2 * CHARS, anneal_after=2, pass_cap=None)
    trainer, learner = _scripted(cfg, tmp_path, PLATEAU, lines=lines)
    at = 4 * trainer.progress.plan_eval_every
    learner.step = lambda i: 0.5 if i < at else decay_step
    progress = trainer.run()
    tail = max(replan.ANNEAL_EVALS, int(replan.ANNEAL_SHARE * at))
    if decay_step < 0.5:
        assert progress.iteration == at + tail and _replan_lines(lines) == [], lines
    else:
        assert at < progress.iteration == progress.plan_iters < at + tail and len(_replan_lines(lines)) == 1, lines
        assert progress.elapsed <= MAX_TIME
    assert learner.lrs[-1] == FLOOR


def test_resume_during_the_decay_continues_it_exactly(tmp_path):
    """Stopped in the tail and resumed: the same rates step for step as the run never stopped, and the same end."""
    from charrnn.checkpoint import read_resume

    def cfg(name):
        return _config(tmp_path / name, planned_chars_per_s=2 * CHARS, anneal_after=2, pass_cap=None)

    straight, straight_learner = _scripted(cfg("a"), tmp_path / "a", PLATEAU)
    every = straight.progress.plan_eval_every
    whole = straight.run()
    stop = 4 * every + 3
    first, first_learner = _scripted(cfg("b"), tmp_path / "b", PLATEAU, stop_after=stop)
    first.run()
    saved = read_resume(tmp_path / "b", first_learner.model.config).progress
    assert saved["plan_annealed_at"] == whole.plan_annealed_at and saved["plan_iters"] == whole.plan_iters
    again, again_learner = _scripted(cfg("b"), tmp_path / "b", PLATEAU[first_learner.validations:])
    again.restore()
    progress = again.run()
    assert first_learner.lrs + again_learner.lrs == straight_learner.lrs
    assert progress.iteration == whole.iteration


def test_the_checkpoint_at_a_new_best_holds_its_iteration_and_a_resume_measures_the_plateau_from_it(tmp_path):
    """Stopped right after a validation that found a new best: resume.safetensors holds that iteration as the
    best's (not the one before), so the resumed run decays no sooner than the run never stopped."""
    from charrnn.checkpoint import read_resume

    def cfg(name):
        return _config(tmp_path / name, planned_chars_per_s=2 * CHARS, anneal_after=2, pass_cap=None, evals=32)

    losses = [3.0 - 0.1 * k for k in range(12)] + [2.0] * 30      # the 12th validation is the last best
    straight, straight_learner = _scripted(cfg("a"), tmp_path / "a", losses)
    whole = straight.run()
    twelfth = straight_learner.at[11]
    first, first_learner = _scripted(cfg("b"), tmp_path / "b", losses, stop_after=twelfth)
    first.run()
    saved = read_resume(tmp_path / "b", first_learner.model.config).progress
    assert saved["iteration"] == twelfth and saved["plan_best_at"] == twelfth
    again, again_learner = _scripted(cfg("b"), tmp_path / "b", losses[first_learner.validations:])
    again.restore()
    progress = again.run()
    assert progress.plan_annealed_at == whole.plan_annealed_at is not None
    assert first_learner.lrs + again_learner.lrs == straight_learner.lrs


def test_more_time_on_resume_after_the_decay_measures_a_new_plateau_from_there(tmp_path):
    """A run that ended on a plateau, resumed with a longer --max-time: its plan is made again for the time left
    and its plateau is measured from the resume, so the next validation does not end it again at once."""
    lines = []
    cfg = _config(tmp_path, planned_chars_per_s=2 * CHARS, anneal_after=2, pass_cap=None)
    trainer, learner = _scripted(cfg, tmp_path, PLATEAU, lines=lines)
    ended = trainer.run()
    assert ended.plan_annealed_at is not None and len(_anneal_lines(lines)) == 1
    lines = []
    longer = _config(tmp_path, planned_chars_per_s=2 * CHARS, anneal_after=2, pass_cap=None, max_time=2 * MAX_TIME)
    again, again_learner = _scripted(longer, tmp_path, [1.81], lines=lines)   # never a new best again (within RISE)
    again.restore()
    assert again.progress.plan_annealed_at is None and again.progress.plan_best_at == ended.iteration
    progress = again.run()
    assert progress.iteration > ended.iteration + 10
    again_at = progress.plan_annealed_at        # never a new best: a plateau ends it again, once as long as the run
    assert again_at is not None and again_at - ended.iteration >= replan.PLATEAU_SHARE * again_at
    assert len(_anneal_lines(lines)) == 1
