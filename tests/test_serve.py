"""`charrnn serve` without a browser: the app through FastAPI's TestClient, the look-inside maths directly.

Tiny random-weight runs keep this fast; the engines themselves are tested elsewhere.
"""
import json
import sys

import numpy as np
import pytest

from charrnn.checkpoint import save_run_config, save_weights
from charrnn.config import ModelConfig
from charrnn.data.vocab import Vocab
from charrnn.models.base import init_parameters
from charrnn.serve.activations import correlations, rank_units, text_features

# starlette asks for httpx2 behind TestClient; httpx works the same here
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

TEXT = 'He said "go (now) to the shop", and then\nshe [quietly] left. <b>&amp;</b>\'\n'


def make_run(run_dir, text=TEXT, cell="lstm", layers=2, hidden=16, embed=8, seed=0):
    """A run directory with random weights: config.json, vocab.json, model.safetensors, metrics.jsonl."""
    run_dir.mkdir(parents=True, exist_ok=True)
    vocab = Vocab.from_text(text)
    config = ModelConfig(vocab_size=len(vocab), cell=cell, layers=layers, hidden=hidden, embed=embed)
    save_run_config(run_dir, config, None)
    vocab.save(run_dir / "vocab.json")
    save_weights(run_dir / "model.safetensors", init_parameters(config, seed))
    rows = [{"iter": i, "train_loss": 3.0 - 0.01 * i} for i in range(1, 50)] + [{"iter": 50, "val_loss": 2.6}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


# ---- the maths, no web server needed ------------------------------------------------------

def test_features_follow_the_text():
    f = text_features('a "b" (c(d)) e\nfg')
    assert list(f["inside quotes"][:6]) == [0, 0, 1, 1, 0, 0]
    assert list(f["inside brackets"][6:13]) == [1, 1, 2, 2, 1, 0, 0]
    assert f["position in line"][14] == 0 and f["position in line"][16] == 2
    assert list(f["start of a word"][:4]) == [1, 0, 0, 1]


def test_correlations_match_numpy_and_constants_are_zero():
    rng = np.random.default_rng(0)
    a, f = rng.standard_normal((50, 3)), rng.standard_normal((50, 2))
    a[:, 2] = 1.0
    r = correlations(a, f)
    assert r[0, 1] == pytest.approx(np.corrcoef(a[:, 0], f[:, 1])[0, 1])
    assert np.all(r[2] == 0)


@pytest.mark.parametrize("feature", ["inside quotes", "inside brackets", "position in line", "start of a word"])
def test_ranking_finds_a_planted_unit(feature):
    text = 'She said "no (really) not now" and [then] left.\nA "second" line (with more) words.\n' * 3
    features = text_features(text)
    rng = np.random.default_rng(1)
    T, L, H = len(text), 2, 24
    states = {"h": rng.uniform(-1, 1, (T, L, H)), "c": rng.standard_normal((T, L, H))}
    planted = features[feature] / (features[feature].std() + 1e-9)
    states["c"][:, 1, 7] = -planted + 0.3 * rng.standard_normal(T)   # sign does not matter: |r|
    ranked = rank_units(states, features, top=5)
    best = ranked["by_feature"][feature][0]
    assert (best["state"], best["layer"], best["unit"]) == ("c", 1, 7)
    assert best["r"] < -0.8
    assert any((u["state"], u["layer"], u["unit"]) == ("c", 1, 7) for u in ranked["ranking"][:4])


# ---- the app through TestClient -------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("serve") / "run")


@pytest.fixture(scope="module")
def client(run_dir):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")  # TestClient needs it
    from fastapi.testclient import TestClient

    from charrnn.serve.app import create_app

    with TestClient(create_app(run_dir, impl="naive", max_generations=2)) as c:
        yield c


def events(response_text):
    """Server-sent events -> [(name, data)]."""
    out = []
    for block in response_text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_generate_streams_characters(client, run_dir):
    import charrnn

    body = {"prime": 'He said "', "length": 40, "temperature": 0.9, "seed": 3}
    with client.stream("POST", "/api/generate", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        got = events(response.read().decode())
    assert got[0] == ("prime", {"text": 'He said "'})
    assert got[-1] == ("end", {"reason": "done"})
    text = "".join(data["text"] for name, data in got if name == "text")
    # the same text as the Python API gives with the same engine and seed
    assert text == "".join(charrnn.load(run_dir, impl="naive").stream('He said "', 40, temperature=0.9, seed=3))


def test_generate_with_int8_weights_is_the_int8_model(run_dir):
    """`charrnn serve --quantize int8` generates what the API's int8 model generates."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    pytest.importorskip("torch")
    from fastapi.testclient import TestClient

    import charrnn
    from charrnn.serve.app import create_app

    body = {"prime": "he ", "length": 60, "temperature": 0.8, "seed": 4}
    app = create_app(run_dir, impl="library", max_generations=1, quantize="int8")
    slot = app.state.engine.slots.get()
    assert slot.predictor.quantize == "int8"               # (random weights: int8 and float texts coincide here)
    app.state.engine.slots.put(slot)
    with TestClient(app) as int8_client:
        response = int8_client.post("/api/generate", json=body)
        assert response.status_code == 200, response.text
        got = events(response.text)
    text = "".join(data["text"] for name, data in got if name == "text")
    assert got[-1] == ("end", {"reason": "done"})
    assert text == "".join(charrnn.load(run_dir, impl="naive", quantize="int8").stream("he ", 60, temperature=0.8,
                                                                                      seed=4))


@pytest.mark.parametrize("body, status, words", [
    ({"prime": "a" * 2001}, 422, "prime"),
    ({"length": 0}, 422, "length"),
    ({"length": 5001}, 422, "length"),
    ({"temperature": 0}, 422, "temperature"),
    ({"top_p": 1.5}, 422, "top_p"),
    ({"prime": "\u00e9\u00e9"}, 400, "vocabulary"),
    ({"file": "/etc/passwd"}, 422, "file"),
])
def test_generate_bounds_are_4xx_with_a_json_message(client, body, status, words):
    response = client.post("/api/generate", json=body)
    assert response.status_code == status
    assert words in response.json()["error"] and "\n" not in response.json()["error"]


def test_oversized_body_is_413(client):
    response = client.post("/api/generate", content=b'{"prime": "' + b"a" * 70000 + b'"}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 413 and "error" in response.json()


def test_busy_generations_get_429_and_slots_come_back(client):
    pool = client.app.state.engine.slots
    taken = [pool.get_nowait(), pool.get_nowait()]
    try:
        response = client.post("/api/generate", json={"length": 5})
        assert response.status_code == 429 and "already running" in response.json()["error"]
    finally:
        for model in taken:
            pool.put(model)
    assert client.post("/api/generate", json={"length": 5}).status_code == 200
    assert pool.qsize() == 2  # the finished generation gave its slot back


def test_inspect_gives_activations_and_top5_like_the_library_engine(client, run_dir):
    import charrnn

    text = 'He said "go (then) to"\n'
    response = client.post("/api/inspect", json={"text": text, "layer": 1, "state": "c", "unit": 3})
    assert response.status_code == 200
    data = response.json()
    assert data["chars"] == list(text) and len(data["values"]) == len(text)
    assert len(data["predictions"]) == len(text)
    for row in data["predictions"]:
        probs = [p for _, p in row]
        assert len(row) == 5 and sum(probs) <= 1 + 1e-6 and probs == sorted(probs, reverse=True)
    # an independent computation: the library engine's forward over the whole text
    model = charrnn.load(run_dir, impl="library")
    logits, _ = model.predictor.feed(model.vocab.encode(text)[None].astype(np.int64), model.predictor.zero_state(1))
    p = np.exp(logits[0] - logits[0].max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)                                  # (T, V)
    for t in (0, len(text) - 1):
        best = np.argsort(-p[t])[:5]
        assert [ch for ch, _ in data["predictions"][t]] == [model.vocab.chars[i] for i in best]
        np.testing.assert_allclose([q for _, q in data["predictions"][t]], p[t, best], atol=1e-4)
    # and the activations: the library engine's state after the whole text
    _, state = model.predictor.feed(model.vocab.encode(text)[None].astype(np.int64), model.predictor.zero_state(1))
    assert data["values"][-1] == pytest.approx(float(state[1][1, 0, 3]), abs=1e-4)


def test_trace_shapes(run_dir):
    from charrnn.checkpoint import load_run
    from charrnn.serve.activations import Tracer

    config, vocab, params = load_run(run_dir)
    with (tracer := Tracer(config, params, vocab)).lock:
        trace = tracer.trace("said (to)")
    assert trace.states["h"].shape == trace.states["c"].shape == (9, 2, 16)
    assert trace.logits.shape == (9, len(vocab))


@pytest.mark.parametrize("body, words", [
    ({"text": "and", "layer": 2}, "layer"),
    ({"text": "and", "unit": 16}, "unit"),
    ({"text": "and", "state": "x"}, "state"),
    ({"text": "\u00e9"}, "vocabulary"),
    ({"text": ""}, "text"),
    ({"text": "a" * 2001}, "text"),
])
def test_inspect_bounds(client, body, words):
    response = client.post("/api/inspect", json=body)
    assert 400 <= response.status_code < 500 and words in response.json()["error"]


def test_units_ranking_over_http(client):
    response = client.post("/api/units", json={"text": TEXT * 2, "top": 3})
    assert response.status_code == 200
    data = response.json()
    assert set(data["by_feature"]) == set(data["features"]) and len(data["ranking"]) == 3
    for units in data["by_feature"].values():
        strengths = [abs(u["r"]) for u in units]
        assert strengths == sorted(strengths, reverse=True) and all(s <= 1 for s in strengths)


def test_info_metrics_samples_and_page(client):
    info = client.get("/api/info").json()
    assert (info["cell"], info["layers"], info["hidden"], info["states"]) == ("lstm", 2, 16, ["h", "c"])
    metrics = client.get("/api/metrics").json()
    assert len(metrics["train"]) == 49 and metrics["val"] == [[50, 2.6]]
    samples = client.get("/api/samples").json()["samples"]
    assert len(samples) == 2 and all(len(s) == 240 for s in samples)
    page = client.get("/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200


def test_other_host_names_are_refused(run_dir):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from charrnn.serve.app import create_app

    app = create_app(run_dir, impl="naive", max_generations=1, allowed_hosts=["127.0.0.1", "localhost"], warm=False)
    with TestClient(app, base_url="http://evil.example") as c:
        assert c.get("/api/info").status_code == 400
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/info").status_code == 200


# ---- the command ------------------------------------------------------------------------------

def test_serve_binds_loopback_by_default(run_dir, monkeypatch, capsys):
    uvicorn = pytest.importorskip("uvicorn")
    from charrnn.cli import build_parser, main

    assert build_parser().parse_args(["serve", "--checkpoint", "x"]).host == "127.0.0.1"
    bound = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: bound.update(address=sockets[0].getsockname()))
    # uvicorn's logging.config.dictConfig closes the handlers already installed; where TensorFlow was imported
    # (test_tf_engines, at collection) absl's handler then closes the stream it holds: pytest's capture file,
    # and the session dies at its end ("lost sys.stderr"). A real terminal's stderr is never closed.
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda self: None)
    assert main(["serve", "--checkpoint", str(run_dir), "--impl", "naive", "--port", "0"]) == 0
    host, port = bound["address"]
    assert host == "127.0.0.1" and port > 0
    assert f"http://127.0.0.1:{port}/" in capsys.readouterr().out


def test_a_taken_port_is_a_one_line_error(run_dir, capsys):
    import socket

    pytest.importorskip("uvicorn")
    from charrnn.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--checkpoint", str(run_dir), "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--port" in err


def test_missing_extra_is_one_line_naming_it(run_dir, monkeypatch, capsys):
    from charrnn.cli import main

    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi -> ImportError
    assert main(["serve", "--checkpoint", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'charrnn-toolkit[serve]'" in err and "pip install -e '.[serve]'" in err


def test_closing_the_stream_stops_the_generation_and_frees_its_slot():
    import asyncio
    import threading
    import time

    pytest.importorskip("fastapi")
    from charrnn.serve.stream import Generation

    produced, released = [], threading.Event()

    def chars():  # a slow model
        for _ in range(1000):
            time.sleep(0.002)
            produced.append(1)
            yield "x"

    async def read_two_events_then_leave():
        events = Generation("p", chars(), released.set).start().events()
        assert (await events.__anext__()).startswith("event: prime")
        assert (await events.__anext__()).startswith("event: text")
        await events.aclose()

    asyncio.run(read_two_events_then_leave())
    assert released.wait(timeout=2)
    assert len(produced) < 100


def test_the_page_has_no_markup_sinks():
    """Model output reaches the page as text only; a guard against a later innerHTML."""
    import re
    from pathlib import Path

    import charrnn

    js = (Path(charrnn.__file__).parent / "serve" / "static" / "app.js").read_text()
    assert not re.search(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write|\beval\(", js)


@pytest.mark.parametrize("host, allowed", [("127.0.0.1:8000", True), ("localhost", True), ("[::1]:8000", True),
                                           ("evil.example:80", False), ("127.0.0.1.evil.example", False)])
def test_host_header_names(run_dir, host, allowed):
    """Host names as the loopback server's allow-list sees them, IPv6 brackets and ports included."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from charrnn.serve.app import create_app

    app = create_app(run_dir, impl="naive", max_generations=1, allowed_hosts=["127.0.0.1", "localhost", "::1"],
                     warm=False)
    with TestClient(app) as c:
        assert (c.get("/api/info", headers={"host": host}).status_code == 200) is allowed
