"""An interpolated Kneser-Ney n-gram language model over token ids, vectorised with numpy (the classical baseline).

Chen & Goodman (1998)'s interpolated Kneser-Ney with one absolute discount per order, d_k = n1 / (n1 + 2 n2)
(n1, n2: how many k-grams have count 1 and 2). The highest order uses raw counts, every lower order continuation
counts (how many distinct tokens precede the k-gram), and the unigram level interpolates with the uniform
distribution over the vocabulary, so every token gets a probability:

    P_k(w | h) = max(c_k(h w) - d_k, 0) / c_k(h .) + d_k * T_k(h) / c_k(h .) * P_{k-1}(w | h')   (h seen)
    P_k(w | h) = P_{k-1}(w | h')                                                                 (h unseen)

with c_k(h .) the total and T_k(h) the number of distinct successors of h. An n-gram is a base-V number in an int64,
so counting is ``np.unique`` over the stream and scoring is ``np.searchsorted``: millions of tokens take seconds,
where nltk's pure-Python ``KneserNeyInterpolated`` takes seconds per thousand. tests/test_scaling.py checks it
against a direct dictionary implementation of the formulas above and that every conditional sums to one.

    lm = KneserNey(order=4, vocab_size=4096).fit(train_ids)
    nats = lm.token_nats(val_ids)            # -ln P(val[i] | val[i-order+1:i]) for i >= order - 1
"""

from __future__ import annotations

import numpy as np


class KneserNey:
    """Interpolated Kneser-Ney of order ``order`` over ids in [0, vocab_size)."""

    def __init__(self, order: int = 3, vocab_size: int = 4096) -> None:
        self.order = order
        self.vocab_size = vocab_size

    def _keys(self, ids: np.ndarray, k: int) -> np.ndarray:
        """Base-V keys of every k-gram of ``ids`` (length len(ids) - k + 1); for a 2-D array, of every row
        separately (no k-gram spans two rows), flattened."""
        V = self.vocab_size
        n = ids.shape[-1] - k + 1
        key = np.zeros((*ids.shape[:-1], max(n, 0)), dtype=np.int64)
        for j in range(k):
            key = key * V + ids[..., j:j + n]
        return key.reshape(-1)

    def fit(self, ids: np.ndarray) -> KneserNey:
        """Count the k-grams of ``ids``: a token stream, or (rows, length) windows counted row by row."""
        if self.order < 1:
            raise ValueError("order must be at least 1")
        if float(self.vocab_size) ** self.order >= 2.0**62:
            raise ValueError(f"vocab_size {self.vocab_size} ** order {self.order} does not fit an int64 key")
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim not in (1, 2) or ids.shape[-1] < self.order:
            raise ValueError(f"need at least {self.order} tokens to fit an order-{self.order} model")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        V = self.vocab_size
        # level k holds (sorted k-gram keys, their counts, sorted context keys, context totals, context types, d_k)
        self.levels_: dict[int, tuple[np.ndarray, ...]] = {}
        grams, counts = np.unique(self._keys(ids, self.order), return_counts=True)
        for k in range(self.order, 0, -1):
            n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
            d = n1 / (n1 + 2 * n2) if n1 + 2 * n2 > 0 else 0.5
            d = min(max(d, 1e-3), 0.999)
            ctx = grams // V
            starts = np.flatnonzero(np.r_[True, ctx[1:] != ctx[:-1]])  # grams are sorted, so contexts are grouped
            ctx_keys = ctx[starts]
            totals = np.add.reduceat(counts, starts).astype(np.float64)
            types = np.diff(np.r_[starts, len(ctx)]).astype(np.float64)
            self.levels_[k] = (grams, counts.astype(np.float64), ctx_keys, totals, types, d)
            if k > 1:  # continuation counts of the (k-1)-grams: how many distinct k-grams of the stream end in them
                kgrams = grams if k == self.order else np.unique(self._keys(ids, k))
                grams, counts = np.unique(kgrams % V ** (k - 1), return_counts=True)
        return self

    @staticmethod
    def _lookup(sorted_keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
        if len(sorted_keys) == 0:
            return np.zeros(len(queries))
        pos = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
        return np.where(sorted_keys[pos] == queries, values[pos], 0.0)

    def probabilities(self, ids: np.ndarray) -> np.ndarray:
        """P(ids[i] | the order-1 tokens before it) for i >= order - 1."""
        ids = np.asarray(ids, dtype=np.int64)
        V, n = self.vocab_size, self.order
        m = len(ids) - n + 1
        if m <= 0:
            return np.zeros(0)
        target = ids[n - 1:]
        grams1, counts1, _, totals1, types1, d1 = self.levels_[1]
        # the unigram level: its one context is the empty one; mixes with the uniform distribution
        c = self._lookup(grams1, counts1, target)
        p = (np.maximum(c - d1, 0.0) + d1 * types1[0] / V) / totals1[0]
        for k in range(2, n + 1):
            grams, counts, ctx_keys, totals, types, d = self.levels_[k]
            full = self._keys(ids[n - k:], k)[:m]  # the k-gram ending at each target
            ctx = full // V
            tot = self._lookup(ctx_keys, totals, ctx)
            typ = self._lookup(ctx_keys, types, ctx)
            c = self._lookup(grams, counts, full)
            seen = tot > 0
            safe = np.where(seen, tot, 1.0)
            p = np.where(seen, np.maximum(c - d, 0.0) / safe + d * typ / safe * p, p)
        return p

    def token_nats(self, ids: np.ndarray) -> np.ndarray:
        return -np.log(self.probabilities(ids))


def bits_per_byte(lm: KneserNey, val: np.ndarray, token_bytes: np.ndarray) -> float:
    """The model's bits per byte on ``val``: code length over the targets that carry bytes (not special tokens),
    divided by their bytes, the same accounting as the Transformer's evaluation."""
    val = np.asarray(val, dtype=np.int64)
    nats = lm.token_nats(val)
    targets = val[lm.order - 1:]
    b = token_bytes[targets]
    keep = b > 0
    return float(nats[keep].sum() / np.log(2) / b[keep].sum())
