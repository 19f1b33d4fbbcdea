"""The tabular suite: power-law fits and crossovers, the numeric encoding, model registry and extras, pretrained
loading on a stand-in, tick labels, lazy exports, `scalelab tabular-bench` end to end (resume, budget, bad input)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scalelab.__main__ import main
from scalelab.tabular import baselines
from scalelab.tabular.embeddings import PiecewiseLinearEncoder
from scalelab.tabular.fits import bootstrap_crossover, crossover_from_fits, fit_power_law


def _cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err.strip()


def test_power_law_fit_recovers_floor_and_crossover() -> None:
    n = np.array([50, 150, 500, 1500, 5000, 20000], dtype=float)
    fit = fit_power_law(n, 0.1 + 2.0 * n**-0.5)
    assert fit.floor == pytest.approx(0.1, abs=1e-6) and fit.exponent == pytest.approx(0.5, abs=1e-4)
    a, b = fit_power_law(n, 0.1 + 3 * n**-0.5), fit_power_law(n, 0.15 + 1 * n**-0.5)
    assert crossover_from_fits(a, b, 50, 20000) == pytest.approx(1600, rel=0.01)  # 2 / sqrt(n) = 0.05
    assert crossover_from_fits(b, a, 50, 20000) is None  # b is better at small n, not at large n
    # noisy seeds: the interval is around the true crossover and narrower than a factor of two either way
    rng = np.random.default_rng(0)
    ea = (0.1 + 3 * n**-0.5)[:, None] + rng.normal(0, 0.004, (6, 3))
    eb = (0.15 + 1 * n**-0.5)[:, None] + rng.normal(0, 0.004, (6, 3))
    c = bootstrap_crossover(n, ea, eb, n_boot=60)
    assert c["found"] > 0.9 and 800 < c["low"] <= c["n"] <= c["high"] < 3200


def test_piecewise_linear_encoding() -> None:
    x = np.column_stack([np.arange(101, dtype=float), np.tile([0.0, 1.0], 51)[:101]])
    enc = PiecewiseLinearEncoder(n_bins=4).fit(x)
    assert enc.n_features_out_ == 4 + 1  # four quantile bins, and the 0/1 column passes through
    z = enc.transform(np.array([[0.0, 1.0], [37.5, 0.0], [100.0, 1.0], [150.0, 0.0], [-25.0, 1.0]]))
    assert z[0, :4].tolist() == [0, 0, 0, 0] and z[2, :4].tolist() == [1, 1, 1, 1]
    assert z[1, :4].tolist() == pytest.approx([1, 0.5, 0, 0])  # edges 0, 25, 50, 75, 100
    assert z[3, 3] == pytest.approx(3.0) and z[4, 0] == pytest.approx(-1.0)  # outside the range: not clipped
    assert z[:, 4].tolist() == [1, 0, 1, 0, 1]


def test_the_model_tables_agree() -> None:
    """A new baseline is a MODELS entry plus its FAMILY (tabular-bench groups by it); the other tables name only
    known models."""
    assert set(baselines.FAMILY) == set(baselines.MODELS)
    named = {*baselines.EXTRAS, *baselines.PRETRAINED, *baselines.LINEAR, *sum(baselines.DEFAULT_MODELS.values(), [])}
    assert named <= set(baselines.MODELS)
    assert all(task in baselines.MODELS[m] for task, ms in baselines.DEFAULT_MODELS.items() for m in ms)


def test_hgb_in_default_set_and_missing_extra_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    assert "hgb" in baselines.DEFAULT_MODELS["classification"] and "hgb" in baselines.DEFAULT_MODELS["regression"]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lightgbm" else real(name, *a))
    rc, err = _cli(capsys, "curves", "--dataset", "teacher", "--n-samples", "300", "--models", "lightgbm",
                   "--out", str(tmp_path))
    assert rc == 2 and len(err.splitlines()) == 1 and "[trees]" in err and "lightgbm" in err
    rc, err = _cli(capsys, "tabular-bench", "--datasets", "teacher", "--models", "lightgbm", "--out", str(tmp_path))
    assert rc == 2 and "[trees]" in err
    if importlib.util.find_spec("tabicl") is None:
        rc, err = _cli(capsys, "curves", "--dataset", "teacher", "--models", "tabicl", "--out", str(tmp_path))
        assert rc == 2 and "[pfn]" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(importlib.util.find_spec("lightgbm") is None or importlib.util.find_spec("xgboost") is None
                    or importlib.util.find_spec("catboost") is None, reason="the [trees] extra is not installed")
def test_tree_extras_fit_through_the_pipeline() -> None:
    from scalelab.tabular.datasets import load_dataset

    ds = load_dataset("teacher", n_samples=400, n_features=3)
    for name in ("lightgbm", "xgboost", "catboost"):
        pipe = baselines.make_model(name, ds, random_state=0, n_estimators=20) if name != "catboost" else \
            baselines.make_model(name, ds, random_state=0, iterations=20)
        assert pipe.fit(ds.X, ds.y).score(ds.X, ds.y) > 0.5, name


STAND_IN = '''
"""A stand-in for the tabpfn package: records how it was built, predicts the nearest class centroid."""
import numpy as np
BUILT = []

class TabPFNClassifier:
    def __init__(self, model_path, device="cpu", random_state=None, **kw):
        BUILT.append({"model_path": model_path, "device": device, **kw})
        with open(model_path, "rb") as fh:  # a real backend reads its weights here
            assert fh.read() == b"weights"

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.centroids_ = np.stack([X[y == c].mean(0) for c in self.classes_])
        return self

    def predict_proba(self, X):
        d = ((X[:, None, :] - self.centroids_[None]) ** 2).sum(-1)
        p = np.exp(-(d - d.min(1, keepdims=True)))
        return p / p.sum(1, keepdims=True)

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(1)]
'''


def test_pretrained_model_loads_local_weights_on_a_stand_in(tmp_path: Path, capsys, monkeypatch) -> None:
    pkg = tmp_path / "pkgs"
    pkg.mkdir()
    (pkg / "tabpfn.py").write_text(STAND_IN)
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.delitem(sys.modules, "tabpfn", raising=False)
    weights = tmp_path / "tabpfn-v2-classifier.ckpt"
    out = tmp_path / "out"
    rc, err = _cli(capsys, "curves", "--dataset", "breast_cancer", "--models", "tabpfn", "logreg", "--sizes", "40",
                   "80", "--seeds", "0", "--out", str(out))
    assert rc == 2 and "--weights tabpfn=" in err  # no weights given: refused, nothing fetched
    rc, err = _cli(capsys, "curves", "--dataset", "breast_cancer", "--models", "tabpfn", "--weights",
                   f"tabpfn={weights}", "--sizes", "40", "--seeds", "0", "--out", str(out))
    assert rc == 2 and "not found" in err and str(weights) in err
    weights.write_bytes(b"weights")
    assert main(["curves", "--dataset", "breast_cancer", "--models", "tabpfn", "logreg", "--weights",
                 f"tabpfn={weights}", "--sizes", "40", "80", "--seeds", "0", "--out", str(out)]) == 0
    import tabpfn

    assert tabpfn.BUILT and all(b["model_path"] == str(weights) for b in tabpfn.BUILT)
    result = json.loads((out / "curves.json").read_text())
    assert result["models"]["tabpfn"]["mean"][-1] > 0.8  # centroids on breast cancer, through the same pipeline


def test_size_axis_labels_are_plain_numbers() -> None:
    import matplotlib.pyplot as plt

    from scalelab.tabular.plots import format_size_axis

    fig, ax = plt.subplots()
    ax.plot([30, 40, 50, 60], [0.5, 0.6, 0.7, 0.8])
    format_size_axis(ax, [30, 40, 50, 60])
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() + ax.get_xticklabels(minor=True) if t.get_text()]
    plt.close(fig)
    assert labels == ["30", "40", "50", "60"], labels
    fig, ax = plt.subplots()
    ax.plot([10, 100000], [0, 1])
    format_size_axis(ax, list(np.geomspace(10, 100000, 12)))  # many sizes: decades, still plain
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    plt.close(fig)
    assert "1,000" in labels and not any("10^" in t or "times" in t for t in labels), labels


def test_public_names_without_eager_torch() -> None:
    code = ("import sys, scalelab.tabular as t; assert 'torch' not in sys.modules; "
            "from scalelab.tabular import MLPClassifier, make_model, load_dataset; "
            "assert MLPClassifier.__module__ == 'scalelab.tabular.mlp'; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_bench_end_to_end_resume_budget_and_bad_input(tmp_path: Path, capsys) -> None:
    csv = tmp_path / "d.csv"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = ((x[:, 0] + 0.5 * x[:, 1] ** 2) > 0.3).astype(int)
    csv.write_text("a,b,c,y\n" + "".join(f"{p:.4f},{q:.4f},{r:.4f},{t}\n" for (p, q, r), t in zip(x, y)))
    out = tmp_path / "bench"
    argv = ["tabular-bench", "--datasets", f"{csv}:y", "teacher@160", "--n-samples", "400", "--n-features", "2",
            "--sizes", "40", "80", "160", "--max-train", "160", "--seeds", "0", "1", "--models", "mlp", "hgb",
            "logreg", "--n-boot", "20", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "bench.json").read_text())
    assert set(result["datasets"]) == {"d", "teacher"} and result["complete"]
    assert result["cells_fitted_now"] == 2 * 3 * 2 * 3
    teacher = result["datasets"]["teacher"]
    assert teacher["floor"] == pytest.approx(0.9) and set(teacher["families"]) == {"mlp", "trees", "linear"}
    assert len(teacher["crossovers"]) == 3 and all("interval" in c for c in teacher["crossovers"])
    assert set(result["normalised"]["families"]) == {"mlp", "trees", "linear"}
    assert (out / "bench.png").stat().st_size > 1000 and "Crossovers" in (out / "bench.md").read_text()
    # a rerun fits nothing; a lost cell is refitted alone
    assert main(argv) == 0 and json.loads((out / "bench.json").read_text())["cells_fitted_now"] == 0
    (out / "cells" / "teacher" / "hgb" / "n80_s1.json").unlink()
    assert main(argv) == 0 and json.loads((out / "bench.json").read_text())["cells_fitted_now"] == 1
    # a time budget that is spent at once: nothing new starts, and the report says what is left
    fresh = tmp_path / "fresh"
    assert main([*argv[:-1], str(fresh), "--time-budget", "1e-9"]) == 0
    partial = json.loads((fresh / "bench.json").read_text())
    assert not partial["complete"] and partial["cells_left"] == 36 and "Incomplete" in (fresh / "bench.md").read_text()
    # bad input: a size the set cannot supply, a one-class target, an unknown model: one line, exit 2
    capsys.readouterr()
    rc, err = _cli(capsys, *argv[:3], "--sizes", "40", "500", "--max-train", "0", "--out", str(tmp_path / "x"))
    assert rc == 2 and len(err.splitlines()) == 1 and "larger than" in err and "d.csv" in err
    one = tmp_path / "one.csv"
    one.write_text("a,y\n" + "".join(f"{i},1\n" for i in range(50)))
    rc, err = _cli(capsys, "tabular-bench", "--datasets", f"{one}:y", "--sizes", "20", "--out", str(tmp_path / "x"))
    assert rc == 2 and len(err.splitlines()) == 1 and "single class" in err and "one.csv" in err
    rc, err = _cli(capsys, *argv[:3], "--models", "nope", "--out", str(tmp_path / "x"))
    assert rc == 2 and "unknown model 'nope'" in err
