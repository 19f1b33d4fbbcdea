"""Scaling laws: the fit recovers known constants, the synthetic source's entropy is exact, Kneser-Ney matches a
direct implementation, and a tiny sweep runs, resumes, re-runs a corrupt point, fits, plots, reports and plans."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from scalelab.__main__ import main
from scalelab.common import UsageError
from scalelab.lm.model import GPT
from scalelab.lm.scaling import fit as F
from scalelab.lm.scaling.analysis import crossover
from scalelab.lm.scaling.ngram import KneserNey
from scalelab.lm.scaling.sweep import size_config, size_stats
from scalelab.lm.scaling.synthetic import (
    SyntheticSpec,
    bits_per_byte_interval,
    exact_entropy,
    make_chain,
    sample_documents,
)

# ----------------------------------------------------------------------------------------------- fits


def _grid_points(true: dict[str, float], noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    N, D = [], []
    for C in (1e12, 1e13, 1e14, 1e15):
        for n in np.geomspace(2e4, 2e6, 5):
            N.append(n)
            D.append(C / (6 * n))
    N, D = np.array(N), np.array(D)
    L = F.law(N, D, **true) * np.exp(rng.normal(0.0, noise, len(N)))
    return N, D, L


def test_law_fit_recovers_known_constants_with_intervals() -> None:
    true = {"E": 1.2, "A": 60.0, "B": 300.0, "alpha": 0.4, "beta": 0.35}
    N, D, L = _grid_points(true, noise=0.003)
    fit = F.fit_law(N, D, L)
    assert not fit["at_bound"]
    assert fit["E"] == pytest.approx(true["E"], rel=0.03)
    assert fit["alpha"] == pytest.approx(true["alpha"], abs=0.08)
    assert fit["beta"] == pytest.approx(true["beta"], abs=0.05)
    boot = F.bootstrap_law(N, D, L, fit, n_boot=12, seed=1)
    lo, hi = boot["intervals"]["E"]
    assert lo <= true["E"] <= hi and hi - lo < 0.3
    verdict = F.e_verdict(fit, boot, max_rel_width=0.5)
    assert verdict["pinned"] and verdict["E"] == fit["E"]


def test_noise_free_fit_is_exact() -> None:
    true = {"E": 0.8, "A": 30.0, "B": 90.0, "alpha": 0.3, "beta": 0.3}
    N, D, L = _grid_points(true, noise=0.0)
    fit = F.fit_law(N, D, L)
    pred = F.law(N, D, fit["E"], fit["A"], fit["B"], fit["alpha"], fit["beta"])
    assert np.max(np.abs(pred / L - 1)) < 1e-4


def test_fit_says_how_many_points_it_needs() -> None:
    with pytest.raises(F.TooFewPoints, match="at least 6 points"):
        F.fit_law([1e4, 2e4, 3e4], [1e6, 1e6, 1e6], [2.0, 1.9, 1.8])
    with pytest.raises(F.TooFewPoints, match="at least 3 model sizes"):
        F.parabola_minimum(np.log([1e4, 2e4]), np.array([2.0, 1.9]))


def test_unpinned_E_is_reported_not_printed() -> None:
    """Pure power laws without a floor: E runs to the bottom of the search and the verdict says so."""
    N, D, _ = _grid_points({"E": 0.0, "A": 1.0, "B": 1.0, "alpha": 0.3, "beta": 0.3}, noise=0.0)
    L = 40.0 / N**0.3 + 50.0 / D**0.3
    fit = F.fit_law(N, D, L)
    verdict = F.e_verdict(fit, F.bootstrap_law(N, D, L, fit, n_boot=4), max_rel_width=0.1)
    assert not verdict["pinned"] and verdict["E"] is None and verdict["why"]


def test_isoflop_parabola_finds_the_laws_optimum() -> None:
    true = {"E": 1.0, "A": 50.0, "B": 200.0, "alpha": 0.35, "beta": 0.35}
    pts = []
    for C in (1e12, 1e13, 1e14):
        for n in np.geomspace(1e4, 3e6, 9):
            pts.append({"budget": C, "params": n, "flops_per_token": 6 * n,
                        "val_bpb": float(F.law(n, C / (6 * n), **true))})
    minima = F.isoflop_minima(pts)
    for m in minima:
        grid = np.geomspace(1e4, 3e6, 4000)
        exact = grid[np.argmin(F.law(grid, m["budget"] / (6 * grid), **true))]
        assert m["inside"] and abs(math.log(m["N_opt"] / exact)) < 0.15
    laws = F.isoflop_laws(minima)
    assert laws["N_opt"]["exponent"] == pytest.approx(0.5, abs=0.05)  # alpha = beta: a = b = 1/2


def test_crossover_interpolates_in_log_d() -> None:
    out = crossover([1000, 10000, 100000], [2.0, 1.5, 1.4], [3.0, 1.5, 1.0])
    assert out["tokens"] == pytest.approx(10000)
    assert crossover([1, 10], [1.0, 1.0], [2.0, 2.0])["tokens"] is None


# ----------------------------------------------------------------------------------------------- synthetic source


def _assert_enumeration_matches(chain, doc_words: int, prob) -> None:
    """Sum H and E[bytes] over every document of ``doc_words`` words (``prob(seq)`` its probability) and compare
    them with ``exact_entropy``'s closed forms."""
    H = B = 0.0
    for seq in itertools.product(range(len(chain.words)), repeat=doc_words):
        p = prob(seq)
        if p > 0:
            H -= p * math.log2(p)
            B += p * len("".join(" " + chain.words[i] for i in seq).encode())  # a space before every word
    ex = exact_entropy(chain, doc_words)
    assert ex["expected_document_bits"] == pytest.approx(H, rel=1e-9)
    assert ex["expected_document_bytes"] == pytest.approx(B, rel=1e-9)


