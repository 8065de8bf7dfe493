"""A labelled run (issue #29) on the web: the exported page and `charrnn serve` generate under a label.

The exported page's step (charrnn.js, run by Node as tests/test_export_web.py runs it, and its form in
headless Chromium) must compute the naive engine's logits under the label and sample the text `charrnn
sample --label` prints; the playground and its OpenAI-style route must generate what the Python API
generates under the label, and every way to get the label wrong is a 4xx with a one-line message.
"""
import base64
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from browsers import CHROMIUM, chromium_browser, serving
from test_export_web import generate_in, open_page, read_model_js
from test_labels_runtimes import LABELS, TEXT, make_folded_run, make_labelled_run, reference, run_main

import charrnn
from charrnn.checkpoint import load_run
from charrnn.cli import main
from charrnn.losses import log_softmax

# the page computes in float64 on the float32 weights; the reference is the float64 engine on the same
# weights: they differ by the order of float64 sums only (~1e-13), far inside the 1e-4
TOL = 1e-4
node = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
browser = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """{cell: (labelled run, its web page folder)}, exported through the CLI."""
    root = tmp_path_factory.mktemp("labelled-web")
    out = {}
    for cell in ("rnn", "gru", "lstm"):
        run = make_labelled_run(root / f"run-{cell}", cell=cell, seed=len(cell))
        assert main(["export", "--checkpoint", str(run), "--format", "web", "--out", str(root / cell)]) == 0
        out[cell] = run, root / cell
    return out


def in_node(site: Path, expression: str):
    """The JSON value of a JavaScript expression, evaluated by Node after the site's model.js and charrnn.js."""
    script = ("globalThis.window = globalThis;\n"
              f"require({json.dumps(str(site / 'model.js'))});\n"
              f"require({json.dumps(str(site / 'charrnn.js'))});\n"
              f"try {{ process.stdout.write(JSON.stringify({{value: {expression}}})); }}\n"
              "catch (e) { process.stdout.write(JSON.stringify({error: e.message})); }\n")
    done = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# ---- the exported page ---------------------------------------------------------------------------------

def test_the_page_carries_the_label_names_and_the_label_table(sites):
    run, site = sites["gru"]
    model = read_model_js(site / "model.js")
    config, _vocab, params = load_run(run)
    assert model["config"]["labels"] == list(LABELS)
    spec = model["tensors"]["label.weight"]
    blob = base64.b64decode(model["data"])
    got = np.frombuffer(blob, "<f4", count=int(np.prod(spec["shape"])), offset=spec["offset"])
    assert np.array_equal(got.reshape(spec["shape"]), params["label.weight"])


@node
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_the_pages_step_computes_the_engines_logits_under_each_label(sites, cell):
    run, site = sites[cell]
    prime = TEXT[:60]
    got = {name: np.array(in_node(site, f"charrnn.logits({json.dumps(prime)}, {json.dumps(name)})")["value"])
           for name in LABELS}
    for k, name in enumerate(LABELS):
        assert np.abs(got[name] - reference(run, prime, k)).max() < TOL
    assert np.abs(got["dickinson"] - got["whitman"]).max() > 100 * TOL     # the label matters


@node
@pytest.mark.parametrize("knobs", [{"seed": 4, "temperature": 0.9}, {"greedy": True}])
def test_the_page_samples_what_charrnn_sample_prints_under_the_label(sites, capsys, knobs):
    run, site = sites["lstm"]
    args = ["sample", "--checkpoint", run, "--impl", "naive", "--prime", "I ", "--length", 200, "--label", "keats"]
    args += ["--greedy"] if knobs.get("greedy") else ["--seed", knobs["seed"], "--temperature", knobs["temperature"]]
    code, expected, err = run_main(capsys, args)
    assert code == 0, err
    options = json.dumps({**knobs, "label": "keats"})
    assert in_node(site, f"charrnn.sample('I ', 200, {options})")["value"] + "\n" == expected


@node
@pytest.mark.parametrize("expression, message", [
    ("charrnn.sample('I ', 5, {seed: 1})", "trained with labels dickinson, whitman, keats; give a label"),
    ("charrnn.sample('I ', 5, {seed: 1, label: 'byron'})", '"byron" is not a label of this model'),
    ("charrnn.logits('I ')", "give a label"),
])
def test_the_page_refuses_a_missing_or_unknown_label(sites, expression, message):
    result = in_node(sites["rnn"][1], expression)
    assert list(result) == ["error"], result                            # thrown, nothing generated
    assert message in result["error"] and "\n" not in result["error"]


@node
def test_the_page_of_an_unlabelled_run_refuses_a_label(tmp_path):
    run = make_folded_run(tmp_path / "folded", make_labelled_run(tmp_path / "run"), 2)
    assert main(["export", "--checkpoint", str(run), "--format", "web", "--out", str(tmp_path / "site")]) == 0
    assert "without labels" in in_node(tmp_path / "site", "charrnn.sample('I ', 5, {label: 'keats'})")["error"]
    assert len(in_node(tmp_path / "site", "charrnn.sample('I ', 5, {seed: 1})")["value"]) == 7


@pytest.fixture(scope="module")
def chromium():
    with chromium_browser() as instance:
        yield instance


@browser
def test_the_pages_label_picker_generates_under_the_chosen_label(chromium, sites, capsys):
    run, site = sites["gru"]
    code, expected, err = run_main(capsys, ["sample", "--checkpoint", run, "--impl", "naive", "--prime", "I ",
                                            "--length", 150, "--seed", 6, "--label", "whitman"])
    assert code == 0, err
    page = open_page(chromium, site)
    assert page.is_visible("#label") and "3 labels" in page.inner_text("#about")
    assert page.eval_on_selector_all("#label option", "options => options.map(o => o.value)") == list(LABELS)
    page.select_option("#label", "whitman")
    generate_in(page, prime="I ", length=150, seed=6)
    assert page.eval_on_selector("#output", "e => e.textContent") + "\n" == expected
    assert page.errors == []
    page.close()


