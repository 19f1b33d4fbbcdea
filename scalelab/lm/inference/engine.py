"""The inference engine: a lean KV-cached decoder, per-request sampling, streaming text, dynamic batching.

Three ways in, all on the same decode path (``Decoder``):

    from scalelab.lm.inference.batching import generate, generate_batch
    from scalelab.lm.inference.engine import Engine
    for token_id in generate(model, prompt_ids, max_new_tokens=64, temperature=0):    # streams ids
        ...
    outs = generate_batch(model, [ids_a, ids_b], max_new_tokens=64, temperature=0)     # list of id lists

    engine = Engine(model, tokenizer, max_batch=8, max_queue=64)    # starts the scheduler thread
    req = engine.submit(prompt_ids, max_tokens=128, temperature=0.7, top_p=0.9, top_k=0, seed=None,
                        stop_ids=[end_id], stop_strings=["\\n\\n"])   # QueueFull / ValueError at once
    for delta in req:              # str text deltas as they are decoded (``async for`` works too)
        print(delta, end="", flush=True)
    req.finish_reason              # "stop" (stop id or stop string) | "length" | "cancelled" | "error"
    req.prompt_tokens, req.completion_tokens, req.text, req.token_ids
    req.cancel()                   # a client went away: its row is freed at the next step (no-op once finished)
    engine.close()                 # stops the thread; unfinished requests end "cancelled"

The ``Engine`` scheduler (one background thread): each step it (1) admits waiting requests into free rows of one
shared KV cache, (2) runs one forward pass for *all* active rows: a decode token each, rows at different positions
(the CPU attention kernel, or a mask, keeps each to its own prefix), and with the CPU kernels the new rows' prompts
in the same pass (chunked prefill, ``batching.PREFILL_CHUNK`` prompt tokens a step at most; without them each prompt
is prefilled on admission), (3) samples each row with its own seeded generator,
detokenises incrementally, applies stop ids / stop strings / budgets, and (4) retires finished or cancelled rows,
moving the last active row into the hole so active rows always occupy rows 0..n-1 (the forward only touches them).
Concurrent clients share the cost of reading the weights: a batch-8 decode step costs far less than eight batch-1
steps (bench_generate measures it).

Lengths: the prompt plus the completion never exceed the context (``model.config.max_seq_len``); a prompt that
leaves no room is a ValueError. A generation stops after emitting a stop id (``generate`` yields it; the engine
counts it in ``completion_tokens`` and ``token_ids`` but never in ``text``) or when the budget is spent.

Text: ``TextStream`` turns ids into text deltas that never hold a broken UTF-8 character (byte-level BPE may split
one across tokens: text ending in U+FFFD is held back until the character completes). Stop strings are trimmed,
and text that might be the start of a stop string is held back until it is known not to be one.

The decoder (decoding.py), batches and ``generate`` (batching.py), sampler (sampling.py) and detokeniser
(textstream.py) are imported from their own modules; loading a model for the engine is loading.py's job.
Tests: ``.venv/bin/pytest tests/test_engine.py -q``; speed: ``.venv/bin/python benchmarks/bench_generate.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import torch

from scalelab.lm.inference.batching import Batch, Row, check_prompt
from scalelab.lm.inference.decoding import Decoder, unwrap
from scalelab.lm.inference.sampling import Sampler
from scalelab.lm.inference.textstream import StopStrings, TextStream
from scalelab.lm.special_tokens import encode_text

__all__ = ["AUTO_MAX_DELAY", "Engine", "QueueFull", "Request", "auto_stream_interval"]

T = TypeVar("T")


def out_of_memory(e: BaseException) -> bool:
    """A device allocation failure (CUDA's, or a backend's RuntimeError saying so), which one request can cause
    without the engine being broken."""
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


class QueueFull(Exception):
    """The engine's waiting queue holds ``max_queue`` requests already (an HTTP server answers 429)."""


# ------------------------------------------------------------------------------------------------------ requests