def test_exact_entropy_matches_enumeration() -> None:
    """Every document of a 4-word chain, 3 words long: H and E[bytes] summed directly equal the formulas."""
    chain = make_chain(SyntheticSpec(words=4, successors=3, doc_words=3, seed=5))
    _assert_enumeration_matches(chain, 3, lambda s: chain.pi[s[0]] * chain.P[s[0], s[1]] * chain.P[s[1], s[2]])
    assert np.allclose(chain.pi @ chain.P, chain.pi)


def test_order_two_entropy_matches_enumeration_and_sampling() -> None:
    """A chain whose next word depends on the last two: every 4-word document of a 3-word chain summed directly
    gives the formulas' H and E[bytes]; the pair distribution is stationary; sampled text has the exact rate."""
    chain = make_chain(SyntheticSpec(words=3, successors=2, doc_words=4, order=2, seed=3))
    pi2 = chain.pi.reshape(3, 3)
    assert np.allclose(np.einsum("ab,abw->bw", pi2, chain.P.reshape(3, 3, 3)), pi2)
    _assert_enumeration_matches(chain, 4, lambda s: pi2[s[0], s[1]] * math.prod(
        chain.P[3 * a + b, w] for a, b, w in zip(s, s[1:], s[2:])))
    big = SyntheticSpec(words=32, successors=4, doc_words=300, order=2, seed=2)
    chain = make_chain(big)
    lo, hi = bits_per_byte_interval(chain, sample_documents(chain, 300, big.doc_words, seed=5))
    assert lo <= exact_entropy(chain, big.doc_words)["bits_per_byte"] <= hi
    with pytest.raises(UsageError, match="order"):
        make_chain(SyntheticSpec(order=3))


def test_sampled_text_has_the_exact_entropy() -> None:
    spec = SyntheticSpec(words=64, successors=4, doc_words=400, seed=2)
    chain = make_chain(spec)
    ids = sample_documents(chain, 300, spec.doc_words, seed=3)
    lo, hi = bits_per_byte_interval(chain, ids)
    assert lo <= exact_entropy(chain, spec.doc_words)["bits_per_byte"] <= hi


def test_zipf_source_is_skewed_irreducible_and_exact() -> None:
    """With a Zipf skew the chain stays irreducible (every word has stationary mass), its word frequencies fall
    with rank, and sampled text still has the exact entropy."""
    spec = SyntheticSpec(words=256, successors=8, zipf=1.0, concentration=1.0, doc_words=400, seed=1)
    chain = make_chain(spec)
    assert np.allclose(chain.pi @ chain.P, chain.pi) and np.all(chain.pi > 0)
    assert chain.pi[:8].sum() > 4 * chain.pi[-8:].sum() * 8  # the most common ranks dominate the rarest
    ids = sample_documents(chain, 300, spec.doc_words, seed=4)
    lo, hi = bits_per_byte_interval(chain, ids)
    assert lo <= exact_entropy(chain, spec.doc_words)["bits_per_byte"] <= hi
    with pytest.raises(UsageError, match="zipf"):
        make_chain(SyntheticSpec(zipf=-1.0))


# ----------------------------------------------------------------------------------------------- Kneser-Ney


