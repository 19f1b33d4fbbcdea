"""Rows and batches over a ``Decoder``: ``generate`` (one stream), ``generate_batch`` and the engine's ``Batch``.

    for token_id in generate(model, prompt_ids, max_new_tokens=64, temperature=0):    # streams ids
        ...
    outs = generate_batch(model, [ids_a, ids_b], max_new_tokens=64, temperature=0)     # list of id lists

Re-exported by scalelab.lm.inference.engine (import them from there). Tested in tests/test_engine.py.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence

import torch

from scalelab.lm.inference.decoding import Decoder, give_back, lease_decoder
from scalelab.lm.inference.sampling import Sampler, sample_rows


def check_prompt(prompt_ids: Sequence[int], vocab_size: int, context: int) -> list[int]:
    ids = [int(t) for t in prompt_ids]
    if not ids:
        raise ValueError("the prompt is empty: give at least one token (e.g. <|bos|>)")
    if len(ids) >= context:
        raise ValueError(f"the prompt is {len(ids)} tokens but the context length is {context} tokens "
                         "(leave room for at least one generated token): shorten it")
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise ValueError(f"token id {bad} is outside the vocabulary (0..{vocab_size - 1})")
    return ids


class Row:
    """One sequence being generated: its sampler, budget, stop ids and what it emitted."""

    def __init__(self, prompt: list[int], budget: int, sampler: Sampler, stop_ids: Iterable[int]) -> None:
        self.prompt, self.budget, self.sampler = prompt, budget, sampler
        self.stop_ids = frozenset(int(t) for t in stop_ids)
        self.out: list[int] = []
        self.fed = 0  # prompt tokens in the cache so far
        self.pending = -1  # the last sampled token, fed at the next decode step

    def push(self, token: int) -> bool:
        """Record a new token; True when the row is finished."""
        self.out.append(token)
        self.pending = token
        return token in self.stop_ids or len(self.out) >= self.budget

    def cancelled(self) -> bool:
        return False


PREFILL_CHUNK = 512  # prompt tokens fed per step at most, across the rows being admitted (chunked prefill)


class Batch:
    """Active rows packed into decoder rows 0..n-1: admit, step (one batched forward), retire.

    With the packed forward (``Decoder.packed``: the CPU kernels) a row's prompt goes in with the next step, beside
    the other rows' decode tokens (continuous batching with chunked prefill, as vLLM does): a new request costs its
    prompt's matmuls but no forward of its own, and a long prompt is fed ``PREFILL_CHUNK`` tokens a step while the
    other rows keep decoding. Why: a forward has a fixed cost, the same for 1 token as for 8, which a prompt
    prefilled on its own pays again (bench_serve measures the gain). Otherwise (torch's attention) ``admit``
    prefills at once.
    """

    def __init__(self, decoder: Decoder) -> None:
        self.dec = decoder
        self.rows: list[Row] = []

    def free(self) -> int:
        return self.dec.max_batch - len(self.rows)

    def admit(self, row: Row) -> int:
        """Take ``row`` into the next free decoder row; returns the tokens it produced now (0, or 1 when prefilled
        at once)."""
        slot = len(self.rows)
        self.dec.lengths[slot] = 0
        if self.dec.packed or self.dec.runner is not None:  # fed by the next steps
            self.rows.append(row)
            return 0
        logits = self.dec.prefill(slot, row.prompt)
        row.fed = len(row.prompt)
        if row.push(row.sampler(logits[0])):
            self.dec.lengths[slot] = 0
        else:
            self.rows.append(row)
        return 1

    def step(self) -> int:
        """One forward over every row (a decode token each, or the next chunk of a prompt being fed); samples the
        rows whose logits are ready and retires the finished ones. Returns the tokens sampled."""
        rows, dec = self.rows, self.dec
        if dec.runner is not None:
            return self._step_static()
        if not dec.packed:
            logits = dec.decode([r.pending for r in rows])
            tokens = sample_rows(logits, [r.sampler for r in rows])  # one batched pass, greedy and sampled rows alike
            self.retire([i for i, (r, tok) in enumerate(zip(rows, tokens)) if r.push(tok)])
            return len(rows)
        feed: list[int] = []
        where: list[int] = []
        positions: list[int] = []
        last: list[int] = []
        ready: list[int] = []  # rows sampled this step
        budget = PREFILL_CHUNK
        for slot, r in enumerate(rows):
            start = dec.lengths[slot]
            if r.fed < len(r.prompt):
                if budget <= 0:
                    continue
                chunk = r.prompt[r.fed:r.fed + budget]
                r.fed += len(chunk)
                budget -= len(chunk)
            else:
                chunk = [r.pending]
            feed += chunk
            where += [slot] * len(chunk)
            positions += range(start, start + len(chunk))
            dec.lengths[slot] = start + len(chunk)
            if r.fed == len(r.prompt):
                last.append(len(feed) - 1)
                ready.append(slot)
        if not feed:
            return 0
        plain = len(feed) == len(ready) == len(rows)  # decode tokens only: row i is token i, all logits wanted
        logits = dec.forward_tokens(feed, None if plain else where, positions, None if plain else last)
        tokens = sample_rows(logits, [rows[i].sampler for i in ready]) if ready else []
        self.retire([i for i, tok in zip(ready, tokens) if rows[i].push(tok)])
        return len(ready)

    def _step_static(self) -> int:
        """``step`` on the static path: prompt chunks eagerly, then one decode step for the decoding rows."""
        rows, dec = self.rows, self.dec
        decoding = [r.fed == len(r.prompt) for r in rows]  # before this step's prefill
        parts: list[torch.Tensor] = []
        ready: list[int] = []
        budget = PREFILL_CHUNK
        for slot, r in enumerate(rows):
            if decoding[slot] or budget <= 0:
                continue
            chunk = r.prompt[r.fed:r.fed + budget]
            r.fed += len(chunk)
            budget -= len(chunk)
            logits = dec.prefill(slot, chunk)
            if r.fed == len(r.prompt):
                parts.append(logits)
                ready.append(slot)
        if any(decoding):
            logits = dec.decode([r.pending if d else None for r, d in zip(rows, decoding)])
            ids = [i for i, d in enumerate(decoding) if d]
            if len(ids) < len(rows):  # some rows are still prefilling: their logits are padding
                pick = torch.tensor(ids)
                if logits.is_cuda:
                    pick = pick.pin_memory().to(logits.device, non_blocking=True)
                logits = logits.index_select(0, pick.to(logits.device))
            parts.append(logits)
            ready = ready + ids
        if not ready:
            return 0
        logits = parts[0] if len(parts) == 1 else torch.cat(parts)
        tokens = sample_rows(logits, [rows[i].sampler for i in ready])  # one pass, one copy of the ids
        self.retire([i for i, tok in zip(ready, tokens) if rows[i].push(tok)])
        return len(ready)

    def retire(self, indices: list[int]) -> None:
        for i in sorted(indices, reverse=True):  # highest first: the row moved into a hole is never a retired one
            last = len(self.rows) - 1
            if i != last:
                self.dec.move_row(last, i)
                self.rows[i] = self.rows[last]
            self.dec.lengths[last] = 0
            self.rows.pop()


# ------------------------------------------------------------------------------------------------------ functions

def generate(model: torch.nn.Module, prompt_ids: list[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int | None = None, stop_ids: Iterable[int] = (),
             ) -> Iterator[int]:
    """Stream new token ids after ``prompt_ids`` with a KV cache (temperature 0 = greedy).

    Stops after yielding a stop id (the caller decides whether to show it), after ``max_new_tokens`` tokens, or
    when prompt + output fill the context. Arguments are checked at once (ValueError), before the first token.
    """
    dec = lease_decoder(model, 1)  # on CUDA: a decoder whose graphs were captured by an earlier call
    prompt = check_prompt(prompt_ids, dec.config.vocab_size, dec.max_len)
    row = Row(prompt, min(int(max_new_tokens), dec.max_len - len(prompt)),
               Sampler(temperature, top_k, top_p, seed), stop_ids)
    return _stream(dec, row)


def _stream(dec: Decoder, row: Row) -> Iterator[int]:
    if row.budget <= 0:
        give_back(dec)
        return
    try:
        logits = dec.prefill(0, row.prompt)
        while True:
            tok = row.sampler(logits[0])
            finished = row.push(tok)
            yield tok
            if finished:
                return
            logits = dec.decode([tok])
    finally:
        give_back(dec)


def generate_batch(model: torch.nn.Module, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                   top_k: int = 0, top_p: float = 1.0, seed: int | None = None, stop_ids: Iterable[int] = (),
                   max_batch: int = 32) -> list[list[int]]:
    """New tokens for each prompt (a stop id, when hit, ends its list), decoding up to ``max_batch`` rows together.

    Ragged prompts are prefilled one by one into their own cache rows, then decoded together, each row stopping on
    its own; freed rows take the next prompts. Row i samples with seed ``seed + i``, so its output equals
    ``generate(model, prompts[i], ..., seed=seed + i)``.
    """
    if not prompts:
        return []
    dec = lease_decoder(model, max(1, min(max_batch, len(prompts))))
    stop_ids = list(stop_ids)
    rows = []
    for i, p in enumerate(prompts):
        ids = check_prompt(p, dec.config.vocab_size, dec.max_len)
        rows.append(Row(ids, min(int(max_new_tokens), dec.max_len - len(ids)),
                         Sampler(temperature, top_k, top_p, None if seed is None else seed + i), stop_ids))
    batch, waiting = Batch(dec), deque(r for r in rows if r.budget > 0)
    while waiting or batch.rows:
        while waiting and batch.free():
            batch.admit(waiting.popleft())
        if batch.rows:
            batch.step()
    give_back(dec)
    return [r.out for r in rows]
