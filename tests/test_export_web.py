"""`charrnn export --format web`: a static page whose JavaScript computes what the naive engine computes.

The folder is checked in Python (files, weights round-trip, refusals); the page itself runs in
headless Chromium through Playwright, opened from disk (file://, no server): its logits for a
prime match the naive engine within 1e-4, its random numbers are NumPy's default_rng's, and its
greedy and seeded samples are the text `charrnn sample` prints. The browser tests skip cleanly
without Playwright or Debian's chromium at /usr/bin/chromium (or $CHARRNN_CHROMIUM).
"""
import base64
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from browsers import CHROMIUM, chromium_browser

from charrnn.checkpoint import load_run, save_run_config, save_weights
from charrnn.cli import main
from charrnn.config import ModelConfig
from charrnn.data.vocab import Vocab
from charrnn.models import build_model
from charrnn.models.base import init_parameters

# Non-ASCII, a character outside the BMP (two UTF-16 units in JavaScript) and markup, all in the vocabulary
TEXT = ("The quick brown fox jumps over the lazy dog; café, naïve, 🙂!\n"
        "<b>bold</b> & <script>x</script> \"quoted\" 'single'\n") * 3
TOL = 1e-4


def make_run(run_dir: Path, cell="lstm", layers=2, hidden=24, embed=8, seed=0) -> Path:
    """A run directory with random weights, scaled up so the cells work away from zero."""
    run_dir.mkdir(parents=True, exist_ok=True)
    vocab = Vocab.from_text(TEXT)
    config = ModelConfig(vocab_size=len(vocab), cell=cell, layers=layers, hidden=hidden, embed=embed)
    save_run_config(run_dir, config, None)
    vocab.save(run_dir / "vocab.json")
    params = {k: v * (1.0 if k == "embed.weight" else 2.5) for k, v in init_parameters(config, seed).items()}
    save_weights(run_dir / "model.safetensors", params)
    return run_dir