# ---- the playground and its OpenAI-style route ------------------------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(labelled run, TestClient of `charrnn serve` on it)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from charrnn.serve.app import create_app

    run = make_labelled_run(tmp_path_factory.mktemp("labelled-serve") / "poets", hidden=16)
    with TestClient(create_app(run, impl="naive", max_generations=1)) as client:
        yield run, client


def streamed_text(response_text: str) -> str:
    from test_serve import events

    got = events(response_text)
    assert got[-1] == ("end", {"reason": "done"}), got[-1]
    return "".join(data["text"] for name, data in got if name == "text")


def test_the_playground_generates_under_the_label_it_is_sent(served):
    run, client = served
    assert client.get("/api/info").json()["labels"] == list(LABELS)
    model = charrnn.load(run, impl="naive")
    for name in LABELS:
        response = client.post("/api/generate", json={"prime": "I ", "length": 60, "seed": 3, "temperature": 0.9,
                                                      "label": name})
        assert response.status_code == 200, response.text
        assert streamed_text(response.text) == "".join(model.stream("I ", 60, temperature=0.9, seed=3, label=name))


def test_look_inside_reads_the_text_under_the_label(served):
    """The top predictions after each character are the engine's probabilities under that label."""
    run, client = served
    text = TEXT[:30]
    for k, name in enumerate(LABELS):
        response = client.post("/api/inspect", json={"text": text, "label": name})
        assert response.status_code == 200, response.text
        p = np.exp(log_softmax(reference(run, text, k)))                   # (T, V)
        for row, predictions in zip(p, response.json()["predictions"]):  # probabilities rounded to 5 places
            np.testing.assert_allclose([q for _, q in predictions], np.sort(row)[::-1][:5], rtol=0, atol=1e-4)
        assert client.post("/api/units", json={"text": text, "label": name}).status_code == 200


@pytest.mark.parametrize("path, body, message", [
    ("/api/generate", {"prime": "I", "length": 5}, "trained with labels dickinson, whitman, keats; give a label"),
    ("/api/generate", {"prime": "I", "length": 5, "label": "byron"}, "label 'byron' is not a label of this run"),
    ("/api/inspect", {"text": "I am"}, "give a label"),
    ("/api/units", {"text": "I am", "label": "Keats"}, "not a label of this run"),
])
def test_the_playground_refuses_a_missing_or_unknown_label_in_one_line(served, path, body, message):
    response = served[1].post(path, json=body)
    assert response.status_code == 400
    assert message in response.json()["error"] and "\n" not in response.json()["error"]


def test_the_openai_route_lists_the_labels_and_takes_one(served):
    run, client = served
    card = client.get("/v1/models").json()["data"][0]
    assert card["labels"] == list(LABELS) and card["id"] == "poets"
    body = {"model": "poets", "prompt": "I ", "max_tokens": 50, "seed": 8, "temperature": 0.8, "label": "whitman"}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    want = charrnn.load(run, impl="naive").sample("I ", 50, temperature=0.8, seed=8, label="whitman")[2:]
    assert response.json()["choices"][0]["text"] == want
    missing = client.post("/v1/completions", json={**body, "label": None})
    assert missing.status_code == 400
    error = missing.json()["error"]
    assert error["param"] == "label" and "give a label" in error["message"] and "\n" not in error["message"]


def test_an_unlabelled_run_is_served_as_before_and_refuses_a_label(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from charrnn.serve.app import create_app

    run = make_folded_run(tmp_path / "folded", make_labelled_run(tmp_path / "run"), 0)
    with TestClient(create_app(run, impl="naive", max_generations=1)) as client:
        assert client.get("/api/info").json()["labels"] == []
        assert "labels" not in client.get("/v1/models").json()["data"][0]
        response = client.post("/api/generate", json={"prime": "I", "length": 5, "label": "keats"})
        assert response.status_code == 400 and "trained without labels" in response.json()["error"]
        response = client.post("/v1/completions", json={"model": "folded", "prompt": "I", "label": "keats"})
        assert response.status_code == 400 and response.json()["error"]["param"] == "label"


@pytest.fixture(scope="module")
def playground(tmp_path_factory):
    """(labelled run, URL of `charrnn serve`'s app on it, in uvicorn in a thread)."""
    pytest.importorskip("fastapi")
    from charrnn.serve.app import create_app

    run = make_labelled_run(tmp_path_factory.mktemp("labelled-playground") / "poets", hidden=16)
    with serving(create_app(run, impl="naive", allowed_hosts=["127.0.0.1"])) as url:
        yield run, url


@browser
@pytest.mark.slow
def test_the_playgrounds_label_picker_generates_under_the_chosen_label(chromium, playground):
    run, url = playground
    # the playground's Content-Security-Policy forbids eval, which wait_for_function's string predicates use
    context = chromium.new_context(bypass_csp=True)
    page = context.new_page()
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=10000)
    assert page.is_visible("#label")
    assert page.eval_on_selector_all("#label option", "options => options.map(o => o.value)") == list(LABELS)
    page.select_option("#label", "keats")
    generate_in(page, "document.querySelector('#gen-status').textContent.startsWith('done')", prime="I ", length=120,
                seed=5)
    want = charrnn.load(run, impl="naive").sample("I ", 120, temperature=0.8, seed=5, label="keats")
    assert page.text_content("#gen-output") == want
    context.close()
