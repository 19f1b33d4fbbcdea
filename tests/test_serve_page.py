"""The chat page in a real headless Chromium (Debian's, driven by Playwright): type, watch the reply stream, reset.

Run: .venv/bin/pytest tests/test_serve_page.py -q      (bash scripts/setup_browser.sh installs chromium if missing)
Set SCALELAB_SCREENSHOT=runs/serve_screenshot.png to keep a copy of the screenshot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from pathlib import Path

import pytest
from serve_fixtures import live_server, make_chat_run

from scalelab.serve.app import build_app, create_app
from scalelab.serve.config import ServeConfig

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (run: bash scripts/setup_browser.sh)"),
    pytest.mark.timeout(120),
]


class PacedEngine:
    """The real engine, its text handed out one character at a time at a set pace: a tiny model answers in a few
    milliseconds, which a browser would receive in one network read; pacing makes "the reply grows as it streams"
    observable on the page. (tests/test_serve.py checks that the server itself streams in many chunks.)"""

    def __init__(self, engine, delay: float = 0.01) -> None:
        self.engine, self.delay = engine, delay

    def submit(self, *args, **kwargs):
        return PacedRequest(self.engine.submit(*args, **kwargs), self.delay)

    def __getattr__(self, name):
        return getattr(self.engine, name)


class PacedRequest:
    def __init__(self, req, delay: float) -> None:
        self.req, self.delay = req, delay

    async def __aiter__(self):
        async for delta in self.req:
            for char in delta:
                await asyncio.sleep(self.delay)
                yield char

    def __getattr__(self, name):
        return getattr(self.req, name)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    # a longer context than the API tests' run, so that a few turns of conversation fit
    run = make_chat_run(tmp_path_factory.mktemp("page") / "tiny-page", max_seq_len=512)
    app = build_app(ServeConfig(run=str(run), max_tokens_limit=64, device="cpu", dtype="fp32"))
    app.state.served.engine = PacedEngine(app.state.served.engine)
    return app


@pytest.fixture(scope="module")
def server(app):
    with live_server(app) as url:  # one server per module: its shutdown closes the engine
        yield url


@pytest.fixture()
def browser_page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        # bypass_csp: the page's policy forbids eval, which Playwright's wait_for_function uses
        page = browser.new_page(viewport={"width": 1100, "height": 760}, bypass_csp=True)
        requests_elsewhere: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "data:"))
                else requests_elsewhere.append(r.url))
        yield page, requests_elsewhere
        browser.close()


def test_page_streams_a_reply_and_resets(server, browser_page, tmp_path):
    page, elsewhere = browser_page
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('ctx')")
    assert page.locator("#api-key-field").is_hidden()  # no key on this server: no key field
    page.fill("#max-tokens", "24")
    page.eval_on_selector("#temperature", "el => { el.value = '0'; el.dispatchEvent(new Event('input')); }")
    # count the reply's text updates: a streamed reply grows in several steps, not in one
    page.evaluate("""() => {
        window.__updates = 0;
        new MutationObserver(() => { window.__updates++; }).observe(
            document.getElementById('messages'), {subtree: true, characterData: true, childList: true});
    }""")
    page.fill("#input", "Hello there, who are you?")
    page.keyboard.press("Enter")
    page.wait_for_selector(".msg.assistant:not(.streaming) .meta", timeout=60_000)
    reply = page.inner_text(".msg.assistant .bubble")
    assert page.inner_text(".msg.user .bubble") == "Hello there, who are you?"
    assert reply.strip(), "the reply is empty"
    assert "tokens" in page.inner_text(".msg.assistant .meta")
    assert page.evaluate("window.__updates") > 4, f"the reply did not arrive token by token: {reply!r}"
    # a second turn sends the whole conversation
    page.fill("#input", "And then?")
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('.msg.assistant:not(.streaming) .meta').length == 2",
                           timeout=60_000)
    assert page.locator(".msg").count() == 4
    history = page.evaluate("JSON.parse(sessionStorage.getItem('scalelab.history'))")
    kept = [m["role"] for m in history]
    assert kept in (["user", "assistant", "user", "assistant"], ["user", "assistant"])
    shot = tmp_path / "serve_screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 5000
    if os.environ.get("SCALELAB_SCREENSHOT"):
        Path(os.environ["SCALELAB_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, os.environ["SCALELAB_SCREENSHOT"])
    page.click("#reset")
    assert page.locator(".msg").count() == 0 and page.locator("#empty").is_visible()
    assert page.evaluate("sessionStorage.getItem('scalelab.history')") == "[]"
    assert not errors, errors
    assert not elsewhere, f"the page requested other hosts: {elsewhere}"


def test_page_asks_for_the_key_when_required(app, browser_page):
    page, _ = browser_page
    served = dataclasses.replace(app.state.served, api_key="page-key", open=set())
    with live_server(create_app(served)) as url:
        page.goto(url + "/")
        page.wait_for_selector("#api-key-field:not([hidden])")
        page.fill("#input", "hi")
        page.keyboard.press("Enter")
        page.wait_for_selector(".msg.error")
        assert "401" in page.inner_text(".msg.error .bubble")
        page.fill("#api-key", "page-key")
        page.fill("#max-tokens", "4")
        page.fill("#input", "hi again")
        page.keyboard.press("Enter")
        page.wait_for_selector(".msg.assistant:not(.streaming) .meta", timeout=60_000)
        assert page.locator(".msg.error").count() == 1


def test_page_fits_max_tokens_into_the_context(tmp_path, browser_page):
    """Max tokens equal to the whole context (as with the demo model: 256 of 256) still gets a reply: the page asks
    again with the room the server says is left, instead of showing the 400."""
    run = make_chat_run(tmp_path / "short", max_seq_len=64)
    app = build_app(ServeConfig(run=str(run), max_tokens_limit=64, device="cpu", dtype="fp32"))
    page, _ = browser_page
    with live_server(app) as url:
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('64 ctx')")
        page.fill("#max-tokens", "64")
        page.fill("#input", "Hello there, who are you?")
        page.keyboard.press("Enter")
        page.wait_for_selector(".msg.assistant:not(.streaming)", timeout=60_000)  # finished, well or not
        assert page.locator(".msg.error").count() == 0, page.inner_text(".msg.assistant .bubble")
        assert "tokens" in page.inner_text(".msg.assistant .meta")


def test_page_default_max_tokens_fits_without_a_refusal(tmp_path, browser_page):
    """The demo model's case (max tokens 256 = its context): the page's default comes from the server's context, so
    the first message is never refused with a 400 and sent again."""
    run = make_chat_run(tmp_path / "short", max_seq_len=64)
    app = build_app(ServeConfig(run=str(run), max_tokens_limit=64, device="cpu", dtype="fp32"))
    page, _ = browser_page
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if "/v1/" in r.url else None)
    with live_server(app) as url:
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('64 ctx')")
        assert page.input_value("#max-tokens") == "32"
        page.fill("#input", "Hello there, who are you?")
        page.keyboard.press("Enter")
        page.wait_for_selector(".msg.assistant:not(.streaming) .meta", timeout=60_000)
        assert page.locator(".msg.error").count() == 0
    assert statuses == [200], statuses
