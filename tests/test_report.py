"""report.md and the plots render from JSON fixtures (metrics.jsonl, eval/*.json), never from scraped text."""

from __future__ import annotations

import json
from pathlib import Path

from scalelab.common import append_jsonl, write_json
from scalelab.report import load_metrics, render_report, score_table
from scalelab.runs import RunDir


def _fixture(root: Path) -> RunDir:
    run = RunDir(root)
    for step in range(0, 50, 10):
        append_jsonl(run.metrics_jsonl, {"stage": "base", "step": step, "loss": 8.0 - step / 10, "lr": 1e-3,
                                         "tokens_per_s": 1000 + step})
    append_jsonl(run.metrics_jsonl, {"stage": "base", "step": 40, "val_loss": 4.5, "val_bpb": 1.9})
    append_jsonl(run.metrics_jsonl, {"stage": "base", "step": 40, "loss": 3.25})  # a resumed run logs step 40 again
    for step in range(0, 20, 5):
        append_jsonl(run.metrics_jsonl, {"stage": "chat", "step": step, "loss": 2.0 - step / 20})
    write_json(run.eval_json("base"), {
        "stage": "base", "params": 123456, "model_config": {"n_layer": 2, "n_embd": 64},
        "tasks": {"arithmetic": {"score": 0.125, "n": 8}, "spelling": {"score": 0.0, "n": 8}},
        "mean_score": 0.0625,
        "multiple_choice": {"arc_easy": {"accuracy": 0.25, "accuracy_norm": 0.3, "chance": 0.25, "n": 20}}})
    write_json(run.eval_json("chat"), {
        "stage": "chat", "tasks": {"arithmetic": {"score": 0.625, "n": 8, "samples": [
            {"prompt": "What is 2 plus 2?", "completion": "4", "reference": "4", "score": 1.0}]},
            "spelling": {"score": 0.375, "n": 8}}, "mean_score": 0.5})
    write_json(run.config_json, {"tokenizer": {}, "base": {}, "sft": {}, "sft_data": {"train": {
        "conversations": 1000, "rows": 250, "fill": 0.97, "target_tokens": 12345, "truncated": 3, "dropped": 1}}})
    return run


def test_report_renders_from_json_fixtures(tmp_path: Path) -> None:
    run = _fixture(tmp_path / "run")
    path = render_report(run.root)
    text = path.read_text()
    assert path == run.report_md
    for png in ("loss.png", "eval.png", "multiple_choice.png"):
        data = (run.root / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, png
        assert f"]({png})" in text
    # the per-task table carries the numbers of both stages from the JSON, row by row
    row = next(line for line in text.splitlines() if line.startswith("| arithmetic"))
    assert row.split("|")[2].strip() == "0.125" and row.split("|")[3].strip() == "0.625"
    assert "| **mean** | 0.062 | 0.500 |" in text.replace("0.0625", "0.062")
    assert "123,456" in text and "What is 2 plus 2?" in text
    assert "1,000 conversations packed into 250 rows (97% filled, 12,345 target tokens); 3 truncated" in text
    # training table: resumed step 40 keeps its last value; val loss from the separate record
    base_row = next(line for line in text.splitlines() if line.startswith("| base |"))
    cells = [c.strip() for c in base_row.split("|")[1:-1]]
    assert cells[:6] == ["base", "40", "8.000", "3.250", "4.500", "1.900"]


def test_metrics_loader_ignores_non_numeric_and_sorts(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.metrics_jsonl.write_text("\n".join(json.dumps(r) for r in [
        {"stage": "chat", "step": 5, "loss": 1.0, "note": "x"}, {"stage": "chat", "step": 1, "loss": 2.0},
        {"no_step": 1}, {"stage": "chat", "step": 3, "loss": float("nan")}]) + "\n")
    m = load_metrics(run)
    assert m == {"chat": {"loss": [(1, 2.0), (5, 1.0)]}}


def test_empty_run_still_writes_a_report(tmp_path: Path) -> None:
    path = render_report(tmp_path)
    assert "Nothing to report yet" in path.read_text()
    assert score_table({}) == []


def test_eval_plot_names_only_the_stages_it_shows_and_marks_zero_scores(tmp_path: Path, monkeypatch) -> None:
    import matplotlib.figure

    from scalelab.common import write_json
    from scalelab.report import render_report
    from scalelab.runs import RunDir

    run = RunDir(tmp_path)
    write_json(run.eval_json("chat"), {"stage": "chat", "tasks": {"arithmetic": {"score": 0.0},
                                                                 "email": {"score": 0.5}}})
    figures = []
    real = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, path, **kw: (figures.append((Path(path).name, fig)), real(fig, path, **kw)))
    render_report(tmp_path)
    fig = dict(figures)["eval.png"]
    ax = fig.axes[0]
    assert ax.get_title() == "task score: chat (template)"  # no "base vs" when only chat was evaluated
    assert sorted(t.get_text() for t in ax.texts) == ["0.00", "0.50"]  # the zero score is visible
