"""Plans that follow the clock: a schedule planned from --max-time, re-planned when training runs at another
speed than the plan assumed.

A run whose budget is time alone (`--preset auto`, or `--max-time` with `--schedule cosine` and neither
--max-iters nor --epochs) has its cosine planned in iterations: as many as the time left allows at the speed
training runs at. auto's first plan comes from its probe; a plain run's from the speed it measures over the
first FIRST_CHECK of its budget (until then its cosine follows the clock, as before). After that the speed of
the latest steps (WINDOW of the budget) is compared with the plan before every validation and at least every
CHECK_EVERY of the budget. Where the plan's end would miss the deadline by more than MARGIN of the budget, the
same way at every check over a whole WINDOW (the machine got busy, or is just slower than the probe said, or
validations take longer than reserved; a slow moment on a shared machine is not enough), the run re-plans its
length, auto's spacing of validations (as many as the time auto reserved for them allows, at most its EVALS)
and its pass cap, and says so in one line. The learning rate never jumps: the cosine goes on from
the rate it has, down to its floor at the new end (the same re-anchoring as a --resume with a new budget).

Where a load meter shows other processes taking the run's cores (train/machine_load.py: a single process on a
CPU), the slowdown is theirs, and nobody knows for how long: the plan for the time left counts on the speed
measured for as long again as they have been running, and on the run's own speed (the measured one over the
share of its cores it had) after that. A load that comes for a minute and goes costs the schedule what it took and
no more, where planning the whole rest at the busy speed would have decayed the rate early and then stretched a
tail at a low rate; a load that stays is planned in full once it has lasted as long as the time left, so the
cosine still ends at its floor about the deadline (a load that starts late and stays may leave the last
re-plan within MARGIN of it: a step or two past the budget, near the floor). The run's own speed is never taken as
above the fastest it measured without a load: just after a load starts, the latest steps' window still holds
quiet ones. (Not auto's probe's speed either: it times B32 windows, and a wide alphabet trains on smaller ones,
faster per character.)

The measured speed leaves out every interval that held more than a training step (a validation, a checkpoint,
a sample, the first step after a start, when kernels are built); what a validation took beyond a step is kept
to reserve time for the validations the plan still holds. Every number here is read from the run's agreed
clock (the slowest process's, under torchrun) at the same iterations, so every process plans alike.

auto's plans also end early where the text has taught what it can: past its second pass over the text
(ANNEAL_PASSES), a plateau (Rule.anneal_after validations in a row without a new best, and either none for
PLATEAU_SHARE of the iterations run so far, as long since the best as before it, or those validations averaging
RISE above the best: a small text being learnt by heart) moves the plan's end to a short tail (ANNEAL_SHARE of the
iterations so far, with ANNEAL_EVALS validations in it). The weights go back to the best validation's (the
Trainer keeps them; a resumed run reads best.safetensors), as the ones since have drifted or memorized, and the
cosine falls from the rate it has to its floor over the tail; the run ends there, its best checkpoint the better
of the plateau's and the decayed model's. A short plateau about the best is not enough: at a high learning rate
the validation loss of a list of names wandered for four validations (a sixth of the run) and the early decay
cost 0.4 nats/char against the run that went on (docs/performance.md). Once annealing, a re-plan may only bring
the end nearer (the deadline), never move it out.

The plan lives in the Trainer's Progress (plan_iters, plan_eval_every, plan_chars_per_s, plan_eval_seconds,
plan_best_at, plan_annealed_at, plan_recent_vals), so resume.safetensors holds it and --resume continues the
re-planned schedule exactly.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import islice
from typing import Optional, Tuple

from charrnn.config import TrainConfig
from charrnn.train.machine_load import BUSY_SHARE, LoadMeter, own_share

FIRST_CHECK = 0.10   # of --max-time: the speed is first compared with the plan here, then at every validation
CHECK_EVERY = 0.05   # and at least this often
MARGIN = 0.05        # re-planned where the plan's end would miss the deadline by more than this share of it
SLACK = 0.01         # of the time left, kept free: a plan ends just before the deadline, not just after it
WINDOW = 0.05        # of --max-time: the speed is that of the latest steps over this long ...
MIN_STEPS = 5        # ... and at least this many
PLATEAU_SHARE = 0.5  # a plateau: no new best for this share of the iterations run so far (and anneal_after checks)
ANNEAL_SHARE = 0.25  # a plateau's decay takes this share of the iterations run so far ...
ANNEAL_EVALS = 4     # ... and validates this many times on the way down
RISE = 0.02          # ... or sooner, where the latest anneal_after validations average this far above the best
ANNEAL_PASSES = 2.0  # a plateau before this many passes over the text is a high rate's noise: fresh text does not
#                      overfit, so the plan goes on


@dataclass(frozen=True)
class Rule:
    """What a run planned from time keeps fixed, and what its plans may change."""

    max_time: float
    chars_per_iter: int                  # characters of the global batch per iteration
    windows_per_epoch: int
    eval_every: int                      # --eval-every: the spacing where `evals` is None
    evals: Optional[int] = None          # auto: this many validations per run, spaced over the plan, or fewer
    eval_seconds: float = 0.0            # what a validation is expected to take, until one is measured (auto:
    #                                      all `evals` of them may take the time this reserves)
    max_passes: Optional[float] = None   # auto: a time budget reads the text at most this many times
    first: Optional[Tuple[int, float]] = None   # auto's plan from its probe: (iterations, chars/s)
    anneal_after: Optional[int] = None   # auto: validations in a row without a new best, at least, of a plateau
    speaker: str = "schedule"            # who the one line names ("auto" for auto's runs)


@dataclass(frozen=True)
class Plan:
    iterations: int          # the cosine reaches its floor at the end of this iteration, and the run ends
    eval_every: int          # validate every this many iterations
    chars_per_s: float       # the speed it assumes


def rule_for(cfg: TrainConfig, windows_per_epoch: int) -> Optional[Rule]:
    """The rule of a run whose schedule is planned from time; None for any other (a run bounded by
    --max-iters or --epochs, or with the epoch schedule, is never re-planned)."""
    auto = (cfg.auto or {}).get("plan")
    if not cfg.max_time or cfg.schedule != "cosine" or cfg.max_iters is not None:
        return None
    if cfg.epochs is not None and not (auto and cfg.epochs == auto.get("max_passes")):
        return None   # the user's --epochs bounds the run (auto's own pass cap is part of its plan)
    common = dict(max_time=cfg.max_time, chars_per_iter=cfg.batch_size * cfg.seq_len,
                  windows_per_epoch=windows_per_epoch, eval_every=cfg.eval_every)
    try:  # auto's plan as config.json holds it (train/cli.py); a record that does not read is no plan
        first = (int(auto["iterations"]), float(auto["chars_per_s"]))
        evals, seconds = (int(auto["evals"]) if auto.get("evals") else None), float(auto.get("eval_seconds") or 0)
        passes = float(auto["max_passes"]) if auto.get("max_passes") else None   # auto's pass cap, before plateaus
        anneal = int(auto["anneal_after"]) if auto.get("anneal_after") else None
    except (TypeError, KeyError, ValueError):
        return Rule(**common)
    if first[1] <= 0:
        return Rule(**common)
    return Rule(**common, evals=evals, eval_seconds=seconds, max_passes=passes, first=first, speaker="auto",
                anneal_after=anneal if anneal and anneal > 0 else None)


class SpeedMeter:
    """Seconds per training step, from the clock read after each step, over the latest steps (`window` seconds
    of them, MIN_STEPS at least); intervals that held other work are left out, and what a validation took
    beyond a step is kept."""

    def __init__(self, window: float):
        self.window = window
        self.last: Optional[float] = None
        self.recent: deque = deque()      # the latest clean steps' seconds, and their sum
        self.recent_seconds = 0.0
        self.total = [0, 0.0]             # clean steps and their seconds since this process started
        self.validation: Optional[float] = None

    def start(self, elapsed: float) -> None:
        self.last = elapsed

    def tick(self, elapsed: float, after: str) -> None:
        """The clock after a step; `after` says what else the interval held: "step" (nothing), "validation",
        "other" (a checkpoint or a sample) or "start" (the first step of this process)."""
        if self.last is not None:
            seconds = elapsed - self.last
            if after == "step":
                self.total = [self.total[0] + 1, self.total[1] + seconds]
                self.recent.append(seconds)
                self.recent_seconds += seconds
                while len(self.recent) > MIN_STEPS and self.recent_seconds - self.recent[0] >= self.window:
                    self.recent_seconds -= self.recent.popleft()
            elif after == "validation" and self.recent:
                steps = list(islice(reversed(self.recent), MIN_STEPS))   # the step the interval also held
                self.validation = max(0.0, seconds - sum(steps) / len(steps))
        self.last = elapsed

    def seconds_per_step(self) -> Optional[float]:
        """Over the latest steps, once they span the window (None before: too few to tell)."""
        if len(self.recent) < MIN_STEPS or self.recent_seconds < self.window or self.recent_seconds <= 0:
            return None
        return self.recent_seconds / len(self.recent)

    def chars_per_second(self, chars_per_iter: int) -> Optional[float]:
        """Over every clean step of this process (what the speed cache keeps)."""
        steps, seconds = self.total
        return steps * chars_per_iter / seconds if steps >= MIN_STEPS and seconds > 0 else None


class Planner:
    """Measures the speed after every step and re-plans where the plan has gone far off (Trainer calls it).
    It reads and writes the plan_* fields of the Trainer's Progress (`p` below), and nothing else."""

    def __init__(self, rule: Rule, load: Optional[LoadMeter] = None, threads: int = 1):
        self.rule, self.meter = rule, SpeedMeter(WINDOW * rule.max_time)
        self.next_check = 0.0   # elapsed seconds: the first step past FIRST_CHECK checks, then CHECK_EVERY on
        self.wanted = (0, 0.0)  # what the checks find (0 the plan holds, 1 it ends too early, -1 too late), since
        self.load, self.threads = load, threads
        self.load_since = 0.0                  # elapsed seconds: when the load meter last started
        self.busy_since: Optional[float] = None   # since when the checks have found others taking the cores
        self.busy_share: Optional[float] = None   # the share of its cores the run had over the latest check's span
        self.quiet_speed: Optional[float] = None  # the fastest speed a check found with the cores the run's own

    def start(self, elapsed: float) -> None:
        """The run (or its resumption) starts its steps."""
        self.meter.start(elapsed)
        if self.load is not None:
            self.load.start()
            self.load_since = elapsed

    def first_plan(self) -> Optional[Plan]:
        """auto's plan from its probe, adopted as the run starts (a plain run has none until it measures)."""
        if self.rule.first is None:
            return None
        iterations, chars_per_s = self.rule.first
        if self.rule.max_passes is not None:   # auto counts passes in characters; the run, in whole windows
            iterations = min(iterations, int(self.rule.max_passes * self.rule.windows_per_epoch))
        return Plan(max(1, iterations), self.rule.eval_every, chars_per_s)

    def observe(self, p, after: str, at_validation: bool) -> Optional[Tuple[Plan, Optional[str]]]:
        """After a step: (a new plan, the line saying so or None for a plain run's first), or None to keep it.
        The speed is compared with the plan once the clock has passed FIRST_CHECK of the budget, before every
        validation and at least every CHECK_EVERY of it."""
        self.meter.tick(p.elapsed, after)
        if after == "validation" and self.meter.validation is not None:   # an average, so one slow moment
            measured, before = self.meter.validation, p.plan_eval_seconds  # does not decide
            p.plan_eval_seconds = round(measured if before is None else (before + measured) / 2, 6)
        if p.elapsed < FIRST_CHECK * self.rule.max_time or not (at_validation or p.elapsed >= self.next_check):
            return None
        seconds = self.meter.seconds_per_step()
        if seconds is None:
            return None
        self.next_check = p.elapsed + CHECK_EVERY * self.rule.max_time
        plan = self.plan(p, self._expected_speed(p, self.rule.chars_per_iter / seconds))
        if p.plan_annealed_at is not None:   # the decay after a plateau: only the deadline may bring its end nearer
            plan = Plan(min(plan.iterations, p.plan_iters), p.plan_eval_every or plan.eval_every, plan.chars_per_s)
        if p.plan_iters is not None:
            off = (plan.iterations - p.plan_iters) * seconds
            way = 0 if abs(off) <= MARGIN * self.rule.max_time else 1 if off > 0 else -1
            if way == 0 or way != self.wanted[0]:
                self.wanted = (way, p.elapsed)
                return None
            if p.elapsed - self.wanted[1] < self.meter.window:
                return None   # re-planned only when checks a whole window apart find it off the same way
            self.wanted = (0, p.elapsed)
        return plan, (self._line(p, plan) if p.plan_iters is not None else None)

    def settle(self, p, rewinds: bool) -> Optional[Tuple[Plan, str]]:
        """After a validation (it records the best's iteration): on a plateau as the module's docstring defines
        it, the plan that decays to its floor over a short tail from here and ends there, and the line saying so
        (`rewinds`: that the Trainer takes the best weights back); None to keep the plan."""
        rule = self.rule
        if p.evals_since_best == 0:
            p.plan_best_at = p.iteration
        if rule.anneal_after is not None and p.last_val is not None:
            p.plan_recent_vals = [*(p.plan_recent_vals or []), p.last_val][-rule.anneal_after:]
        if (rule.anneal_after is None or p.plan_annealed_at is not None or p.plan_iters is None
                or p.evals_since_best < rule.anneal_after or p.epochs_done(rule.windows_per_epoch) < ANNEAL_PASSES):
            return None
        recent = p.plan_recent_vals or []
        long = p.iteration - (p.plan_best_at or 0) >= PLATEAU_SHARE * p.iteration
        risen = len(recent) == rule.anneal_after and sum(recent) / len(recent) > p.best_val * (1 + RISE)
        if not (long or risen):
            return None   # a shorter plateau, the loss about its best, is as likely a high rate's noise, which the
            #               decay still to come ends
        tail = max(ANNEAL_EVALS, int(ANNEAL_SHARE * p.iteration))
        if p.iteration + tail >= p.plan_iters:
            return None   # the plan ends about as soon anyway
        p.plan_annealed_at = p.iteration
        every = max(1, tail // ANNEAL_EVALS) if rule.evals else rule.eval_every   # --eval-every is the user's
        plan = Plan(p.iteration + tail, every, p.plan_chars_per_s or 0.0)
        why = (f"no new best in {p.evals_since_best} validations" if long else
               f"the last {rule.anneal_after} validations averaged over {RISE:.0%} above the best")
        back = "back to the best weights, " if rewinds else ""   # (the Trainer's, where it has them)
        line = (f"{rule.speaker}: {why} (best {p.best_val:.4f}, iteration {p.plan_best_at or 0:,}): {back}the "
                f"learning rate now decays to its floor by iteration {plan.iterations:,} (was {p.plan_iters:,}), "
                "and the run ends there")
        return plan, line

    def _expected_speed(self, p, measured: float) -> float:
        """The speed to plan the time left at: the measured one, or where others took the cores since the last
        check, the measured one for as long again as they have been at it and the run's own after that."""
        if self.load is None:
            return measured
        share = own_share(self.load, self.threads)
        since, self.load_since = self.load_since, p.elapsed
        self.load.start()
        if share >= BUSY_SHARE:
            self.busy_since = self.busy_share = None
            self.quiet_speed = max(self.quiet_speed or 0.0, measured)
            return measured
        self.busy_since = since if self.busy_since is None else self.busy_since
        self.busy_share = share
        left = max(0.0, self.rule.max_time - p.elapsed)
        busy = min(left, p.elapsed - self.busy_since)
        own = measured / share   # never above what this run measured quiet: just after a load starts, the window
        if self.quiet_speed:     # still holds steps from before it (a load from the start leaves none to cap by)
            own = min(own, max(self.quiet_speed, measured))
        return measured if left <= 0 else (busy * measured + (left - busy) * own) / left

    def plan(self, p, chars_per_s: float) -> Plan:
        """The plan for the time left at `chars_per_s`: as many iterations as fit before the deadline (less
        SLACK, and the validations they hold), at most the pass cap."""
        rule = self.rule
        step = rule.chars_per_iter / chars_per_s
        usable = max(0.0, rule.max_time - p.elapsed) * (1 - SLACK)
        validation = p.plan_eval_seconds if p.plan_eval_seconds is not None else rule.eval_seconds
        end = p.iteration + usable / step
        for _ in range(2):   # the spacing of auto's validations depends on the plan's length: settle it
            every = self._spacing(end, validation)
            end = p.iteration + usable / (step + validation / every)
        if rule.max_passes is not None:
            end = min(end, rule.max_passes * rule.windows_per_epoch)
        iterations = max(1, p.iteration, int(end))
        return Plan(iterations, self._spacing(iterations, validation), chars_per_s)

    def _spacing(self, iterations: float, validation: float) -> int:
        """--eval-every, or auto's: `evals` validations over the plan, fewer where they would take longer than
        the time reserved for them."""
        rule = self.rule
        if not rule.evals:
            return rule.eval_every
        affordable = int(rule.evals * rule.eval_seconds / validation) if validation > 0 else rule.evals
        return max(1, int(iterations) // max(1, min(rule.evals, affordable)))

    def _line(self, p, plan: Plan) -> str:
        """The one line a re-plan prints: what was measured, and where the schedule now ends."""
        why = f"training runs at {plan.chars_per_s:,.0f} chars/s, not the {p.plan_chars_per_s or 0:,.0f} planned"
        if self.busy_share is not None:
            why = (f"other processes have had {1 - self.busy_share:.0%} of its cores for "
                   f"{p.elapsed - self.busy_since:.0f} s: planned as lasting as long again, "
                   f"at {plan.chars_per_s:,.0f} chars/s on average, not the {p.plan_chars_per_s or 0:,.0f} planned")
        if p.plan_eval_seconds is not None:
            why += f", and a validation takes {p.plan_eval_seconds:.{1 if p.plan_eval_seconds >= 1 else 2}f} s"
        capped = (self.rule.max_passes is not None
                  and plan.iterations >= int(self.rule.max_passes * self.rule.windows_per_epoch))
        line = (f"{self.rule.speaker}: {why}; the schedule now ends at iteration {plan.iterations:,} "
                f"(was {p.plan_iters:,})")
        if capped:
            line += f", after {self.rule.max_passes:g} passes over the text"
        if plan.eval_every != (p.plan_eval_every or self.rule.eval_every):
            line += f", validating every {plan.eval_every:,}"
        return line
