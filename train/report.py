"""The evaluation report of a run: Markdown, JSON and PNG plots.

Written into ``DIR/train/report/``:

- ``report.json``: the latest evaluation and every earlier one (``history``),
- ``report.md``: the same as tables, with the plots inline,
- ``loss.png``: training (and validation) loss over steps, read from the CSV
  metrics Lightning wrote under ``DIR/train/logs``,
- ``accuracy.png``: zero-shot top-1 and top-5 over steps,
- ``ranks.png``: the latest accuracy at each taxon rank.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Series = dict[str, list[tuple[int, float]]]  # metric -> (step, value) by step


def load_history(folder: Path) -> list[dict[str, Any]]:
    """The evaluations recorded in ``folder/report.json`` (none if absent)."""
    path = folder / "report.json"
    if not path.exists():
        return []
    return list(json.loads(path.read_text()).get("history") or [])


def read_metrics(log_dir: Path) -> Series:
    """Every metric of the CSV logs under ``log_dir``, one value per step.

    Each run of a resumed training writes its own ``version_N/metrics.csv``;
    they are read in version order and a later value of a step wins.
    """
    merged: dict[str, dict[int, float]] = {}
    files = sorted(log_dir.glob("**/metrics.csv"), key=_version_number)
    for path in files:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                step = row.get("step")
                if not step:
                    continue
                for name, value in row.items():
                    if name not in ("step", "epoch") and value not in ("", None):
                        merged.setdefault(name, {})[int(float(step))] = float(value)
    return {name: sorted(values.items()) for name, values in merged.items()}


def _version_number(path: Path) -> tuple[int, str]:
    match = re.search(r"version_(\d+)", str(path))
    return (int(match.group(1)) if match else -1, str(path))


def write_report(
    result: dict[str, Any],
    history: Sequence[dict[str, Any]],
    log_dir: Path,
    out_dir: Path,
) -> list[Path]:
    """Write the report files; return their paths, the Markdown first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report_json = out_dir / "report.json"
    report_json.write_text(
        json.dumps({"latest": result, "history": list(history)}, indent=2) + "\n"
    )
    plots = write_plots(result, history, read_metrics(log_dir), out_dir)
    markdown = out_dir / "report.md"
    markdown.write_text(render_markdown(result, history, plots))
    return [markdown, report_json, *plots]


def write_plots(
    result: dict[str, Any],
    history: Sequence[dict[str, Any]],
    metrics: Series,
    out_dir: Path,
) -> list[Path]:
    """loss.png, accuracy.png and ranks.png, each only when it has data."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    paths: list[Path] = []
    losses = {k: v for k, v in metrics.items() if k.endswith("loss") and v}
    if losses:
        paths.append(_line_plot(plt, losses, "loss", out_dir / "loss.png"))
    scored = [h for h in history if h.get("step") is not None]
    if scored:
        series = {
            name: [(int(h["step"]), float(h[name])) for h in scored]
            for name in ("top1", "top5")
        }
        paths.append(
            _line_plot(plt, series, "zero-shot accuracy", out_dir / "accuracy.png")
        )
    if result.get("ranks"):
        paths.append(_rank_plot(plt, result["ranks"], out_dir / "ranks.png"))
    return paths


def _line_plot(plt: Any, series: Series, ylabel: str, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(6, 3.5))
    for name, points in series.items():
        steps, values = zip(*points, strict=True)
        axes.plot(steps, values, marker="o" if len(points) < 30 else None, label=name)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _rank_plot(plt: Any, ranks: Sequence[dict[str, Any]], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(6, 3.5))
    names = [r["rank"] for r in ranks]
    axes.bar(names, [r["accuracy"] for r in ranks])
    axes.set_ylim(0, 1)
    axes.set_ylabel("accuracy")
    axes.set_title("zero-shot accuracy by rank (root to leaf)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def render_markdown(
    result: dict[str, Any], history: Sequence[dict[str, Any]], plots: Sequence[Path]
) -> str:
    """The report as Markdown."""
    lines = [
        "# Evaluation report",
        "",
        f"Model at step {result.get('step')}; zero-shot on {result.get('source')}: "
        f"{result['images']} images, {result['classes']} classes.",
        "",
        "| metric | value |",
        "|---|--:|",
        f"| top-1 | {result['top1']:.4f} |",
        f"| top-5 | {result['top5']:.4f} |",
        "",
    ]
    lines += _rank_lines(result.get("ranks") or [])
    lines += _sibling_lines(result.get("siblings") or {})
    lines += _retrieval_lines(result.get("retrieval") or {})
    lines += _history_lines(history)
    lines += [f"![{path.stem}]({path.name})" for path in plots]
    return "\n".join(lines) + "\n"


def _rank_lines(ranks: Sequence[dict[str, Any]]) -> list[str]:
    if not ranks:
        return []
    lines = [
        "## Accuracy by rank",
        "",
        "An image is correct at a rank when the predicted class lies under the "
        "true class's ancestor of that rank.",
        "",
        "| rank | accuracy | correct | images |",
        "|---|--:|--:|--:|",
    ]
    lines += [
        f"| {r['rank']} | {r['accuracy']:.4f} | {r['correct']} | {r['total']} |"
        for r in ranks
    ]
    return [*lines, ""]


def _sibling_lines(siblings: dict[str, Any]) -> list[str]:
    if not siblings:
        return []
    return [
        "## Confusion between siblings",
        "",
        f"{siblings['sibling_errors']} of {siblings['errors']} errors "
        f"({siblings['share']:.1%}) predict a sibling: a class with the same parent.",
        "",
    ]


def _retrieval_lines(retrieval: dict[str, Any]) -> list[str]:
    if not retrieval.get("pairs"):
        return []
    ks = sorted({int(name.rsplit("@", 1)[1]) for name in retrieval if "@" in name})
    header = " | ".join(f"R@{k}" for k in ks)
    lines = [
        f"## Retrieval ({retrieval['pairs']} image-caption pairs)",
        "",
        f"| direction | {header} |",
        "|---|" + "--:|" * len(ks),
    ]
    for direction in ("image_to_text", "text_to_image"):
        values = " | ".join(f"{retrieval[f'{direction}_R@{k}']:.4f}" for k in ks)
        lines.append(f"| {direction.replace('_', ' ')} | {values} |")
    return [*lines, ""]


def _history_lines(history: Sequence[dict[str, Any]]) -> list[str]:
    scored = [h for h in history if h.get("step") is not None]
    if len(scored) < 2:
        return []
    lines = ["## Over training", "", "| step | top-1 | top-5 |", "|--:|--:|--:|"]
    lines += [f"| {h['step']} | {h['top1']:.4f} | {h['top5']:.4f} |" for h in scored]
    return [*lines, ""]
