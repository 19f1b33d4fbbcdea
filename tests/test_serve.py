"""The OpenAI-compatible server against the official ``openai`` client and raw HTTP, on a live loopback uvicorn.

Run: .venv/bin/pytest tests/test_serve.py -q
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time

import httpx
import openai
import pytest
from serve_fixtures import live_server, tiny_chat_run  # noqa: F401  (fixture)

from scalelab.serve.app import build_app, create_app
from scalelab.serve.config import ServeConfig

MAX_TOKENS_LIMIT = 48


class SpyEngine:
    """Wraps the real engine and remembers every request it handed out (to check cancellation)."""

    def __init__(self, engine) -> None:
        self.engine, self.requests = engine, []

    def submit(self, *args, **kwargs):
        req = self.engine.submit(*args, **kwargs)
        self.requests.append(req)
        return req

    def stats(self):
        return self.engine.stats()


@pytest.fixture(scope="module")
def app(tiny_chat_run):  # noqa: F811
    app = build_app(ServeConfig(run=str(tiny_chat_run), max_tokens_limit=MAX_TOKENS_LIMIT, device="cpu",
                                dtype="fp32", max_batch=4, max_queue=8))
    app.state.served.engine = SpyEngine(app.state.served.engine)
    return app


@pytest.fixture(scope="module")
def server(app):
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def test_models_and_health(client, server, tiny_chat_run):  # noqa: F811
    models = client.models.list().data
    assert [m.id for m in models] == [tiny_chat_run.name]
    assert client.models.retrieve(tiny_chat_run.name).id == tiny_chat_run.name
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and health["auth_required"] is False and health["context_length"] == 128
    from scalelab.lm.inference import cpu_kernels

    assert health["engine"]["decoder"] == ("scalelab CPU kernels" if cpu_kernels.available() else "torch")


def test_chat_completion_non_streamed(client, model_id):
    out = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Hello!"}],
                                         max_tokens=12, temperature=0.8, top_p=0.9, seed=3)
    choice = out.choices[0]
    assert out.object == "chat.completion" and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 3 and 0 <= out.usage.completion_tokens <= 12
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    again = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Hello!"}],
                                           max_tokens=12, temperature=0.8, top_p=0.9, seed=3)
    assert again.choices[0].message.content == choice.message.content  # seed makes sampling reproducible


@contextlib.contextmanager
def paced(app, seconds: float):
    """Slow every engine step by ``seconds``: a tiny model on a loaded machine can otherwise finish a whole reply
    between two wake-ups of the event loop, and what a test watches (chunks, a hang-up) would depend on load."""
    batch = app.state.served.engine.engine._batch
    step = batch.step
    batch.step = lambda: (time.sleep(seconds), step())[1]
    try:
        yield
    finally:
        del batch.step  # the class's own method again


def test_chat_completion_streamed_matches_greedy(app, client, model_id):
    kwargs = dict(model=model_id, messages=[{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "Count to three."}],
                  max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kwargs)
    with paced(app, 0.02):
        chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and text
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # token by token, not at once
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"] == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16 == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_stream_interval_sends_fewer_longer_events(client, model_id, tiny_chat_run):  # noqa: F811
    """`scalelab serve --stream-interval 4`: the first text at once, then 4 tokens' text per event; same answer."""
    from scalelab.common import UsageError

    kwargs = dict(model=model_id, messages=[{"role": "user", "content": "Count to three."}], max_tokens=16,
                  temperature=0, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    app = build_app(ServeConfig(run=str(tiny_chat_run), device="cpu", dtype="fp32", stream_interval="4"))
    with live_server(app) as url:
        grouped = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        chunks = list(grouped.chat.completions.create(stream=True, **kwargs))
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(texts) == whole and len(texts) <= 2 + 15 // 4
    # text ending in a broken UTF-8 character (U+FFFD) is held back until it completes, so an undertrained model
    # whose every token ends mid-character sends it all at the end; otherwise the events are grouped, not one
    assert len(texts) > 1 or whole.count("\ufffd") >= 3
    for bad in (0, "0", "fast", "-2"):
        with pytest.raises(UsageError, match="--stream-interval"):
            ServeConfig(run=str(tiny_chat_run), stream_interval=bad).check()
    assert ServeConfig(run="x", stream_interval="auto").engine_stream_interval() == "auto"
    assert ServeConfig(run="x", stream_interval="3").engine_stream_interval() == 3


def test_completions_and_stop(client, model_id):
    out = client.completions.create(model=model_id, prompt="The quick brown", max_tokens=10, temperature=0,
                                    extra_body={"ignore_eos": True})
    text = out.choices[0].text
    assert out.object == "text_completion" and out.usage.completion_tokens == 10 and text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=model_id, prompt="The quick brown", max_tokens=10, temperature=0, stream=True,
        extra_body={"ignore_eos": True}) if c.choices)
    assert streamed == text
    # a stop string cut from the greedy text: the answer ends before it, finish_reason "stop"
    stop = text.strip()[len(text.strip()) // 2:][:3]
    if stop.strip():
        cut = client.completions.create(model=model_id, prompt="The quick brown", max_tokens=10, temperature=0,
                                        stop=[stop], extra_body={"ignore_eos": True})
        assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].text
        assert text.startswith(cut.choices[0].text)


def test_unknown_model_and_bad_requests_are_openai_errors(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=client.models.list().data[0].id, messages=[{"role": "user",
                                       "content": "hi"}], max_tokens=MAX_TOKENS_LIMIT + 1)
    assert "max_tokens" in err.value.message and err.value.body["param"] == "max_tokens"


