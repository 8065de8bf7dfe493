"""`charrnn serve`'s OpenAI-style routes, through the official `openai` client against the real command.

The reference for every text is `charrnn sample` with the same settings (another process, another code
path to the same generator); the stop-string scanner is checked against a direct scan of the whole text.
"""
import json
import random
import re
import select
import signal
import time

import pytest
from test_serve import make_run

pytest.importorskip("fastapi")  # the serve extra: openai_api.py is a FastAPI router
from charrnn.serve.openai_api import StopScanner  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
PROMPT = 'He said "'


# ---- the stop-string scanner, no server needed ---------------------------------------------------------

def cut_at_first_stop(text: str, stops: list) -> tuple:
    """The reference: read the text one character at a time; at the first character that ends a stop string
    (the longest, when several end there), cut before it. Returns (text, stopped)."""
    for end in range(1, len(text) + 1):
        for stop in sorted(stops, key=len, reverse=True):
            if text[:end].endswith(stop):
                return text[:end - len(stop)], True
    return text, False


def scan(pieces: list, stops: list) -> tuple:
    scanner = StopScanner(stops)
    out = "".join(scanner.feed(piece) for piece in pieces)
    return (out, True) if scanner.done else (out + scanner.finish(), False)


def test_stop_scanner_cuts_where_a_direct_scan_does_however_the_text_is_split():
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice("ab\n") for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice("ab\n") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        cuts = sorted(rng.sample(range(len(text) + 1), rng.randint(0, len(text) + 1)))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
        want = cut_at_first_stop(text, stops)
        assert scan([text], stops) == want and scan(pieces, stops) == want, (text, stops, pieces)


# ---- the real command, through the client ---------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("openai") / "tiny-run")


