"""`charrnn serve` end to end in headless Chromium: generate, look inside, and untrusted output shown as text.

Needs the `serve` and `browser-tests` extras and Debian's chromium at /usr/bin/chromium (or
$CHARRNN_CHROMIUM); skipped cleanly otherwise. scripts/test.sh installs chromium when
CHARRNN_BROWSER_TESTS=1. Screenshots go to the test's tmp dir and /tmp/charrnn-screens/.
"""
import shutil
from pathlib import Path

import pytest
from browsers import CHROMIUM, serving
from test_serve import TEXT, make_run

SCREENS = Path("/tmp/charrnn-screens")
PAYLOAD = '<script>window.__xss=1;alert(1)</script><img src=x onerror="window.__xss=2;alert(2)">'

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """uvicorn in a thread on a free loopback port, serving a tiny LSTM whose vocabulary holds the payload."""
    pytest.importorskip("fastapi")
    from charrnn.serve.app import create_app

    run_dir = make_run(tmp_path_factory.mktemp("browser") / "run", text=TEXT + PAYLOAD, hidden=24)
    with serving(create_app(run_dir, impl="naive", allowed_hosts=["127.0.0.1", "localhost"])) as url:
        yield url


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            viewport={"width": 1200, "height": 900},
            # Playwright's waits evaluate strings, which the server's CSP forbids; bypassing it also makes
            # the markup test check that output is rendered as text, not merely that CSP blocks scripts
            bypass_csp=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield context
        context.close()


@pytest.fixture
def page(browser_context, server):
    page = browser_context.new_page()
    page.dialogs = []
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=10000)
    yield page
    page.close()


def screenshot(page, tmp_path, name):
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENS / name)


def generate(page, prime, length):
    page.fill("#prime", prime)
    page.fill("#length", str(length))
    page.click("#generate")


def test_generate_streams_text_into_the_page(page, tmp_path):
    generate(page, 'He said "', 300)
    page.wait_for_function("document.querySelector('#gen-output').textContent.length > 9 + 50", timeout=10000)
    page.wait_for_function("!document.querySelector('#generate').disabled", timeout=20000)
    text = page.text_content("#gen-output")
    assert text.startswith('He said "') and len(text) == 9 + 300
    assert "first after" in page.text_content("#gen-status")
    screenshot(page, tmp_path, "generate.png")


def test_stop_ends_a_generation(page):
    generate(page, "He ", 5000)
    page.wait_for_function("document.querySelector('#gen-output').textContent.length > 3", timeout=10000)
    page.click("#stop")
    page.wait_for_function("!document.querySelector('#generate').disabled", timeout=20000)
    status = page.text_content("#gen-status")
    if "stopped" in status:  # a tiny model may finish 5,000 characters before the click lands
        assert len(page.text_content("#gen-output")) < 3 + 5000
    else:
        assert status.startswith("done")


def test_look_inside_colours_text_and_shows_predictions(page, tmp_path):
    text = 'He said "go (now) to the shop", and\nthen she left.'
    page.click("button.tab[data-view='inspect']")
    page.fill("#inspect-input", text)
    page.select_option("#state", "c")
    page.fill("#unit", "5")
    page.click("#show")
    page.wait_for_function(f"document.querySelectorAll('#inspect-text span').length === {len(text)}", timeout=10000)
    colours = page.eval_on_selector_all("#inspect-text span", "spans => spans.map(s => s.style.backgroundColor)")
    assert all(c.startswith("rgb") for c in colours) and len(set(colours)) > 5
    page.hover("#inspect-text span[data-index='10']")
    page.wait_for_selector("#prediction table.top5 tr", timeout=5000)
    rows = page.eval_on_selector_all("#prediction table.top5 tr", "rows => rows.map(r => r.textContent)")
    assert len(rows) == 5
    page.click("#find-units")
    page.wait_for_selector("#units tr.pick", timeout=10000)
    screenshot(page, tmp_path, "inspect.png")
    page.click("#units tr.pick")  # shows the top unit for the first feature
    page.wait_for_function("document.querySelector('#inspect-status').textContent.startsWith('layer')", timeout=10000)


def test_markup_in_model_output_is_text_and_never_runs(page, tmp_path):
    generate(page, PAYLOAD, 200)
    page.wait_for_function("!document.querySelector('#generate').disabled", timeout=20000)
    assert page.text_content("#gen-output").startswith(PAYLOAD)
    assert page.eval_on_selector_all("#gen-output script, #gen-output img", "nodes => nodes.length") == 0
    page.click("button.tab[data-view='inspect']")  # the same text coloured, one span per character
    page.fill("#inspect-input", PAYLOAD)
    page.click("#show")
    page.wait_for_function(f"document.querySelectorAll('#inspect-text span').length === {len(PAYLOAD)}", timeout=10000)
    assert page.text_content("#inspect-text") == PAYLOAD
    page.hover("#inspect-text span[data-index='0']")
    page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") is None
    assert page.dialogs == []
    assert page.locator("img").count() == 0
    screenshot(page, tmp_path, "xss-as-text.png")


def test_training_view_draws_the_loss_curve(page, tmp_path):
    page.click("button.tab[data-view='training']")
    page.wait_for_selector("#chart svg polyline.train", timeout=10000)
    # readable axes: round tick values on both, each axis titled with its unit (the run logs iterations 1..50)
    x_ticks = page.eval_on_selector_all("#chart .tick-label.x", "nodes => nodes.map(n => n.textContent)")
    y_ticks = page.eval_on_selector_all("#chart .tick-label.y", "nodes => nodes.map(n => n.textContent)")
    assert x_ticks[0] == "0" and x_ticks[-1] == "50" and len(x_ticks) >= 4, x_ticks
    assert len(y_ticks) >= 3 and float(y_ticks[0]) <= 2.5 and float(y_ticks[-1]) >= 2.99, y_ticks
    titles = page.eval_on_selector_all("#chart .axis-title", "nodes => nodes.map(n => n.textContent)")
    assert any("iteration" in t for t in titles) and any("nats per character" in t for t in titles)
    assert any("bits per character" in t for t in titles)
    page.wait_for_selector("#samples pre.sample", timeout=20000)
    assert page.locator("#samples pre.sample").count() == 2
    screenshot(page, tmp_path, "training.png")