def _reference_kn(ids: list[int], order: int, V: int, ctx: tuple[int, ...], w: int) -> float:
    """Interpolated Kneser-Ney written directly from its definition with dictionaries."""
    grams = {k: Counter(tuple(ids[i:i + k]) for i in range(len(ids) - k + 1)) for k in range(1, order + 1)}
    counts = {order: grams[order]}
    for k in range(1, order):
        cont: Counter = Counter()
        for g in grams[k + 1]:
            cont[g[1:]] += 1
        counts[k] = cont
    disc = {}
    for k, c in counts.items():
        n1, n2 = sum(v == 1 for v in c.values()), sum(v == 2 for v in c.values())
        disc[k] = min(max(n1 / (n1 + 2 * n2) if n1 + 2 * n2 else 0.5, 1e-3), 0.999)

    def P(k: int, h: tuple[int, ...], w: int) -> float:
        c = counts[k]
        if k == 1:
            return (max(c.get((w,), 0) - disc[1], 0) + disc[1] * len(c) / V) / sum(c.values())
        h = h[-(k - 1):]
        total = sum(v for g, v in c.items() if g[:-1] == h)
        types = sum(1 for g in c if g[:-1] == h)
        low = P(k - 1, h[1:], w)
        if total == 0:
            return low
        return max(c.get(h + (w,), 0) - disc[k], 0) / total + disc[k] * types / total * low

    return P(order, ctx, w)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_kneser_ney_matches_reference_and_normalises(order: int) -> None:
    rng = np.random.default_rng(order)
    V = 7
    ids = rng.integers(0, V, 80)
    ids[10:20] = [1, 2, 3, 1, 2, 3, 1, 2, 3, 4]
    lm = KneserNey(order, V).fit(ids)
    test = rng.integers(0, V, 40)
    got = lm.probabilities(test)
    want = [_reference_kn(ids.tolist(), order, V, tuple(test[i - order + 1:i]), int(test[i]))
            for i in range(order - 1, len(test))]
    assert np.allclose(got, want, rtol=1e-12, atol=0)
    for ctx in [(1, 2), (6, 6), (0, 3)]:  # seen and unseen contexts: a distribution over the vocabulary
        ctx = ctx[len(ctx) - (order - 1):] if order > 1 else ()
        total = sum(lm.probabilities(np.array([*ctx, w]))[0] for w in range(V))
        assert total == pytest.approx(1.0, abs=1e-12)


def test_kneser_ney_rows_never_join() -> None:
    rows = np.array([[1, 2, 3], [4, 5, 6]])
    lm = KneserNey(2, 8).fit(rows)
    assert lm.levels_[2][0].tolist() == sorted([1 * 8 + 2, 2 * 8 + 3, 4 * 8 + 5, 5 * 8 + 6])


# ----------------------------------------------------------------------------------------------- sweep, end to end


@pytest.mark.parametrize("spec", ["1x8", "1x32", "2x64", "3x128"])
def test_size_stats_match_the_model(spec: str) -> None:
    mcfg = size_config(spec, 300, 32)
    st = size_stats(mcfg, 32)
    model = GPT(mcfg)
    assert st["params"] == model.num_params()
    assert st["params_non_embedding"] == model.num_params(non_embedding=True)
    assert st["flops_per_token"] == model.flops_per_token(32)


def _tiny_yaml(path: Path, **over) -> Path:
    cfg = {"_target": "scalelab.lm.scaling.sweep:ScalingConfig", "source": "synthetic",
           "synthetic": {"words": 16, "successors": 3, "documents": 60, "doc_words": 300, "seed": 1},
           "vocab_size": 300, "val_fraction": 0.1, "budgets": [4e8, 8e8, 1.6e9], "sizes": ["1x8", "1x16", "1x32"],
           "min_sizes": 3, "min_steps": 4, "seq_len": 32, "batch_size": 4, "lr": 0.01, "eval_tokens": 2048,
           "eval_context": 8, "dtype": "fp32", "device": "cpu", "save_every": 50, "n_boot": 3,
           "curve_tokens": [256], "curve_size": "1x16", "ngram_orders": [2]}
    cfg.update(over)
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in cfg.items()) + "\n")
    return path


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sweep")
    out = tmp / "out"
    assert main(["scaling", "--config", str(_tiny_yaml(tmp / "s.yaml")), "--out", str(out)]) == 0
    return out