@pytest.fixture(scope="module")
def server(run_dir, run_cli):
    """`charrnn serve --port 0` on loopback; yields its base URL."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    proc = run_cli.popen(["serve", "--checkpoint", run_dir, "--impl", "naive", "--port", "0"])
    try:
        deadline, line = time.monotonic() + 60, ""
        while "http://" not in line:
            assert proc.poll() is None, f"charrnn serve ended: {proc.communicate()[1]}"
            assert time.monotonic() < deadline, "charrnn serve printed no URL"
            if select.select([proc.stdout], [], [], 0.5)[0]:
                line = proc.stdout.readline()
        yield re.search(r"http://\S+/", line).group(0)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server + "v1", api_key="not-checked", max_retries=0, timeout=60)


def sample_cli(run_cli, run_dir, *flags) -> str:
    done = run_cli(["sample", "--checkpoint", run_dir, "--impl", "naive", "--prime", PROMPT, *flags])
    assert done.returncode == 0, done.stderr
    return done.stdout


def streamed(client, **request) -> tuple:
    """({choice: text}, {choice: finish_reason}, chunks) of a streamed completion."""
    texts, reasons, chunks = {}, {}, list(client.completions.create(stream=True, **request))
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            reasons[choice.index] = choice.finish_reason or reasons.get(choice.index)
    return texts, reasons, chunks


def test_models_name_the_run(client):
    assert [m.id for m in client.models.list().data] == ["tiny-run"]
    assert client.models.retrieve("tiny-run").owned_by == "charrnn"


def test_plain_and_streamed_completions_are_charrnn_sample(client, run_cli, run_dir):
    request = dict(model="tiny-run", prompt=PROMPT, max_tokens=80, temperature=0.8, top_p=0.9, seed=11)
    plain = client.completions.create(**request)
    [choice] = plain.choices
    assert choice.finish_reason == "length" and len(choice.text) == 80
    assert (plain.usage.prompt_tokens, plain.usage.completion_tokens) == (len(PROMPT), 80)
    cli = sample_cli(run_cli, run_dir, "--length", "80", "--temperature", "0.8", "--top-p", "0.9", "--seed", "11")
    assert cli == PROMPT + choice.text + "\n"
    texts, reasons, chunks = streamed(client, stream_options={"include_usage": True}, **request)
    assert texts == {0: choice.text} and reasons == {0: "length"}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 80
    assert len({chunk.id for chunk in chunks}) == 1


def test_temperature_zero_is_greedy(client, run_cli, run_dir):
    text = client.completions.create(model="tiny-run", prompt=PROMPT, max_tokens=40, temperature=0).choices[0].text
    assert sample_cli(run_cli, run_dir, "--length", "40", "--greedy") == PROMPT + text + "\n"


def test_n_choices_are_charrnn_sample_num_samples(client, run_cli, run_dir):
    request = dict(model="tiny-run", prompt=PROMPT, max_tokens=50, n=3, seed=5)
    plain = client.completions.create(**request)
    assert [c.index for c in plain.choices] == [0, 1, 2] and plain.usage.completion_tokens == 150
    cli = json.loads(sample_cli(run_cli, run_dir, "--length", "50", "--num-samples", "3", "--seed", "5", "--json"))
    assert [PROMPT + c.text for c in plain.choices] == cli["samples"]
    assert len(set(cli["samples"])) == 3
    texts, reasons, _ = streamed(client, **request)
    assert texts == {c.index: c.text for c in plain.choices} and set(reasons.values()) == {"length"}


def test_stop_ends_each_choice_at_its_first_stop_string(client):
    request = dict(model="tiny-run", prompt=PROMPT, max_tokens=300, n=2, seed=3, temperature=0.7)
    full = [c.text for c in client.completions.create(**request).choices]
    stops = [full[0][100:102], full[1][200:203]]  # each found in its own choice, perhaps earlier in the other
    cut = [cut_at_first_stop(text, stops) for text in full]
    assert all(stopped for _, stopped in cut)
    plain = client.completions.create(stop=stops, **request)
    assert [c.text for c in plain.choices] == [text for text, _ in cut]
    assert [c.finish_reason for c in plain.choices] == ["stop", "stop"]
    texts, reasons, _ = streamed(client, stop=stops, **request)
    assert texts == {0: cut[0][0], 1: cut[1][0]} and reasons == {0: "stop", 1: "stop"}
    alone = client.completions.create(**{**request, "n": 1}).choices[0].text  # one sample: other draws than two
    one = client.completions.create(stop=alone[50:52], **{**request, "n": 1})   # a single string works too
    assert one.choices[0].text == cut_at_first_stop(alone, [alone[50:52]])[0]


def test_echo_puts_the_prompt_first(client):
    request = dict(model="tiny-run", prompt=PROMPT, max_tokens=20, seed=2)
    plain = client.completions.create(**request).choices[0].text
    echoed = client.completions.create(echo=True, **request)
    assert echoed.choices[0].text == PROMPT + plain and echoed.usage.completion_tokens == 20
    assert streamed(client, echo=True, **request)[0] == {0: PROMPT + plain}


@pytest.mark.parametrize("request_, error, param, code", [
    ({"temperature": -1}, "BadRequestError", "temperature", None),
    ({"max_tokens": 10 ** 6}, "BadRequestError", "max_tokens", None),
    ({"n": 17}, "BadRequestError", "n", None),
    ({"prompt": "Zebra"}, "BadRequestError", "prompt", None),            # 'Z' is not in the vocabulary
    ({"prompt": [1, 2, 3]}, "BadRequestError", "prompt", None),
    ({"stop": ["a", "b", "c", "d", "e"]}, "BadRequestError", "stop", None),
    ({"logprobs": 2}, "BadRequestError", "logprobs", "unsupported_parameter"),
    ({"model": "gpt-4o"}, "NotFoundError", "model", "model_not_found"),
    ({"extra_body": {"mirostat": 1}}, "BadRequestError", "mirostat", None),
])
def test_bad_requests_raise_the_clients_error(client, request_, error, param, code):
    import openai

    request = {"model": "tiny-run", "prompt": PROMPT, "max_tokens": 5, **request_}
    with pytest.raises(getattr(openai, error)) as raised:
        client.completions.create(**request)
    assert raised.value.param == param and raised.value.code == code
    assert raised.value.type == "invalid_request_error" and raised.value.message


def test_other_routes_and_hosts_get_the_error_shape(client, server):
    import httpx
    import openai

    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="tiny-run", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.code == "unknown_url"
    refused = httpx.get(server + "v1/models", headers={"host": "evil.example"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_host"
    too_big = httpx.post(server + "v1/completions", content=b"x" * 70_000, headers={"content-type": "application/json"})
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
    raw = httpx.post(server + "v1/completions", json={"model": "tiny-run", "max_tokens": 5, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream") and raw.text.endswith("data: [DONE]\n\n")


def test_busy_slots_get_429_in_the_error_shape(run_dir):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from charrnn.serve.app import create_app

    app = create_app(run_dir, impl="naive", max_generations=1, warm=False)
    with TestClient(app) as c:
        taken = app.state.engine.slots.get()   # a generation holds the only slot
        busy = c.post("/v1/completions", json={"model": "tiny-run", "max_tokens": 5})
        app.state.engine.slots.put(taken)
        free = c.post("/v1/completions", json={"model": "tiny-run", "max_tokens": 5})
    assert busy.status_code == 429 and busy.json()["error"]["code"] == "server_busy"
    assert free.status_code == 200 and len(free.json()["choices"][0]["text"]) == 5


@pytest.mark.parametrize("body, words", [(b"{not json", "not valid JSON"),
                                         (b'{"model": "tiny-run",}', "not valid JSON"), (b"", "has no body")])
def test_a_body_that_is_not_json_says_so_and_names_no_field(run_dir, body, words):
    """FastAPI reports a JSON syntax error at ('body', character position): the position is no parameter."""
    from fastapi.testclient import TestClient

    from charrnn.serve.app import create_app

    with TestClient(create_app(run_dir, impl="naive", warm=False)) as c:
        reply = c.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    error = reply.json()["error"]
    assert reply.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] is None and words in error["message"], error


def test_a_boolean_where_a_count_belongs_is_refused(server):
    import httpx

    r = httpx.post(f"{server}v1/completions", json={"model": "x", "prompt": "a", "max_tokens": True}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