class Request:
    """One submitted generation. Iterate it (``for`` or ``async for``) for its text deltas as they come.

    Attributes: ``id``, ``prompt_tokens``, ``completion_tokens``, ``token_ids`` (generated ids, a final stop id
    included), ``text`` (emitted text, stop string trimmed), ``finish_reason`` (None while running, then "stop",
    "length", "cancelled" or "error"), ``error`` (the exception when "error"), ``created`` / ``first_token_at`` /
    ``finished_at`` (``time.perf_counter()`` stamps). Leaving an iteration early cancels the request.
    """

    _ids = itertools.count(1)

    def __init__(self, row: Row, tokenizer: Any, stop_strings: Iterable[str], wakeups: _Wakeups,
                 stream_interval: int | None = 1) -> None:
        self.id = next(Request._ids)
        self._wakeups = wakeups
        # readers are woken every ``stream_interval`` deltas; None: the engine's current ``wakeups.interval``
        self._interval, self._unsent = stream_interval, 0
        self._row = row
        self.prompt_tokens = len(row.prompt)
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.created = time.perf_counter()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self._text = TextStream(tokenizer) if tokenizer is not None else None
        self._stops = StopStrings(stop_strings)
        self._chunks: list[str] = []
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._cancel = False
        self._blocked = 0  # threads blocked in ``__iter__`` waiting for the next chunk

    # ---- read by clients
    @property
    def token_ids(self) -> list[int]:
        return list(self._row.out)

    @property
    def completion_tokens(self) -> int:
        return len(self._row.out)

    @property
    def text(self) -> str:
        with self._cond:
            return "".join(self._chunks)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Stop generating (safe from any thread, any time; a no-op once finished)."""
        self._cancel = True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until finished; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.finish_reason is not None, timeout)

    def result(self, timeout: float | None = None) -> str:
        """The whole text once finished (raises the engine's error, or TimeoutError)."""
        if not self.wait(timeout):
            raise TimeoutError(f"request {self.id} did not finish within {timeout} s")
        self._raise_error()
        return self.text

    def _raise_error(self) -> None:
        if self.finish_reason == "error":
            raise RuntimeError(f"generation failed: {self.error}") from self.error

    def __iter__(self) -> Iterator[str]:
        i = 0
        try:
            while True:
                with self._cond:
                    while len(self._chunks) <= i and self.finish_reason is None:
                        self._blocked += 1
                        try:
                            self._cond.wait()
                        finally:
                            self._blocked -= 1
                    chunks, finished = self._chunks[i:], self.finish_reason is not None
                i += len(chunks)
                if chunks:
                    yield "".join(chunks)
                elif finished:
                    self._raise_error()
                    return
        finally:
            self.cancel()  # no-op when finished; stops the generation when the reader walks away

    async def __aiter__(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        i = 0
        try:
            while True:
                event = None
                with self._cond:
                    chunks, finished = self._chunks[i:], self.finish_reason is not None
                    if not chunks and not finished:
                        event = asyncio.Event()
                        self._waiters.append((loop, event))
                i += len(chunks)
                if chunks:
                    yield "".join(chunks)
                elif finished:
                    self._raise_error()
                    return
                else:
                    await event.wait()
        finally:
            self.cancel()

    # ---- written by the engine thread
    def _wake(self, final: bool) -> None:
        waiters, self._waiters = self._waiters, []
        if final or self._blocked:  # ``wait()`` callers only care about the end: no thread switch per token
            self._cond.notify_all()
        for loop, event in waiters:
            self._wakeups.add(loop, event)

    def emit(self, text: str, finish: str | None = None, error: BaseException | None = None) -> None:
        """Called by the engine thread: queue a text delta and/or finish the request, waking its readers."""
        with self._cond:
            if text:
                self._chunks.append(text)
                self._unsent += 1
            if finish is not None and self.finish_reason is None:
                self.error = error
                self.finished_at = time.perf_counter()
                self.finish_reason = finish
            final = self.finish_reason is not None
            # the first text at once (time to first token), then every ``stream_interval`` deltas, and the end
            interval = self._wakeups.interval if self._interval is None else self._interval
            if final or self._unsent >= interval or (text and len(self._chunks) == 1):
                self._unsent = 0
                self._wake(final)

    def _on_token(self, token: int, finished: bool) -> bool:
        """Called after the row recorded ``token``; emits text; True when the request is finished."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        row = self._row
        stopped_by_id = token in row.stop_ids
        delta = ""
        if self._text is not None and not stopped_by_id:
            delta = self._text.push(token)
        if finished and self._text is not None:
            delta += self._text.flush()
        out, hit = self._stops.push(delta, final=finished)
        if hit:
            self.emit(out, "stop")
            return True
        if finished:
            self.emit(out, "stop" if stopped_by_id else "length")
            return True
        if out:
            self.emit(out)
        return False


class _Wakeups:
    """Asyncio readers to wake, gathered over one engine step and woken with one call per event loop.

    A server streaming to 8 clients would otherwise pay 8 ``call_soon_threadsafe`` (a self-pipe write and a loop
    turn each) per decode step.
    """

    def __init__(self) -> None:
        self.pending: dict[asyncio.AbstractEventLoop, list[asyncio.Event]] = {}
        self.interval = 1  # deltas per wake-up for requests whose stream interval is "auto" (set each step)

    def add(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        self.pending.setdefault(loop, []).append(event)

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for loop, events in pending.items():
            try:
                loop.call_soon_threadsafe(_set_all, events)
            except RuntimeError:  # the reader's loop is closed
                pass


def _set_all(events: list[asyncio.Event]) -> None:
    for event in events:
        event.set()


class _EngineRow(Row):
    request: Request

    def push(self, token: int) -> bool:
        return self.request._on_token(token, super().push(token))

    def cancelled(self) -> bool:
        return self.request._cancel


# ------------------------------------------------------------------------------------------------------ the engine

AUTO_MAX_DELAY = 0.02  # seconds: the longest an "auto" stream interval holds decoded text back from its reader


def auto_stream_interval(rows: int, step_seconds: float, max_delay: float = AUTO_MAX_DELAY) -> int:
    """Deltas per reader wake-up for ``stream_interval="auto"``: one wake-up per decode step in all (k = ``rows``),
    but text waits at most ``max_delay`` (k - 1 steps of ``step_seconds``), and always at least 1.

    Why: each wake-up becomes a socket write on the server (a syscall and a wake-up of the client, most of the
    event loop's busy time under load), and on a CPU machine that time is taken from decoding; a delta held back
    for less than a screen frame is not seen. bench_serve measures both settings.
    """
    if step_seconds <= 0:
        return max(1, rows)
    return max(1, min(rows, int(max_delay / step_seconds) + 1))


class Engine:
    """Dynamic batching over one shared KV cache, run by a background thread (see the module docstring).

    ``Engine(model, tokenizer, device=None, dtype=None, max_batch=8, max_queue=64, stream_interval=1)``:
    ``device``/``dtype`` move the model when given. ``tokenizer`` (a ``tokenizers.Tokenizer`` or a transformers
    fast tokenizer) is needed for text deltas and stop strings; without it the requests carry ids only.
    ``stream_interval`` k > 1 wakes readers every k deltas (the first at once, and the end), each delta then
    holding k tokens' text: a server writes k times fewer stream events, which on a CPU machine leaves the cores to
    decoding (vLLM's ``--stream-interval``). ``"auto"``: ``auto_stream_interval`` each step, k = the rows decoding
    (every token for one stream, 8 tokens an event at 8), so the wake-ups per decode step stay near one whatever
    the load, but never more tokens than ``AUTO_MAX_DELAY`` of decode steps holds (a slow model streams every
    token). Thread-safe; use as a context manager or call ``close()``.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any = None, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None, *, max_batch: int = 8, max_queue: int = 64,
                 max_len: int | None = None, stream_interval: int | str = 1) -> None:
        auto = stream_interval == "auto"
        if max_batch < 1 or max_queue < 0 or not (auto or (isinstance(stream_interval, int) and stream_interval >= 1)):
            raise ValueError(f"max_batch must be >= 1, max_queue >= 0 and stream_interval an integer >= 1 or 'auto', "
                             f"got {max_batch}, {max_queue} and {stream_interval!r}")
        self.stream_interval: int | str = stream_interval
        self._request_interval = None if auto else int(stream_interval)  # None: follow ``_Wakeups.interval``
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        self.model = unwrap(model).eval()
        self.tokenizer = tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self._waiting: deque[_EngineRow] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self.steps = 0
        self.tokens = 0
        self._wakeups = _Wakeups()  # flushed by the engine thread after each step
        # The decoder (fused, packed weights and the KV cache) is built by the engine thread itself, so that on CPU
        # its OpenMP thread team is the only busy one when the model was loaded off the main thread (see
        # ``loading.run_in_fresh_thread``).
        failed: list[BaseException] = []
        ready = threading.Event()

        def build_then_run() -> None:
            try:
                self._batch = Batch(Decoder(self.model, max_batch, max_len))
                if self._batch.dec.runner is not None:  # every bucket's CUDA graph before the first request
                    self._batch.dec.runner.capture_all()
            except BaseException as e:  # raised by the constructor below
                failed.append(e)
                return
            finally:
                ready.set()
            self._run()

        self._thread = threading.Thread(target=build_then_run, name="scalelab-engine", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            raise failed[0]
        self.context_length = self._batch.dec.max_len

    def submit(self, prompt_ids: Sequence[int] | str, max_tokens: int | None = None, temperature: float = 1.0,
               top_p: float = 1.0, top_k: int = 0, seed: int | None = None, stop_ids: Iterable[int] = (),
               stop_strings: Iterable[str] | str | None = ()) -> Request:
        """Queue a generation; returns its ``Request`` at once.

        ``prompt_ids`` may be text when the engine has a tokenizer. ``max_tokens`` None = until the context is
        full. Raises ValueError (bad prompt or sampling values), QueueFull, or RuntimeError after ``close()``.
        """
        if isinstance(prompt_ids, str):
            if self.tokenizer is None:
                raise ValueError("a text prompt needs an engine with a tokenizer; pass token ids")
            prompt_ids = encode_text(self.tokenizer, prompt_ids)
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        stop_strings = [s for s in (stop_strings or ()) if s]
        if stop_strings and self.tokenizer is None:
            raise ValueError("stop strings need an engine with a tokenizer")
        prompt = check_prompt(prompt_ids, self.model.config.vocab_size, self.context_length)
        room = self.context_length - len(prompt)
        if max_tokens is not None and (int(max_tokens) != max_tokens or max_tokens < 1):
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens}")
        sampler = Sampler(temperature, top_k, top_p, seed)
        row = _EngineRow(prompt, room if max_tokens is None else min(int(max_tokens), room), sampler, stop_ids)
        req = row.request = Request(row, self.tokenizer, stop_strings, self._wakeups, self._request_interval)
        with self._cv:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the request queue is full ({self.max_queue} waiting)")
            self._waiting.append(row)
            self._cv.notify_all()
        return req

    def stats(self) -> dict[str, int | str]:
        """Rows decoding now, requests waiting, decode steps and tokens generated so far, and the decoding backend
        ("scalelab CPU kernels" or "torch", see ``Decoder.backend``)."""
        with self._cv:
            return {"active": len(self._batch.rows), "waiting": len(self._waiting), "steps": self.steps,
                    "tokens": self.tokens, "max_batch": self.max_batch, "max_queue": self.max_queue,
                    "decoder": self._batch.dec.backend}

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the scheduler thread; unfinished requests end with finish_reason "cancelled"."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- the scheduler thread
    def _run(self) -> None:
        batch, step_time = self._batch, 0.0
        try:
            while True:
                with self._cv:
                    while not self._closed and not self._waiting and not batch.rows:
                        self._cv.wait()
                    if self._closed:
                        break
                    admit = [self._waiting.popleft() for _ in range(min(batch.free(), len(self._waiting)))]
                for row in admit:
                    if row.cancelled():
                        row.request.emit("", "cancelled")
                        continue
                    try:
                        self.tokens += batch.admit(row)  # with the CPU kernels, the prompt goes in with the step
                    except Exception as e:
                        if not out_of_memory(e):
                            raise
                        self._drop([i for i, r in enumerate(batch.rows) if r is row] , e, [row])
                gone = [i for i, r in enumerate(batch.rows) if r.cancelled()]
                for i in gone:
                    batch.rows[i].request.emit("", "cancelled")
                batch.retire(gone)
                if admit:
                    self._wakeups.flush()  # cancellations (and torch's path: first tokens) before the next step
                if batch.rows:
                    self._wakeups.interval = auto_stream_interval(len(batch.rows), step_time)
                    t = time.perf_counter()
                    try:
                        self.tokens += batch.step()
                    except Exception as e:  # the device ran out of memory: fail this step's requests, go on
                        if not out_of_memory(e):
                            raise
                        self._drop(list(range(len(batch.rows))), e)
                        continue
                    self.steps += 1
                    dt = time.perf_counter() - t
                    step_time = dt if not step_time else step_time + 0.1 * (dt - step_time)  # a running mean
                self._wakeups.flush()
        except BaseException as e:  # fail every open request rather than leave its reader hanging
            self._fail(e)
            raise
        self._fail(None)

    def _drop(self, rows: list[int], error: BaseException, extra: list[Any] = ()) -> None:
        """Fail the requests of ``rows`` (and ``extra`` ones not in the batch yet) with ``error``, free their rows
        and the allocator's cache, so the requests that come next are served."""
        batch = self._batch
        for row in [batch.rows[i] for i in rows] + [r for r in extra if all(r is not batch.rows[i] for i in rows)]:
            row.request.emit("", "error", error)
        batch.retire(rows)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self._wakeups.flush()

    def _fail(self, error: BaseException | None) -> None:
        with self._cv:
            self._closed = True
            rows = list(self._batch.rows) + list(self._waiting)
            self._waiting.clear()
        for row in rows:
            row.request.emit("", "error" if error is not None else "cancelled", error)
        self._wakeups.flush()