def run_main(capsys, args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def read_model_js(path: Path) -> dict:
    text = path.read_text(encoding="ascii")
    start = text.index("window.CHARRNN_MODEL = ") + len("window.CHARRNN_MODEL = ")
    return json.loads(text[start:].rstrip().rstrip(";"))


# ---- the folder ----------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_one_hot_inputs_compute_the_naive_engines_logits_in_node(tmp_path, capsys, cell):
    """--embed 0 (no embedding table): the page feeds one-hot vectors; charrnn.js run by Node, no browser."""
    run = make_run(tmp_path / "run", cell=cell, layers=2, embed=0)
    assert run_main(capsys, ["export", "--checkpoint", run, "--format", "web", "--out", tmp_path / "site"])[0] == 0
    prime = TEXT[:80]
    script = ("globalThis.window = globalThis;\n"
              f"require({json.dumps(str(tmp_path / 'site' / 'model.js'))});\n"
              f"require({json.dumps(str(tmp_path / 'site' / 'charrnn.js'))});\n"
              f"process.stdout.write(JSON.stringify(window.charrnn.logits({json.dumps(prime)})));\n")
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    got = np.array(json.loads(out.stdout))
    config, vocab, params = load_run(run)
    assert config.embed == 0 and "embed.weight" not in params
    model = build_model("naive", config, params=params).eval()
    want, _ = model.forward(vocab.encode(prime).astype(np.int64)[None, :], model.initial_state(1))
    assert got.shape == want[0].shape and np.abs(got - want[0]).max() < TOL

def test_export_writes_a_folder_holding_the_exact_weights(tmp_path, capsys):
    run = make_run(tmp_path / "run", cell="gru", layers=2)
    code, out, err = run_main(capsys, ["export", "--checkpoint", run, "--format", "web", "--out", tmp_path / "site"])
    assert code == 0, err
    assert "index.html" in out
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == ["charrnn.js", "index.html", "model.js"]
    model = read_model_js(tmp_path / "site" / "model.js")
    _config, vocab, params = load_run(run)
    assert model["format"] == "charrnn-web/1" and model["config"]["cell"] == "gru"
    assert model["vocab"] == list(vocab.chars)
    blob = base64.b64decode(model["data"])
    for name, value in params.items():
        spec = model["tensors"][name]
        got = np.frombuffer(blob, "<f4", count=int(np.prod(spec["shape"])), offset=spec["offset"])
        assert np.array_equal(got.reshape(spec["shape"]), value)
    # exporting again into the same folder replaces the page; a folder holding anything else is refused
    code, _, err = run_main(capsys, ["export", "--checkpoint", run, "--format", "web", "--out", tmp_path / "site"])
    assert code == 0, err


@pytest.mark.parametrize("case", ["foreign folder", "file", "quantize", "bad run"])
def test_mistakes_are_refused_in_one_line(tmp_path, capsys, case):
    run = make_run(tmp_path / "run")
    out = tmp_path / "site"
    extra = []
    if case == "foreign folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "file":
        out.write_text("a file")
    elif case == "quantize":
        extra = ["--quantize", "int8"]
    elif case == "bad run":
        (run / "vocab.json").write_text("[1, 2")
    code, stdout, err = run_main(capsys, ["export", "--checkpoint", run, "--format", "web", "--out", out, *extra])
    assert code == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("charrnn: error:"), err
    if case == "foreign folder":
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# ---- the page in headless Chromium ---------------------------------------------------------------

browser = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")


@pytest.fixture(scope="module")
def chromium():
    with chromium_browser() as instance:
        yield instance


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """{cell: (run_dir, site_dir)} for a 2-layer rnn, gru and lstm, exported through the CLI."""
    root = tmp_path_factory.mktemp("web")
    out = {}
    for cell in ("rnn", "gru", "lstm"):
        run = make_run(root / f"run-{cell}", cell=cell, layers=2, seed=len(cell))
        assert main(["export", "--checkpoint", str(run), "--format", "web", "--out", str(root / cell)]) == 0
        out[cell] = run, root / cell
    return out


PAGE_DONE = "!document.getElementById('generate').disabled"   # the page's generation has ended


def generate_in(page, done: str = PAGE_DONE, **fields) -> None:
    """Fill the form's fields (`prime="I "` fills #prime), press Generate, and wait until `done` holds."""
    for name, value in fields.items():
        page.fill(f"#{name}", str(value))
    page.click("#generate")
    page.wait_for_function(done, timeout=20000)


def open_page(chromium, site: Path):
    page = chromium.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("dialog", lambda dialog: (page.errors.append("dialog: " + dialog.message), dialog.dismiss()))
    page.goto((site / "index.html").as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=10000)
    return page


@browser
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_the_page_computes_the_naive_engines_logits(chromium, sites, cell):
    run, site = sites[cell]
    config, vocab, params = load_run(run)
    prime = TEXT[:150]
    page = open_page(chromium, site)
    got = np.array(page.evaluate("prime => charrnn.logits(prime)", prime))     # (T, V)
    model = build_model("naive", config, params=params).eval()
    want, _ = model.forward(vocab.encode(prime).astype(np.int64)[None, :], model.initial_state(1))
    assert got.shape == want[0].shape == (len(prime), config.vocab_size)
    assert np.abs(got - want[0]).max() < TOL
    assert page.errors == []
    page.close()


@browser
def test_the_pages_random_numbers_are_numpys(chromium, sites):
    page = open_page(chromium, sites["rnn"][1])
    for seed in (0, 1, 7, 2**32 + 3, 12345678901234567890):
        got = page.evaluate("([s, n]) => charrnn.randoms(BigInt(s), n)", [str(seed), 50])
        assert got == np.random.default_rng(seed).random(50).tolist()
    page.close()


@browser
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("knobs", [{"greedy": True}, {"seed": 7, "temperature": 0.8},
                                   {"seed": 3, "topK": 5, "topP": 0.9}, {"seed": 5, "prime": ""}])
def test_the_page_samples_what_charrnn_sample_prints(chromium, sites, capsys, cell, knobs):
    """The same seed and knobs give the same text in the page and from `charrnn sample` (naive engine)."""
    run, site = sites[cell]
    knobs = dict(knobs)
    prime = knobs.pop("prime", "The café 🙂")
    flags = {"greedy": "--greedy", "seed": "--seed", "temperature": "--temperature", "topK": "--top-k",
             "topP": "--top-p"}
    args = ["sample", "--checkpoint", run, "--impl", "naive", "--prime", prime, "--length", 300]
    for key, value in knobs.items():
        args += [flags[key]] if value is True else [flags[key], value]
    code, expected, err = run_main(capsys, args)
    assert code == 0, err
    page = open_page(chromium, site)
    got = page.evaluate("([p, n, o]) => charrnn.sample(p, n, o)", [prime, 300, knobs])
    assert got + "\n" == expected
    page.close()


@browser
def test_the_form_streams_the_sample_as_text(chromium, sites, capsys):
    """Typing a prime and pressing Generate shows `charrnn sample`'s text, markup shown as characters."""
    run, site = sites["lstm"]
    prime = "<b>bold</b> <script>"
    code, expected, err = run_main(capsys, ["sample", "--checkpoint", run, "--impl", "naive", "--prime", prime,
                                            "--length", 400, "--seed", 9, "--temperature", 0.9])
    assert code == 0, err
    page = open_page(chromium, site)
    assert "LSTM, 2 layers of 24 units" in page.inner_text("#about")
    generate_in(page, prime=prime, length=400, seed=9, temperature=0.9)
    assert page.eval_on_selector("#output", "e => e.textContent") + "\n" == expected
    assert page.eval_on_selector_all("#output b, #output script", "els => els.length") == 0
    assert "400 characters" in page.inner_text("#status")
    page.fill("#prime", "Zebra")  # 'Z' is not in the vocabulary
    page.click("#generate")
    page.wait_for_function("!document.getElementById('generate').disabled", timeout=20000)
    assert "outside the model's vocabulary" in page.inner_text("#status") and '"Z"' in page.inner_text("#status")
    page.check("#skip")
    page.click("#generate")
    page.wait_for_function("!document.getElementById('generate').disabled", timeout=20000)
    assert page.eval_on_selector("#output .prime", "e => e.textContent") == "ebra"
    assert page.errors == []
    page.close()


# ---- what a run knows beyond its weights: the document separator and --max-vocab's unknown symbol (#26) --------

DOCUMENTS = ["The lamps along the harbour wall are lit.\n", "Who will row the ferry out before the storm?\n",
             "Light them, light them, all along the wall.\n", "The storm came in at night.\n"]


@pytest.fixture(scope="module")
def document_sites(tmp_path_factory, run_cli):
    """{"folder": (run, site), "max_vocab": (run, site)}: a run on a folder of documents and a --max-vocab 8 run,
    trained (naive engine, in this process) and exported as web pages through the CLI."""
    root = tmp_path_factory.mktemp("documents")
    (root / "docs").mkdir()
    for k, text in enumerate(DOCUMENTS):
        (root / "docs" / f"doc{k}.txt").write_text(text * 3, encoding="utf-8")
    (root / "rare.txt").write_text(TEXT * 2, encoding="utf-8")
    out = {}
    for name, data, extra in (("folder", root / "docs", ["--val-frac", 0.25]),
                              ("max_vocab", root / "rare.txt", ["--max-vocab", 8])):
        run = root / name
        done = run_cli.in_process(["train", "--data", data, "--out", run, "--impl", "naive", "--hidden", 16,
                                   "--embed", 8, "--max-iters", 5, "--batch-size", 2, "--seq-len", 16, *extra])
        assert done.returncode == 0, done.stderr
        assert run_cli.in_process(["export", "--checkpoint", run, "--format", "web", "--out", root / f"{name}-site"]
                                  ).returncode == 0
        out[name] = run, root / f"{name}-site"
    return out


def node_sample(site: Path, prime: str, length: int, options: dict) -> str:
    """charrnn.sample(prime, length, options) from the site's model.js and charrnn.js, run by Node (no browser)."""
    script = ("globalThis.window = globalThis;\n"
              f"require({json.dumps(str(site / 'model.js'))});\n"
              f"require({json.dumps(str(site / 'charrnn.js'))});\n"
              f"process.stdout.write(JSON.stringify(window.charrnn.sample({json.dumps(prime)}, {length}, "
              f"{json.dumps(options)})));\n")
    done = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


node = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")


@node
# temperature 2 flattens the barely trained model's choice, so the separator (1 of ~30 characters) comes within 300
@pytest.mark.parametrize("knobs", [{"seed": 4}, {"greedy": True}, {"seed": 2, "temperature": 2.0, "stopAtSep": True}])
def test_an_empty_prime_starts_a_new_document_in_the_page_as_in_the_run(document_sites, capsys, knobs):
    run, site = document_sites["folder"]
    assert read_model_js(site / "model.js")["doc_sep"] == "\x1e"
    args = ["sample", "--checkpoint", run, "--impl", "naive", "--length", 300]
    if knobs.get("greedy"):
        args += ["--greedy"]
    else:
        args += ["--seed", knobs["seed"], "--temperature", knobs.get("temperature", 1)]
    args += ["--stop-at-sep"] if knobs.get("stopAtSep") else []
    code, expected, err = run_main(capsys, args)
    assert code == 0, err
    assert node_sample(site, "", 300, knobs) + "\n" == expected
    if knobs.get("stopAtSep"):
        assert len(expected) < 301 and "\x1e" not in expected  # the document ended before 300 characters


@node
@pytest.mark.parametrize("prime", ["", "The zebra"])  # z and b are not among the 7 characters kept: read as U+FFFD
def test_the_page_of_a_max_vocab_run_never_draws_its_unknown_symbol(document_sites, capsys, prime):
    run, site = document_sites["max_vocab"]
    model = read_model_js(site / "model.js")
    assert model["unknown"] == "\ufffd" and len(model["vocab"]) == 8 and model["doc_sep"] is None
    code, expected, err = run_main(capsys, ["sample", "--checkpoint", run, "--impl", "naive", "--prime", prime,
                                            "--length", 400, "--seed", 1])
    assert code == 0, err
    got = node_sample(site, prime, 400, {"seed": 1})
    assert got + "\n" == expected
    assert "\ufffd" not in got[len(prime):] and got[:len(prime)].count("\ufffd") == sum(
        c not in model["vocab"] for c in prime)


@browser
def test_the_form_stops_at_the_end_of_a_document(chromium, document_sites, capsys):
    run, site = document_sites["folder"]
    code, expected, err = run_main(capsys, ["sample", "--checkpoint", run, "--impl", "naive", "--length", 300,
                                            "--seed", 2, "--temperature", 2, "--stop-at-sep"])
    assert code == 0, err
    assert len(expected) < 301  # the document ended before 300 characters
    page = open_page(chromium, site)
    assert "new document" in page.inner_text("#prime-label")
    page.fill("#length", "300")
    page.fill("#seed", "2")
    page.fill("#temperature", "2")
    page.check("#sep")
    page.click("#generate")
    page.wait_for_function("!document.getElementById('generate').disabled", timeout=20000)
    assert page.eval_on_selector("#output", "e => e.textContent") + "\n" == expected
    assert page.errors == []
    page.close()