@pytest.mark.parametrize("body, status, param", [
    ("{not json", 400, None),
    ("[1, 2]", 400, None),
    ('{"messages": "hi"}', 400, "messages"),
    ('{"messages": []}', 400, "messages"),
    ('{"messages": [{"role": "user"}]}', 400, "messages.0.content"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', 400, "messages.0.role"),
    ('{"messages": [{"role": "user", "content": ""}]}', 400, "messages[0].content"),
    ('{"messages": [{"role": "assistant", "content": "x"}]}', 400, "messages[0].role"),
    ('{"messages": [{"role": "user", "content": "<|end|>"}]}', 400, "messages[0].content"),
    ('{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', 400, "temperature"),
    ('{"messages": [{"role": "user", "content": "x"}], "temperature": 5}', 400, "temperature"),
    ('{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', 400, "max_tokens"),
    ('{"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}', 400, "max_tokens"),
    ('{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}', 400, "max_tokens"),
    ('{"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}', 400, "stop"),
    ('{"messages": [{"role": "user", "content": "x"}], "n": 2}', 400, "n"),
    ('{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
    ('{"messages": [{"role": "user", "content": "' + "many words " * 200 + '"}]}', 400, "messages"),
])
def test_malformed_chat_requests(server, body, status, param):
    r = httpx.post(server + "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["type"]
    assert err["param"] == param


def test_limits_name_the_limit_hit(app, server):
    long = httpx.post(server + "/v1/chat/completions", json={"messages": [{"role": "user",
                      "content": "many words " * 200}]}).json()["error"]
    assert long["code"] == "context_length_exceeded" and "128" in long["message"]
    # prompt + max_tokens over the context: the message says how far to lower max_tokens
    tok, prompt = app.state.served.tokenizer, ""
    while len(tok.encode(prompt).ids) + 1 < 128 - MAX_TOKENS_LIMIT // 2:  # + 1: <|bos|>
        prompt += "The quick brown fox. "
    assert len(tok.encode(prompt).ids) + 1 < 128
    near = httpx.post(server + "/v1/completions", json={"prompt": prompt, "max_tokens": MAX_TOKENS_LIMIT})
    assert near.status_code == 400 and near.json()["error"]["code"] == "context_length_exceeded"
    assert "lower max_tokens" in near.json()["error"]["message"]
    over = httpx.post(server + "/v1/completions", json={"prompt": "x", "max_tokens": MAX_TOKENS_LIMIT + 1}).json()
    assert over["error"]["code"] == "max_tokens_exceeded" and "--max-tokens-limit" in over["error"]["message"]
    big = httpx.post(server + "/v1/completions", content=b'{"prompt": "' + b"a" * 2_000_000 + b'"}',
                     headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("method, path", [("GET", "/v1/nothing"), ("POST", "/v1/models"), ("GET", "/v1/models/x"),
                                          ("GET", "/v1/chat/completions"), ("POST", "/v1/completions")])
def test_other_4xx_are_openai_errors(server, method, path):
    r = httpx.request(method, server + path, json={} if method == "POST" else None)
    assert 400 <= r.status_code < 500, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_api_key_required_when_set(app):
    served = dataclasses.replace(app.state.served, api_key="s3cret", open=set())
    with live_server(create_app(served)) as url:
        with pytest.raises(openai.AuthenticationError) as err:
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        assert err.value.body["code"] == "invalid_api_key"
        r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "Bearer" in r.text
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model=served.model_id, messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=3).usage.completion_tokens <= 3
        assert httpx.get(url + "/health").json()["auth_required"] is True
        assert httpx.get(url + "/").status_code == 200  # the page loads, then asks for the key


def test_cors_only_when_asked(app, server):
    pre = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in httpx.options(server + "/v1/chat/completions", headers=pre).headers
    served = dataclasses.replace(app.state.served, open=set())  # a copy: this server's shutdown must not close ours
    with live_server(create_app(served, cors_origins=["http://localhost:3000"])) as url:
        r = httpx.options(url + "/v1/chat/completions", headers={**pre, "Origin": "http://localhost:3000"})
        assert r.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_page_and_static_files(server):
    page = httpx.get(server + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing loaded from elsewhere
    for name in ("app.js", "style.css"):
        r = httpx.get(server + "/static/" + name)
        assert r.status_code == 200 and "https://" not in r.text


def test_disconnect_cancels_generation(app, server):
    spy = app.state.served.engine
    body = {"messages": [{"role": "user", "content": "Go on."}], "max_tokens": MAX_TOKENS_LIMIT, "stream": True,
            "ignore_eos": True, "temperature": 1.0}
    before = len(spy.requests)
    with paced(app, 0.005):  # so the budget cannot run out before the hang-up lands
        with httpx.Client(timeout=30) as http, http.stream("POST", server + "/v1/chat/completions", json=body) as r:
            events = (json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {"))
            first = [next(events), next(events)]  # the role chunk and one content chunk, then hang up
            assert first[0]["object"] == "chat.completion.chunk" and first[1]["choices"][0]["delta"]["content"]
        req = spy.requests[before]
        deadline = time.monotonic() + 10
        while getattr(req, "finish_reason", None) is None and time.monotonic() < deadline:
            time.sleep(0.02)
    assert req.finish_reason == "cancelled" and req.completion_tokens < MAX_TOKENS_LIMIT, \
        "the generation ran to the end after the client left"


def test_concurrent_requests_all_succeed(client, model_id):
    results: list[int] = []

    def one(i: int) -> None:
        out = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": f"Hi {i}"}],
                                             max_tokens=8, extra_body={"ignore_eos": True})
        results.append(out.usage.completion_tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [8] * 6
