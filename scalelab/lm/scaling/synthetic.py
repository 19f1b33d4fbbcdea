"""A text source whose entropy is known exactly: a random Markov chain over made-up words, written as JSONL.

The chain is over ``words`` made-up lowercase words; its state is the last ``order`` words. From each state the
next word is one of ``successors`` words (one of them the last word's neighbour on a cycle through all words, which
leads every state back to the cycle, so there is one recurrent class; word 0 may repeat itself, so it is aperiodic)
with probabilities drawn from a Dirichlet(``concentration``). A document is ``doc_words`` words, each preceded by
one space (the first too, so a word is the same byte string, and the same tokens, wherever it stands), its first
``order`` words the state drawn from the stationary distribution pi. Then, in bits,

    H(document) = H(pi) + (doc_words - order) * h,    h = sum_s pi_s H(P[s, :])          (the entropy rate per word)
    E[bytes]    = doc_words * (mean_len + 1)                                      (mean_len = sum_i pi_i len(word_i))

and the bits per byte of a long stream of such documents is their ratio (renewal-reward). The text is a one-to-one
function of the word sequence (words hold no spaces, the count is fixed), so no byte-level model can do better, and a
tokenized model's bits per byte (its summed code length over the bytes it predicts, the <|bos|> between documents
carrying no bytes) is comparable with it directly; a model that has not learnt where a document ends pays at most
about one extra nat per document for the <|bos|> it could not foresee, which ``doc_words`` makes negligible.

    spec = SyntheticSpec(words=256, successors=8, documents=400, doc_words=1000, seed=0)
    truth = write_corpus(spec, "runs/synth/synthetic.jsonl")   # also writes synthetic.truth.json
    truth["bits_per_byte"]
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scalelab.common import UsageError, atomic_write_text, write_json

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"


@dataclass
class SyntheticSpec:
    """The synthetic source: a random Markov chain over made-up words (exact entropy rate)."""

    words: int = field(default=256, metadata={"help": "number of distinct made-up words (chain states)"})
    successors: int = field(default=8, metadata={"help": "possible next words after each word"})
    concentration: float = field(default=0.5, metadata={
        "help": "Dirichlet concentration of each word's next-word probabilities (small = peaked)"})
    zipf: float = field(default=0.0, metadata={
        "help": "word-frequency skew: successors drawn, and weighted, by rank^-zipf (0 = uniform; about 1 gives "
                "natural text's Zipf law, so rare words are learnt late and loss falls as a power law)"})
    documents: int = field(default=400, metadata={"help": "documents to generate"})
    doc_words: int = field(default=1000, metadata={"help": "words per document"})
    seed: int = field(default=0, metadata={"help": "seed of the chain and of the sampled text"})
    order: int = field(default=1, metadata={
        "help": "words of context the next word depends on: 2 gives words^2 contexts, a table a small model cannot "
                "store, so capacity (N) limits the loss gradually instead of all at once"})


@dataclass
class Chain:
    words: list[str]
    P: np.ndarray  # (S, K) next-word probabilities per state; state s = the last `order` word ids in base K
    pi: np.ndarray  # (S,) stationary distribution over states
    order: int = 1

    def next_state(self, s: np.ndarray, w: np.ndarray) -> np.ndarray:
        return (s % len(self.words) ** (self.order - 1)) * len(self.words) + w

    def state_of(self, first: np.ndarray) -> np.ndarray:
        """The state after a document's first ``order`` words, (documents, order) word ids, oldest first."""
        k = len(self.words)
        return sum(first[:, j] * k ** (self.order - 1 - j) for j in range(self.order))

    def words_of(self, state: np.ndarray) -> np.ndarray:
        """The inverse of ``state_of``: (documents, order) word ids, oldest first."""
        k = len(self.words)
        return np.stack([state // k ** (self.order - 1 - j) % k for j in range(self.order)], axis=1)

    def word_marginal(self) -> np.ndarray:
        """Stationary probability of each word (the last word of the state)."""
        return self.pi.reshape(-1, len(self.words)).sum(axis=0)


def _validate(spec: SyntheticSpec) -> None:
    if spec.words < 2 or not 1 <= spec.successors <= spec.words:
        raise UsageError(f"synthetic source: need words >= 2 and 1 <= successors <= words (got {spec.words}, "
                         f"{spec.successors})")
    if spec.concentration <= 0 or spec.documents < 1 or spec.doc_words < 2 or spec.zipf < 0:
        raise UsageError("synthetic source: concentration must be > 0, zipf >= 0, documents >= 1, doc_words >= 2")
    if spec.order not in (1, 2) or spec.doc_words <= spec.order:
        raise UsageError(f"synthetic source: order must be 1 or 2 and below doc_words (got {spec.order})")


def make_words(k: int, rng: np.random.Generator) -> list[str]:
    """``k`` distinct pronounceable words of one to three consonant-vowel syllables."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < k:
        n = int(rng.integers(1, 4))
        w = "".join(CONSONANTS[rng.integers(len(CONSONANTS))] + VOWELS[rng.integers(len(VOWELS))] for _ in range(n))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def make_chain(spec: SyntheticSpec) -> Chain:
    _validate(spec)
    rng = np.random.default_rng([spec.seed, 0x5EED])
    k = spec.words
    words = make_words(k, rng)
    P = np.zeros((k**spec.order, k))
    rank_weight = (np.arange(k) + 1.0) ** -spec.zipf  # all ones without a skew
    for i in range(k**spec.order):
        last = i % k
        forced = {(last + 1) % k} | ({0} if last == 0 and spec.successors > 1 else set())
        pool = np.array([j for j in range(k) if j not in forced])
        if spec.zipf:
            others = rng.choice(pool, size=spec.successors - len(forced), replace=False,
                                p=rank_weight[pool] / rank_weight[pool].sum())
        else:
            others = rng.permutation(pool)[:spec.successors - len(forced)]
        succ = np.array(sorted(forced | {int(j) for j in others}))
        P[i, succ] = rng.dirichlet(np.full(len(succ), spec.concentration))
        P[i, succ] = np.maximum(P[i, succ], 1e-6)  # every listed successor stays reachable (irreducibility)
        P[i] /= P[i].sum()
    pi = stationary(P) if spec.order == 1 else stationary_order2(P, k)
    return Chain(words, P, pi, spec.order)


def stationary_order2(P: np.ndarray, k: int, tol: float = 1e-15, max_iter: int = 200_000) -> np.ndarray:
    """Stationary distribution over word pairs by power iteration (the pair chain has one aperiodic recurrent class,
    so it converges; a dense solve of k^2 unknowns would be far slower): state (a, b) moves to (b, w) w.p. P[ab, w]."""
    P3 = P.reshape(k, k, k)
    pi = np.full((k, k), 1.0 / k**2)
    for _ in range(max_iter):
        new = np.einsum("ab,abw->bw", pi, P3)
        if np.abs(new - pi).sum() < tol:
            return new.reshape(-1) / new.sum()
        pi = new
    raise RuntimeError("synthetic source: the pair chain's stationary distribution did not converge")


def stationary(P: np.ndarray) -> np.ndarray:
    """The stationary distribution: the solution of pi P = pi, sum(pi) = 1 (unique for an irreducible chain)."""
    k = P.shape[0]
    M = np.vstack([P.T - np.eye(k), np.ones((1, k))])
    rhs = np.zeros(k + 1)
    rhs[-1] = 1.0
    pi, *_ = np.linalg.lstsq(M, rhs, rcond=None)
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def entropy_bits(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def exact_entropy(chain: Chain, doc_words: int) -> dict[str, Any]:
    """Exact bits per word and per byte of the document stream (see the module docstring)."""
    h = float(sum(chain.pi[s] * entropy_bits(chain.P[s]) for s in np.flatnonzero(chain.pi)))
    lens = np.array([len(w.encode("utf-8")) for w in chain.words], dtype=float)
    mean_len = float(chain.word_marginal() @ lens)
    h_start = entropy_bits(chain.pi)
    doc_bits = h_start + (doc_words - chain.order) * h
    doc_bytes = doc_words * (mean_len + 1)
    return {"bits_per_byte": doc_bits / doc_bytes, "entropy_rate_bits_per_word": h,
            "entropy_rate_bits_per_byte": h / (mean_len + 1), "start_entropy_bits": h_start,
            "mean_word_bytes": mean_len, "expected_document_bytes": doc_bytes, "expected_document_bits": doc_bits}


def sample_documents(chain: Chain, documents: int, doc_words: int, seed: int) -> np.ndarray:
    """(documents, doc_words) word ids; all documents advance together, so the loop is over positions only."""
    rng = np.random.default_rng([seed, 0xD0C5])
    k = len(chain.words)
    cum = np.cumsum(chain.P, axis=1)
    cum[:, -1] = 1.0
    ids = np.empty((documents, doc_words), dtype=np.int64)
    state = rng.choice(len(chain.pi), size=documents, p=chain.pi)
    ids[:, :chain.order] = chain.words_of(state)
    for t in range(chain.order, doc_words):
        u = rng.random(documents)
        ids[:, t] = np.minimum((cum[state] < u[:, None]).sum(axis=1), k - 1)
        state = chain.next_state(state, ids[:, t])
    return ids


def doc_code_lengths(chain: Chain, ids: np.ndarray) -> np.ndarray:
    """The true model's code length, in bits, of each document in ``ids`` (documents, doc_words)."""
    state = chain.state_of(ids[:, :chain.order])
    bits = -np.log2(chain.pi[state])
    for t in range(chain.order, ids.shape[1]):
        bits -= np.log2(chain.P[state, ids[:, t]])
        state = chain.next_state(state, ids[:, t])
    return bits


def doc_bytes(chain: Chain, ids: np.ndarray) -> np.ndarray:
    """Each document's length in bytes: every word and the space before it."""
    lens = np.array([len(w.encode("utf-8")) + 1 for w in chain.words])
    return lens[ids].sum(axis=1).astype(float)


def code_length_bits(chain: Chain, ids: np.ndarray) -> float:
    return float(doc_code_lengths(chain, ids).sum())


def write_corpus(spec: SyntheticSpec, path: str | Path) -> dict[str, Any]:
    """Write the documents as JSONL (field ``text``) and ``<stem>.truth.json`` with the exact entropy; returns it."""
    path = Path(path)
    chain = make_chain(spec)
    ids = sample_documents(chain, spec.documents, spec.doc_words, spec.seed)
    words = np.array(chain.words, dtype=object)
    texts = ["".join(" " + w for w in words[row]) for row in ids]  # see the module docstring: a space per word
    lines = [json.dumps({"text": t}) for t in texts]
    atomic_write_text(path, "\n".join(lines) + "\n")
    total_bytes = int(doc_bytes(chain, ids).sum())
    truth = {"spec": asdict(spec), **exact_entropy(chain, spec.doc_words),
             "sample_bits_per_byte": code_length_bits(chain, ids) / total_bytes, "sample_bytes": total_bytes,
             "corpus": str(path)}
    write_json(truth_path(path), truth)
    return truth


def truth_path(corpus: str | Path) -> Path:
    corpus = Path(corpus)
    return corpus.with_name(corpus.name.removesuffix(".jsonl") + ".truth.json")


def bits_per_byte_interval(chain: Chain, ids: np.ndarray, z: float = 4.0) -> tuple[float, float]:
    """A z-sigma interval for the sample's bits per byte from per-document variation (documents are independent)."""
    bits = doc_code_lengths(chain, ids)
    nbytes = doc_bytes(chain, ids)
    ratio = bits.sum() / nbytes.sum()
    resid = bits - ratio * nbytes  # delta method for a ratio of sums
    se = math.sqrt(resid.var(ddof=1) * len(ids)) / nbytes.sum() if len(ids) > 1 else float("inf")
    return ratio - z * se, ratio + z * se