@pytest.mark.slow  # end to end: a 10-point sweep through the training loop (shared fixture)
def test_sweep_writes_fits_plots_and_report(sweep_dir: Path) -> None:
    res = json.loads((sweep_dir / "scaling.json").read_text())
    iso = [p for p in res["points"] if p["kind"] == "isoflop"]
    assert len(iso) == 9 and res["planned_points"] == 10
    for p in iso:
        assert p["tokens"] == p["steps"] * 4 * 32 and 0 < p["val_bpb"] < 10
        assert p["params_non_embedding"] < p["params"]
        assert abs(p["budget"] - p["tokens"] * p["flops_per_token"]) <= 0.5 * 4 * 32 * p["flops_per_token"]
    assert "E" in res["law"] and "intervals" in res["law"]["bootstrap"]
    assert len(res["isoflop"]["minima"]) == 3 and "laws" in res["isoflop"]
    assert res["holdout"]["held_out_budget"] == 1.6e9
    assert res["truth"]["bits_per_byte"] > 0 and "truth_check" in res
    ng = res["ngram"]
    assert ng["size"] == "1x16" and ng["tokens"][0] == 256 and len(ng["ngram_bpb"]["2"]) == len(ng["tokens"])
    # the n-gram model counts at most one pass: the largest D here are several passes over the training split
    one_pass = max(ng["ngram_tokens"])
    assert one_pass < ng["tokens"][-1]
    assert all(abs(s - min(t, one_pass)) < 4 * 32 for s, t in zip(ng["ngram_tokens"], ng["tokens"]))
    for png in ("isoflop.png", "frontier.png", "ngram.png"):
        assert (sweep_dir / png).stat().st_size > 1000
    report = (sweep_dir / "report.md").read_text()
    assert "## Scaling laws" in report and "0.34" in report and "Held-out prediction" in report


@pytest.mark.slow  # end to end: a 10-point sweep through the training loop (shared fixture)
def test_sweep_resumes_and_reruns_a_corrupt_point(sweep_dir: Path, tmp_path: Path, capsys) -> None:
    cfg = _tiny_yaml(tmp_path / "s.yaml")
    points = sweep_dir / "points"
    done = sorted(points.glob("*/result.json"))
    stamps = {p: p.stat().st_mtime_ns for p in done}
    corrupt, lost = done[0], done[1]
    corrupt.write_text("{not json")
    before = json.loads(lost.read_text())
    lost.unlink()  # finished training, result not yet written: the loop's resume finds the last checkpoint
    capsys.readouterr()
    assert main(["scaling", "--config", str(cfg), "--out", str(sweep_dir)]) == 0
    out = capsys.readouterr()
    assert f"{corrupt}: corrupt" in out.out + out.err
    assert json.loads(corrupt.read_text())["val_bpb"] > 0
    assert json.loads(lost.read_text())["val_bpb"] == pytest.approx(before["val_bpb"])
    for p in done[2:]:
        assert p.stat().st_mtime_ns == stamps[p], f"{p} was re-run"


@pytest.mark.slow  # end to end: a 10-point sweep through the training loop (shared fixture)
def test_plan_prints_a_model_for_a_budget(sweep_dir: Path, capsys) -> None:
    assert main(["plan", "--scaling", str(sweep_dir), "--flops", "1e10", "--max-depth", "2"]) == 0
    out = capsys.readouterr().out
    assert "model:" in out and "predicted validation loss" in out
    assert main(["plan", "--scaling", str(sweep_dir), "--minutes", "0.5", "--max-depth", "2"]) == 0
    assert "measured on this machine" in capsys.readouterr().out
    assert main(["plan", "--scaling", str(sweep_dir), "--minutes", "1", "--flops", "1e10"]) == 2


def test_bad_sweeps_are_refused_before_training(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc = main(["scaling", "--config", str(_tiny_yaml(tmp_path / "a.yaml", budgets=[1e7, 1e9])), "--out", str(out)])
    assert rc == 2 and "model size(s) left" in capsys.readouterr().err
    rc = main(["scaling", "--config", str(_tiny_yaml(tmp_path / "b.yaml", sizes=["1x8", "1x16", "48x8192"],
                                                     budgets=[1e15, 2e15, 4e15])), "--out", str(out)])
    assert rc == 2 and "48x8192" in capsys.readouterr().err
    rc = main(["scaling", "--config", str(_tiny_yaml(tmp_path / "c.yaml", time_budget=0.001)), "--out", str(out)])
    assert rc == 2 and "over --time-budget" in capsys.readouterr().err
    assert not list((out / "points").glob("*/base"))  # nothing trained
