"""What an evaluation leaves behind for people: tables (CSV, Markdown, JSON), a summary chart, and one
comparison sheet per image. Every file is written atomically (temp file + rename)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..kit.atomic import atomic_path

# how each metric is printed in Markdown, and which direction is better (for the chart's titles)
DECIMALS = {"psnr_y": 2, "psnr_rgb": 2, "ssim_y": 4, "ssim_rgb": 4, "lr_consistency_l1": 4,
            "spectral_angle_deg": 3, "hallucination_pct": 1, "omission_pct": 1, "improvement_pct": 1,
            "lpips": 4, "dists": 4, "clip_iqa": 4}
HIGHER_IS_BETTER = {"psnr_y", "psnr_rgb", "ssim_y", "ssim_rgb", "improvement_pct", "clip_iqa", "std_error_spearman"}
DESCRIPTIVE = {"error_most_uncertain", "error_least_uncertain"}  # neither direction is "better": compare the two


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` (UTF-8) so that `path` is either absent or complete."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def json_safe(value):
    """inf/NaN (not JSON) become None; containers are converted recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def mean_of(values: Sequence[float | None]) -> float | None:
    """The mean of the values present (None = metric not computed); inf if any is inf; None if none."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def summarise(rows: list[dict], metrics: Sequence[str], by_class: bool) -> list[dict]:
    """Mean of every metric per method (and per class when `by_class`), with the image count `n`."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["class"], row["method"]) if by_class else (row["method"],)
        groups.setdefault(key, []).append(row)
    out = []
    for key, members in groups.items():
        entry = {"class": key[0], "method": key[1]} if by_class else {"method": key[0]}
        entry["n"] = len(members)
        entry.update({m: mean_of([r.get(m) for r in members]) for m in metrics})
        out.append(entry)
    return out


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "inf" if value == math.inf else repr(value)
    return str(value)


def csv_text(rows: list[dict], columns: Sequence[str]) -> str:
    """Rows as CSV with exactly `columns` (missing metrics are empty cells; inf is written `inf`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def markdown_table(rows: list[dict], columns: Sequence[str]) -> str:
    """A Markdown table, metrics rounded by DECIMALS (empty = not computed)."""
    def shown(column: str, value) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return "inf" if value == math.inf else f"{value:.{DECIMALS.get(column, 4)}f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(shown(c, row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_tables(output_dir: Path, rows: list[dict], metrics: Sequence[str], provenance: dict) -> dict[str, Path]:
    """per_image.csv, summary_by_class.{csv}, summary_overall.{csv}, summary.md and summary.json."""
    per_class = summarise(rows, metrics, by_class=True)
    overall = summarise(rows, metrics, by_class=False)
    files = {
        "per_image_csv": write_text_atomic(output_dir / "per_image.csv",
                                           csv_text(rows, ["image", "class", "method", *metrics])),
        "by_class_csv": write_text_atomic(output_dir / "summary_by_class.csv",
                                          csv_text(per_class, ["class", "method", "n", *metrics])),
        "overall_csv": write_text_atomic(output_dir / "summary_overall.csv",
                                         csv_text(overall, ["method", "n", *metrics])),
    }
    markdown = ["# rsvl eval summary", "", f"Command: `{provenance['command']}`", "",
                f"Protocol: {provenance['protocol']['degradation']}; {provenance['protocol']['conventions']}", "",
                "## Overall (mean over images)", "", markdown_table(overall, ["method", "n", *metrics]),
                "## Per class", "", markdown_table(per_class, ["class", "method", "n", *metrics])]
    if provenance.get("deterministic_methods"):
        markdown += ["## Deterministic methods (uncertainty columns empty: no spread to rank errors by)", ""]
        markdown += [f"- {name}: {text}" for name, text in provenance["deterministic_methods"].items()] + [""]
    if provenance.get("skipped_metrics"):
        markdown += ["## Skipped metrics", ""] + [f"- {line}" for line in provenance["skipped_metrics"]] + [""]
    if provenance.get("failures"):
        markdown += ["## Failed images", ""] + [f"- {f['image']}: {f['message']}" for f in provenance["failures"]]
        markdown.append("")
    files["summary_md"] = write_text_atomic(output_dir / "summary.md", "\n".join(markdown))
    document = {**provenance, "metrics": list(metrics), "overall": overall, "by_class": per_class}
    files["summary_json"] = write_text_atomic(output_dir / "summary.json",
                                              json.dumps(json_safe(document), indent=2, ensure_ascii=False) + "\n")
    return files


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure, path: Path) -> Path:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return path


def write_summary_chart(path: Path, rows: list[dict], metrics: Sequence[str], methods: Sequence[str]) -> Path:
    """One panel per metric: a bar per method, grouped by class (mean over the class's images)."""
    plt = _pyplot()
    per_class = summarise(rows, metrics, by_class=True)
    classes = sorted({r["class"] for r in per_class})
    shown = [m for m in metrics if any(r.get(m) is not None and math.isfinite(r[m]) for r in per_class)]
    columns = min(3, max(1, len(shown)))
    lines = max(1, math.ceil(len(shown) / columns))
    figure, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.2 * lines), squeeze=False)
    width = 0.8 / max(1, len(methods))
    for panel, metric in zip(axes.flat, shown, strict=False):
        for index, method in enumerate(methods):
            values = []
            for name in classes:
                match = [r.get(metric) for r in per_class if r["class"] == name and r["method"] == method]
                value = match[0] if match else None
                values.append(value if value is not None and math.isfinite(value) else np.nan)
            panel.bar(np.arange(len(classes)) + (index - (len(methods) - 1) / 2) * width, values, width,
                      label=method)
        panel.set_xticks(np.arange(len(classes)), classes, fontsize=8)
        verdict = "levels" if metric in DESCRIPTIVE else \
            f"{'higher' if metric in HIGHER_IS_BETTER else 'lower'} is better"
        panel.set_title(f"{metric} ({verdict})", fontsize=9)
    for panel in list(axes.flat)[len(shown):]:
        panel.axis("off")
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    return _save_figure(figure, path)


def zoom_box(height: int, width: int) -> tuple[int, int, int, int]:
    """The comparison sheets' zoomed crop (top, left, height, width): the centre quarter of the HR grid."""
    box_h, box_w = max(1, height // 4), max(1, width // 4)
    return (height - box_h) // 2, (width - box_w) // 2, box_h, box_w


def write_comparison_sheet(path: Path, panels: list[tuple[str, torch.Tensor]], title: str) -> Path:
    """Panels (name, (1, 3, H, W) image on the HR grid; the LR shown with nearest-neighbour pixels) side by
    side, full view with the zoom box drawn above the same zoomed crop of each."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    height, width = panels[-1][1].shape[-2:]
    top, left, box_h, box_w = zoom_box(height, width)
    figure, axes = plt.subplots(2, len(panels), figsize=(2.6 * len(panels), 5.6), squeeze=False)
    for column, (name, image) in enumerate(panels):
        array = image[0].permute(1, 2, 0).clamp(0, 1).numpy()
        axes[0, column].imshow(array, interpolation="nearest")
        axes[0, column].add_patch(Rectangle((left - 0.5, top - 0.5), box_w, box_h, fill=False, edgecolor="red"))
        axes[0, column].set_title(name, fontsize=9)
        axes[1, column].imshow(array[top:top + box_h, left:left + box_w], interpolation="nearest")
        for row in (0, 1):
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return _save_figure(figure, path)
