"""Conformance: every engine, every kind of data, every runtime, one answer (#26).

Each feature is tested on its own elsewhere; this file walks the seams between them. Read the tables first;
a new row, column, resume flag or refusal is one line in one of them.

    DATA       the kinds of data: one file, a folder of documents, --max-vocab (the unknown symbol U+FFFD),
               one-hot inputs (--embed 0), a CJK text, a folder of labelled folders (--label-by folder: every
               runtime samples and scores under a label, and scores a text under every label), and a text of
               over 512 distinct characters (a wide alphabet: `--preset auto` ties its head to its embedding).
    ROWS       one run each: an engine, a kind of data and a cell (and a preset, or model flags: --tied). Together
               they hold every engine, every kind of data and every cell, in the combinations users make; `--preset
               auto` trains one (its choices, bf16 where the CPU has it, through every step below; the row's flags
               fix the size).
               Each row's run is trained once per module (Lab) and taken through the lifecycle: train -> resume
               (plain, and with each RESUME_CHANGES flag) -> fine-tune (--init-from) -> export (ONNX float32 and
               int8, the web page) -> sample / eval.
    RUNTIMES   the columns: what runs the fine-tuned model.
    cells      every (row, runtime), test_cell: the same seed gives the same text as the reference wherever the
               runtime draws the same way (float32: `charrnn sample --checkpoint --impl naive`; int8: the same
               with --quantize int8); eval gives the same loss to 1e-4 (int8: within INT8_BOUND of float32);
               an empty prime starts a new document and --stop-at-sep ends it where the run has a separator;
               U+FFFD is never drawn. A cell that cannot hold (ONNX int8 of a GRU or RNN: ONNX Runtime has no
               kernel) asserts its one-line refusal instead: REFUSED_CELLS.
    REFUSALS   commands that must be refused: one line, exit 2, and the run directory byte for byte as before.

Quick rows run in the quick subset; the TensorFlow rows are marked slow (TensorFlow's import and graph
building take seconds) and skip without TensorFlow. The web page runs in headless Chromium where Playwright
and /usr/bin/chromium (or $CHARRNN_CHROMIUM) are installed, else its charrnn.js in Node, else it skips.
Models are tiny (2 layers of 16) and train a few iterations: the suite checks agreement, not quality.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

# ---- the tables ---------------------------------------------------------------------------------------------------

ENGLISH = ("The lamps along the harbour wall are lit, and the tide is turning.\n"
           "Who will row the ferry out before the storm comes in? Not I, said the keeper.\n") * 5
CJK = ("床前明月光，疑是地上霜。举头望明月，低头思故乡。\n春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。\n"
       "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。🌙\n") * 4  # and one character outside the BMP
WIDE = "".join("".join(chr(0x4E00 + (7 * i + j) % 600) for j in range(40)) + "\n" for i in range(90))  # 601 chars


@dataclass(frozen=True)
class Data:
    """A kind of data: files to write (a path with a folder makes a collection) and the flags it trains with."""

    files: dict
    flags: tuple = ()
    eval_extra: str = ""  # added to the text `eval` reads: characters a --max-vocab run dropped, read as U+FFFD
    label: str = ""       # a labelled kind: the label every runtime samples and scores under
    other_label: str = ""

    @property
    def documents(self) -> bool:
        return len(self.files) > 1


DATA = {
    "file": Data({"text.txt": ENGLISH}),
    "folder": Data({"docs/harbour.txt": "The lamps along the harbour wall are lit.\n" * 3,
                    "docs/ferry.txt": "Who will row the ferry out before the storm?\n" * 3,
                    "docs/keeper.txt": "Not I, said the keeper, not tonight.\n" * 3,
                    "docs/notes/tide.txt": "The tide is turning; light them all.\n" * 3},  # a folder below, too
                   ("--val-frac", "0.25")),
    "max_vocab": Data({"text.txt": ENGLISH}, ("--max-vocab", "8"), eval_extra="Zany zebras \u2603 "),
    "one_hot": Data({"text.txt": ENGLISH}, ("--embed", "0")),
    "cjk": Data({"poems.txt": CJK}),
    "wide": Data({"wide.txt": WIDE}),
    "labelled": Data({"lines/harbour/wall.txt": "The lamps along the harbour wall are lit.\n" * 3,
                      "lines/harbour/tide.txt": "The tide is turning; light them all.\n" * 3,
                      "lines/ferry/row.txt": "Who will row the ferry out before the storm?\n" * 3,
                      "lines/ferry/keeper.txt": "Not I, said the keeper, not tonight.\n" * 3},
                     ("--label-by", "folder", "--val-frac", "0.25"), label="harbour", other_label="ferry"),
}


@dataclass(frozen=True)
class Row:
    engine: str
    data: str
    cell: str
    preset: str = ""
    flags: tuple = ()   # model flags the row trains with, besides TRAIN's sizes

    @property
    def id(self) -> str:
        return (f"{self.engine}-{self.data}-{self.cell}" + (f"-{self.preset}" if self.preset else "")
                + "".join(f"-{flag.lstrip('-')}" for flag in self.flags))

    @property
    def tied(self) -> bool:
        """The head tied to the embedding: by the flag, or by auto on a wide alphabet."""
        return "--tied" in self.flags or (self.preset == "auto" and self.data == "wide")

    @property
    def train_flags(self) -> list:
        """--preset auto with a time budget probes (or reads this machine's speed) and chooses; --max-iters then
        bounds the run, and the explicit size flags (TRAIN) replace auto's width."""
        return ["--preset", self.preset, "--max-time", "20"] if self.preset else []


ROWS = [
    Row("naive", "file", "lstm"),          # the seed tutorial's engine on one text
    Row("library", "folder", "lstm"),      # the fast path on a folder of documents: the common case
    Row("scratch", "max_vocab", "gru"),
    Row("library", "one_hot", "rnn"),
    Row("naive", "cjk", "gru"),
    Row("tf", "folder", "gru"),
    Row("keras", "max_vocab", "lstm"),
    Row("scratch", "labelled", "lstm"),
    Row("keras", "labelled", "gru"),
    Row("library", "folder", "lstm", preset="auto"),
    Row("library", "wide", "lstm", preset="auto"),   # auto's wide-alphabet tied head through every runtime
    Row("scratch", "file", "gru", flags=("--tied",)),  # a tied head by the flag, in the other PyTorch engine
]
SLOW_ENGINES = {"tf", "keras"}

RUNTIMES = ["checkpoint", "int8", "onnx", "onnx-int8", "web"]
REFUSED_CELLS = {  # (cell, runtime): the words the one-line refusal must hold
    ("gru", "onnx-int8"): "LSTM models only",
    ("rnn", "onnx-int8"): "LSTM models only",
}

TRAIN = ["--layers", "2", "--hidden", "16", "--batch-size", "2", "--seq-len", "16", "--seed", "3"]
ITERS = {"train": 3, "resume": 5, "fine_tune": 3}
# A flag changed on --resume is in force from then on: config.json records it and the weights differ from a plain
# resume's. xfail: (engines, reason) where it does not hold yet.
RESUME_CHANGES = {
    "--lr": ("0.05", None),
    "--weight-decay": ("0.5", None),
    "--grad-clip": ("0.001", None),
    "--weight-average": ("ema", None),   # the weights saved from then on are an average (tests/test_weight_average.py)
}

# What the text and eval checks use: a seed, a length, and a temperature at which these barely trained models
# draw the separator within the length, so that --stop-at-sep has a document to end (test_cell asserts it did).
SEED, LENGTH, HOT = 5, 120, "3"
# int8 (charrnn's step and ONNX Runtime's) rounds weights to 1/127 of a row's largest and activations to 1/255 of
# their range: unbiased errors, ~1e-4 nats/char over these texts; 0.01 is a hundred times that (the derivation in
# tests/test_export_onnx.py, next to INT8_BOUND).
INT8_BOUND = 0.01
EXACT = 1e-4  # float32 runtimes: the same sums in another order (observed under 1e-5)


@dataclass
class Refusal:
    """A command that must be refused. `args(lab_run, scratch)` builds it on a copy of the fine-tuned run
    (`lab_run.ft`, copied so a failing case cannot damage the others); `applies(row)` says where it is asked."""

    args: object
    needle: str
    applies: object = lambda row: True
    xfail: object = None  # (predicate on row, reason) for a defect known and owned elsewhere


def label_args(run) -> list:
    """`--label NAME` for a labelled row's sample and eval (the refusal asked is another), none elsewhere."""
    return ["--label", DATA[run.row.data].label] if DATA[run.row.data].label else []


REFUSALS = {
    "resume with another --seq-len": Refusal(
        lambda r, tmp: ["train", *r.data_args, "--out", r.ft, "--resume", "--seq-len", "8"], "--seq-len"),
    "resume with another --optimizer": Refusal(
        lambda r, tmp: ["train", *r.data_args, "--out", r.ft, "--resume", "--optimizer", "adam"], "--optimizer"),
    "resume on other data": Refusal(
        lambda r, tmp: ["train", "--data", r.other_text, "--out", r.ft, "--resume"], "data changed"),
    "resume a labelled run on other labelled data": Refusal(
        lambda r, tmp: ["train", "--data", r.other_text, r.other_text.with_name("snowman.txt"), "--label-by", "path",
                        "--out", r.ft, "--resume"], "data changed", applies=lambda row: bool(DATA[row.data].label)),
    "sample a labelled run under a label it lacks": Refusal(
        lambda r, tmp: ["sample", "--checkpoint", r.ft, "--label", "nobody", "--length", "5"], "not a label",
        applies=lambda row: bool(DATA[row.data].label)),
    "fine-tune with another --hidden": Refusal(
        lambda r, tmp: ["train", *r.data_args, "--out", tmp / "new", "--init-from", r.ft, "--hidden", "24",
                        "--max-iters", "1"], "--hidden"),
    "--stop-at-sep on a run without documents": Refusal(
        lambda r, tmp: ["sample", "--checkpoint", r.ft, "--stop-at-sep", "--length", "5"], "--stop-at-sep",
        applies=lambda row: not DATA[row.data].documents),
    "eval of characters outside the vocabulary": Refusal(
        lambda r, tmp: ["eval", "--checkpoint", r.ft, "--data", r.snowman, *label_args(r)],
        "outside the model's vocabulary",
        applies=lambda row: row.data != "max_vocab"),
    "--quantize with an .onnx file": Refusal(
        lambda r, tmp: ["sample", "--onnx", r.onnx, "--quantize", "int8", "--length", "5"], "--quantize"),
    "a web page in int8": Refusal(
        lambda r, tmp: ["export", "--checkpoint", r.ft, "--format", "web", "--out", tmp / "site", "--quantize",
                        "int8"], "--quantize"),
    "fine-tune an auto run with --preset auto": Refusal(
        lambda r, tmp: ["train", *r.data_args, "--out", tmp / "new", "--init-from", r.ft, "--preset", "auto",
                        "--max-time", "5"], "--init-from keeps the other run's", applies=lambda row: bool(row.preset)),
    "resume with another --head-bias": Refusal(
        lambda r, tmp: ["train", *r.data_args, "--out", r.ft, "--resume", "--head-bias", "random"], "--head-bias"),
    "fine-tune with --head-bias": Refusal(
        lambda r, tmp: ["train", *r.data_args, "--out", tmp / "new", "--init-from", r.ft, "--head-bias", "unigram",
                        "--max-iters", "1"], "--head-bias"),
    "train a tied run with an engine that holds two weights": Refusal(
        lambda r, tmp: ["train", *r.data_args, "--out", tmp / "new", "--init-from", r.ft, "--impl", "naive",
                        "--max-iters", "1"], "cannot train a tied head", applies=lambda row: row.tied),
    "resume a run with --tied": Refusal(
        lambda r, tmp: ["train", *r.data_args, "--out", r.ft, "--resume", "--tied"], "--tied",
        applies=lambda row: not row.tied),
    "ONNX int8 of a GRU or RNN": Refusal(
        lambda r, tmp: ["export", "--checkpoint", r.ft, "--format", "onnx", "--out", tmp / "m.onnx", "--quantize",
                        "int8"], "LSTM models only", applies=lambda row: row.cell != "lstm"),
}


def row_params(*columns):
    """pytest params: each row (slow where its engine is), or each (row, column) pair of the given columns."""
    slow = lambda row: [pytest.mark.slow] if row.engine in SLOW_ENGINES else []
    if not columns:
        return [pytest.param(row, id=row.id, marks=slow(row)) for row in ROWS]
    return [pytest.param(row, column, id=f"{row.id}-{column}", marks=slow(row))
            for row in ROWS for column in columns]


def refusal_params():
    """(row, refusal) wherever the refusal is asked of the row; strict xfail where a known defect stops it."""
    params = []
    for row in ROWS:
        for case, refusal in REFUSALS.items():
            if not refusal.applies(row):
                continue
            marks = [pytest.mark.slow] if row.engine in SLOW_ENGINES else []
            if refusal.xfail and refusal.xfail[0](row):
                marks.append(pytest.mark.xfail(reason=refusal.xfail[1], strict=True))
            params.append(pytest.param(row, case, id=f"{row.id}-{case}", marks=marks))
    return params


# ---- the lab: each row trained once, through the lifecycle ---------------------------------------------------------

@dataclass
class LabRun:
    """One row's run directories and exports."""

    row: Row
    data_args: list            # --data ... and the data kind's flags
    eval_data: Path            # what `eval` reads
    other_text: Path
    snowman: Path              # a text with a character no run has
    trained: Path              # after `train`
    resumed: Path              # after `--resume`
    changed: dict              # flag -> run resumed with that flag changed
    ft: Path                   # fine-tuned from `resumed` with --init-from
    outputs: dict = field(default_factory=dict)  # step -> CompletedProcess
    onnx: Path | None = None
    onnx_int8: Path | None = None
    site: Path | None = None


class Lab:
    def __init__(self, root: Path, cli):
        self.root, self.cli, self.runs = root, cli, {}

    def ok(self, args):
        done = self.cli.in_process([str(a) for a in args])
        assert done.returncode == 0, (args, done.stderr)
        return done

    def get(self, row: Row) -> LabRun:
        if row.id not in self.runs:
            if row.engine in SLOW_ENGINES:
                pytest.importorskip("tensorflow")
            self.runs[row.id] = self._walk(row)
        return self.runs[row.id]

    def _walk(self, row: Row) -> LabRun:
        home = self.root / row.id
        kind = DATA[row.data]
        for name, text in kind.files.items():
            (home / name).parent.mkdir(parents=True, exist_ok=True)
            (home / name).write_text(text, encoding="utf-8")
        data = home / (next(iter(kind.files)).split("/")[0] if kind.documents else next(iter(kind.files)))
        eval_data = data
        if kind.eval_extra:
            eval_data = home / "eval.txt"
            eval_data.write_text(kind.eval_extra + data.read_text(encoding="utf-8"), encoding="utf-8")
        (home / "other.txt").write_text("A different text altogether.\n" * 20, encoding="utf-8")
        (home / "snowman.txt").write_text(ENGLISH[:80] + "\u2603", encoding="utf-8")
        data_args = ["--data", data, *kind.flags]
        run = LabRun(row, data_args, eval_data, home / "other.txt", home / "snowman.txt", home / "trained",
                     home / "resumed", {}, home / "ft")
        run.outputs["train"] = self.ok(["train", *data_args, "--out", run.trained, "--impl", row.engine, "--cell",
                                        row.cell, *TRAIN, *row.flags, *row.train_flags, "--max-iters",
                                        ITERS["train"]])
        shutil.copytree(run.trained, run.resumed)
        run.outputs["resume"] = self.ok(["train", *data_args, "--out", run.resumed, "--resume", "--max-iters",
                                         ITERS["resume"]])
        for flag, (value, _) in RESUME_CHANGES.items():
            run.changed[flag] = home / f"resumed{flag}"
            shutil.copytree(run.trained, run.changed[flag])
            run.outputs[flag] = self.ok(["train", *data_args, "--out", run.changed[flag], "--resume", "--max-iters",
                                         ITERS["resume"], flag, value])
        run.outputs["fine_tune"] = self.ok(["train", *data_args, "--out", run.ft, "--init-from", run.resumed,
                                            "--impl", row.engine, "--batch-size", "2", "--seq-len", "16",
                                            "--max-iters", ITERS["fine_tune"]])
        self.ok(["export", "--checkpoint", run.ft, "--format", "onnx", "--out", home / "model.onnx"])
        run.onnx = home / "model.onnx"
        if row.cell == "lstm":
            self.ok(["export", "--checkpoint", run.ft, "--format", "onnx", "--out", home / "int8.onnx",
                     "--quantize", "int8"])
            run.onnx_int8 = home / "int8.onnx"
        self.ok(["export", "--checkpoint", run.ft, "--format", "web", "--out", home / "site"])
        run.site = home / "site"
        return run


@pytest.fixture(scope="module")
def lab(tmp_path_factory, run_cli) -> Lab:
    return Lab(tmp_path_factory.mktemp("lab"), run_cli)


# ---- the web page: Chromium, else Node --------------------------------------------------------------------------

CHROMIUM = os.environ.get("CHARRNN_CHROMIUM", "/usr/bin/chromium")


class WebPage:
    """charrnn.sample(prime, length, options) from an exported folder: in the page in headless Chromium (started on
    first use), or the page's charrnn.js run by Node (the same code without the DOM), or a skip."""

    def __init__(self):
        self.playwright = self.browser = None
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            sync_playwright = None
        self.chromium = sync_playwright if sync_playwright is not None and Path(CHROMIUM).exists() else None

    def sample(self, site: Path, prime: str, length: int, options: dict) -> str:
        if self.chromium is not None:
            return self._in_chromium(site, prime, length, options)
        if shutil.which("node") is None:
            pytest.skip("neither Chromium (with Playwright) nor Node.js is installed")
        script = ("globalThis.window = globalThis;\n"
                  f"require({json.dumps(str(site / 'model.js'))});\n"
                  f"require({json.dumps(str(site / 'charrnn.js'))});\n"
                  "process.stdout.write(JSON.stringify(window.charrnn.sample("
                  f"{json.dumps(prime)}, {length}, {json.dumps(options)})));\n")
        done = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def _in_chromium(self, site: Path, prime: str, length: int, options: dict) -> str:
        if self.browser is None:
            self.playwright = self.chromium().start()
            self.browser = self.playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page, errors = self.browser.new_page(), []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((site / "index.html").as_uri())  # opened from disk, as a user opens it
        page.wait_for_selector("body[data-ready='1']", timeout=10000)
        text = page.evaluate("([p, n, o]) => charrnn.sample(p, n, o)", [prime, length, options])
        page.close()
        assert errors == []
        return text

    def close(self) -> None:
        if self.browser is not None:
            self.browser.close()
            self.playwright.stop()


@pytest.fixture(scope="module")
def web():
    page = WebPage()
    yield page
    page.close()


# ---- running a runtime ------------------------------------------------------------------------------------------

class Runtimes:
    """`sample` and `eval` of one row's fine-tuned run, through any runtime (a column)."""

    def __init__(self, lab: Lab, web: WebPage, run: LabRun):
        self.lab, self.web, self.run = lab, web, run

    def args(self, runtime: str, engine: str | None = None, labelled: bool = True) -> list:
        """The flags that point `sample` / `eval` at this runtime; the checkpoint runs in the row's engine (the
        library engine for a naive row, so that two engines are compared)."""
        run = self.run
        engine = engine or (run.row.engine if run.row.engine != "naive" else "library")
        label = DATA[run.row.data].label
        return {"checkpoint": ["--checkpoint", run.ft, "--impl", engine],
                "int8": ["--checkpoint", run.ft, "--impl", engine, "--quantize", "int8"],
                "onnx": ["--onnx", run.onnx], "onnx-int8": ["--onnx", run.onnx_int8]}[runtime] + (
                    ["--label", label] if label and labelled else [])

    def sample(self, runtime: str, prime: str = "", stop: bool = False, hot: bool = False,
               engine: str | None = None) -> str:
        """What the runtime prints for a seeded sample (the prime, then the generated text), less the last newline."""
        if runtime == "web":
            options = {"seed": SEED, **({"temperature": float(HOT)} if hot else {}),
                       **({"stopAtSep": True} if stop else {}),
                       **({"label": DATA[self.run.row.data].label} if DATA[self.run.row.data].label else {})}
            return self.web.sample(self.run.site, prime, LENGTH, options)
        args = ["sample", *self.args(runtime, engine), "--prime", prime, "--length", LENGTH, "--seed", SEED,
                *(["--temperature", HOT] if hot else []), *(["--stop-at-sep"] if stop else [])]
        done = cli(self.lab, args)
        assert done.returncode == 0 and done.stdout.endswith("\n"), (args, done.stderr)
        return done.stdout[:-1]

    def evaluate(self, runtime: str, engine: str | None = None) -> dict:
        args = ["eval", *self.args(runtime, engine), "--data", self.run.eval_data, "--json"]
        done = cli(self.lab, args)
        assert done.returncode == 0, (args, done.stderr)
        return json.loads(done.stdout)


def cli(lab: Lab, args):
    return lab.cli.in_process([str(a) for a in args])


def assert_refused(done, needle: str) -> None:
    """One line on stderr, nothing on stdout, exit 2."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("charrnn: error:"), done.stderr
    assert needle in lines[0] and done.stdout == "", (lines[0], done.stdout)


def tree(path: Path) -> dict:
    """Every file under `path` (relative name -> sha256): the run directory byte for byte."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


# ---- the cells ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("row, runtime", row_params(*RUNTIMES))
def test_cell(lab, web, row, runtime):
    run = lab.get(row)
    kind, rt = DATA[row.data], Runtimes(lab, web, run)
    vocab = json.loads((run.ft / "vocab.json").read_text(encoding="utf-8"))
    refused = REFUSED_CELLS.get((row.cell, runtime))
    if refused:  # the export itself is refused: in one line, writing nothing
        before, out = tree(run.ft), run.ft.parent / "refused.onnx"
        assert_refused(cli(lab, ["export", "--checkpoint", run.ft, "--format", "onnx", "--out", out, "--quantize",
                                 "int8"]), refused)
        assert tree(run.ft) == before and not out.exists()
        return
    exact = runtime in ("checkpoint", "onnx", "web")  # float32: draws as the reference draws
    reference = "int8" if runtime == "int8" else "checkpoint"

    # the same seed gives the same text; an empty prime starts a new document where the run has documents
    text = rt.sample(runtime)
    if runtime != "onnx-int8":
        assert text == rt.sample(reference, engine="naive")
    else:
        assert text == rt.sample(runtime)  # its own numbers: the same draws each time
    assert len(text) == LENGTH and "\ufffd" not in text  # U+FFFD is never drawn

    # --stop-at-sep ends each sample at the separator, and is refused where there is none
    if kind.documents:
        assert "\x1e" in vocab
        whole = rt.sample(runtime, stop=True, hot=True)
        assert "\x1e" not in whole and len(whole) < LENGTH  # the document ended
        if runtime != "onnx-int8":
            assert whole == rt.sample(reference, stop=True, hot=True, engine="naive")
    elif runtime != "web":  # the page has no such option to refuse: it shows its checkbox only with a separator
        assert_refused(cli(lab, ["sample", *rt.args(runtime), "--stop-at-sep", "--length", 5]), "--stop-at-sep")

    # a --max-vocab run reads characters it dropped as U+FFFD, in a prime as in training, and never draws it
    if row.data == "max_vocab":
        assert "\ufffd" in vocab and "Z" not in vocab
        primed = rt.sample(runtime, prime="Zebra", hot=True)
        assert primed[:5].count("\ufffd") == sum(c not in vocab for c in "Zebra") and "\ufffd" not in primed[5:]
        if runtime != "onnx-int8":
            assert primed == rt.sample(reference, prime="Zebra", hot=True, engine="naive")

    # a labelled run: no sample without a label (the line names them); each label scores the text its own way, and
    # --by-label scores it under every label, best first, as the runtime's eval under each does
    if kind.label and runtime != "web":
        assert_refused(cli(lab, ["sample", *rt.args(runtime, labelled=False), "--length", 5]),
                       f"{kind.label}")
        by_label = cli(lab, ["eval", *rt.args(runtime, labelled=False), "--data", run.eval_data, "--by-label",
                             "--json"])
        assert by_label.returncode == 0, by_label.stderr
        scores = {entry["label"]: entry["loss"] for entry in json.loads(by_label.stdout)}
        other = cli(lab, ["eval", *rt.args(runtime, labelled=False), "--label", kind.other_label, "--data",
                          run.eval_data, "--json"])
        assert set(scores) == {kind.label, kind.other_label}
        assert scores[kind.other_label] == pytest.approx(json.loads(other.stdout)["loss"], abs=1e-9)
        assert scores[kind.label] != scores[kind.other_label]
        assert list(scores.values()) == sorted(scores.values())

    # eval: the same loss to 1e-4 (float32), within INT8_BOUND of it (int8); documents joined by the separator,
    # characters a --max-vocab run dropped read as U+FFFD
    if runtime != "web":  # the page samples; it has no eval
        got, want = rt.evaluate(runtime), rt.evaluate("checkpoint", engine="naive")
        assert got["characters"] == want["characters"] and got["skipped"] == want["skipped"] == 0
        assert abs(got["loss"] - want["loss"]) < (EXACT if exact else INT8_BOUND)
        if runtime == "int8":  # the same integer step whatever engine loaded the weights
            assert got["loss"] == pytest.approx(rt.evaluate("int8", engine="naive")["loss"], abs=1e-6)


# ---- the lifecycle ------------------------------------------------------------------------------------------------

def weights(run_dir: Path) -> dict:
    from charrnn.checkpoint import read_safetensors

    return read_safetensors(run_dir / "model.safetensors")[0]


def read_resume_params(run_dir: Path) -> dict:
    from charrnn.checkpoint import read_safetensors

    arrays = read_safetensors(run_dir / "resume.safetensors")[0]
    return {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}


def iteration(run_dir: Path) -> int:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return max(json.loads(line)["iter"] for line in lines if line.strip())


@pytest.mark.parametrize("row", row_params())
def test_lifecycle(lab, row):
    """train -> resume -> fine-tune: each step continues the last, and the run keeps what its data made it."""
    run = lab.get(row)
    assert iteration(run.trained) == ITERS["train"] and iteration(run.resumed) == ITERS["resume"]
    assert "resuming" in run.outputs["resume"].stdout
    trained, resumed, ft = weights(run.trained), weights(run.resumed), weights(run.ft)
    assert any(not np.array_equal(trained[k], resumed[k]) for k in trained)  # resume trained on
    assert any(not np.array_equal(resumed[k], ft[k]) for k in resumed)       # and so did the fine-tune
    config = {p: json.loads((p / "config.json").read_text())["model"] for p in (run.trained, run.ft)}
    assert config[run.trained] == config[run.ft]  # --init-from keeps the model's shape
    assert (run.trained / "vocab.json").read_bytes() == (run.ft / "vocab.json").read_bytes()
    records = [json.loads((p / "data.json").read_text(encoding="utf-8")) for p in (run.trained, run.ft)]
    for key in ("doc_sep", "unknown"):  # the separator and unknown symbol travel to the fine-tuned run
        assert records[0].get(key) == records[1].get(key), key
    assert (records[0].get("unknown") == "\ufffd") == (row.data == "max_vocab")
    assert (records[0].get("doc_sep") == "\x1e") == DATA[row.data].documents
    assert (config[run.ft]["embed"] == 0) == (row.data == "one_hot")
    assert config[run.trained].get("tied", False) == row.tied   # kept by resume and fine-tune, compared above
    if row.tied:     # one weight for both: the saved head is the embedding, through resume and fine-tune
        for params in (trained, resumed, ft):
            np.testing.assert_array_equal(params["head.weight"], params["embed.weight"])
    if row.preset:   # auto's embedding, which no row flag fixes: the head's width where the head is tied to it
        from charrnn.train import auto

        vocab = json.loads((run.trained / "vocab.json").read_text(encoding="utf-8"))
        hidden = config[run.trained]["hidden"]
        assert config[run.trained]["embed"] == auto.embed_for(len(vocab), hidden)
        assert (config[run.trained]["embed"] == hidden != auto.EMBED) == (row.data == "wide")


@pytest.mark.parametrize("row", row_params())
def test_a_new_run_starts_at_its_training_splits_character_frequencies(lab, row, tmp_path):
    """--head-bias unigram, the default, on every engine and kind of data: before its first step a new run's output
    bias is log P(c), each character's count in the training split plus a half over the total plus V/2, counted
    here from the split's characters (the separator, U+FFFD and characters outside the BMP included)."""
    from collections import Counter

    from charrnn.cli import build_parser
    from charrnn.data.dataset import training_data
    from charrnn.train.cli import build_configs

    run = lab.get(row)
    out = tmp_path / "new"
    lab.ok(["train", *run.data_args, "--out", out, "--impl", row.engine, "--cell", row.cell, *TRAIN,
            *row.train_flags, "--max-iters", 0])
    assert json.loads((out / "config.json").read_text())["train"]["head_bias"] == "unigram"
    given = vars(build_parser().parse_args(["train", *map(str, run.data_args)]))
    cfg, _ = build_configs({k: v for k, v in given.items() if k not in ("command", "handler", "overwrite")})
    data = training_data(cfg)
    counts, size = Counter(data.vocab.decode(data.train)), len(data.vocab)
    assert sum(counts.values()) == len(data.train)
    total = len(data.train) + 0.5 * size
    expected = np.array([np.log((counts[c] + 0.5) / total) for c in data.vocab.chars])
    assert np.allclose(weights(out)["head.bias"], expected, rtol=0, atol=1e-5)   # float32 of values under 20


def resume_params():
    """(row, flag) for every row and RESUME_CHANGES flag; strict xfail where a known defect stops it."""
    params = []
    for row in ROWS:
        for flag, (_, known) in RESUME_CHANGES.items():
            marks = [pytest.mark.slow] if row.engine in SLOW_ENGINES else []
            if known and row.engine in known[0]:
                marks.append(pytest.mark.xfail(reason=known[1], strict=True))
            params.append(pytest.param(row, flag, id=f"{row.id}-{flag}", marks=marks))
    return params


@pytest.mark.parametrize("row, flag", resume_params())
def test_a_flag_changed_on_resume_is_in_force(lab, row, flag):
    value, _ = RESUME_CHANGES[flag]
    run = lab.get(row)
    changed = run.changed[flag]
    assert f"{flag} {value}" in run.outputs[flag].stdout  # it says so
    saved = json.loads((changed / "config.json").read_text())["train"]
    setting = saved[flag[2:].replace("-", "_")]
    assert (setting == value) if isinstance(setting, str) else float(setting) == float(value)
    plain, other = weights(run.resumed), weights(changed)
    assert any(not np.array_equal(plain[k], other[k]) for k in plain)  # and it changed what was trained
    if flag == "--weight-average":   # what is saved, not how it trains: the weights trained are the plain resume's,
        trained = [read_resume_params(p) for p in (run.resumed, changed)]   # the average put in and back exactly
        assert all(np.array_equal(trained[0][k], trained[1][k]) for k in trained[0])
        assert any(not np.array_equal(other[k], trained[1][k]) for k in other)


# ---- the refusals -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("row, case", refusal_params())
def test_refused_commands_change_nothing(lab, row, case, tmp_path):
    refusal = REFUSALS[case]
    run = lab.get(row)
    copy = tmp_path / "run"
    shutil.copytree(run.ft, copy)  # a failing case must not damage the run the other tests read
    local = LabRun(**{**run.__dict__, "ft": copy})
    before = tree(copy)
    done = cli(lab, refusal.args(local, tmp_path))
    assert_refused(done, refusal.needle)
    assert tree(copy) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nor anything else (a new run, a page, a file)


def test_a_max_vocab_run_fine_tunes_on_new_text_growing_from_its_unknown_symbol(lab, tmp_path):
    """--init-from a --max-vocab run onto a text with characters it lacks: they join its vocabulary after its own
    (their rows from its U+FFFD rows), and its unknown symbol travels on (never drawn, read for what it lacks)."""
    run = lab.get(next(row for row in ROWS if row.data == "max_vocab" and row.engine not in SLOW_ENGINES))
    done = cli(lab, ["train", "--data", run.other_text, "--out", tmp_path / "ft", "--init-from", run.ft,
                     "--max-iters", 1, "--batch-size", 2, "--seq-len", 16])
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "ft" / "data.json").read_text(encoding="utf-8"))["unknown"] == "\ufffd"
    parent, child = (json.loads((p / "vocab.json").read_text(encoding="utf-8")) for p in (run.ft, tmp_path / "ft"))
    added = sorted(set(run.other_text.read_text(encoding="utf-8")) - set(parent))
    assert added and child == parent + added and "start as its U+FFFD rows" in done.stdout
    again = cli(lab, ["train", "--data", run.other_text, "--out", tmp_path / "ft", "--resume", "--max-iters", 2])
    assert again.returncode == 0, again.stderr   # and it resumes on the same text: its record is its own


@pytest.mark.parametrize("row", row_params())
def test_metrics_and_tensorboard_events_agree_through_resume_and_fine_tune(lab, row):
    """Every engine logs the same numbers the same way: each training row of metrics.jsonl has the gradient's
    norm (finite, before clipping), and the TensorBoard events hold exactly those rows, after a resume too."""
    run = lab.get(row)
    for directory in (run.trained, run.resumed, run.ft):
        train_rows = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()
                      if "train_loss" in line]
        assert train_rows and all(np.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in train_rows)
        if importlib.util.find_spec("tensorboard") is not None:  # the tensorboard extra (scripts/test.sh has it)
            from test_tensorboard import assert_events_equal_metrics

            assert assert_events_equal_metrics(directory) > 0
