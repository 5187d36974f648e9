"""The report of a run, generated from its result store only (``robustssl report runs/<name>``).

``write_report(run_dir)`` writes into ``run_dir`` (or ``out``):

- ``report.html``: one self-contained page (styles inline, plots inlined as base64 PNG, no scripts, no
  external resources) with the summary tables and the plots;
- ``summary.md``: the summary tables in markdown;
- ``plots/*.png``: every plot as a file (matplotlib's Agg canvas, no pyplot state touched).

Plots: clean vs robust per task (each threat family at its largest radius, the mean over corruptions, shift
sets); robust metric vs eps per task; corruption error vs severity, one panel per corruption and one figure
per task (error = 1 - top1, 1 - mIoU, or RMSE); an encoder x threat heatmap of relative degradation of each
task's headline metric; embedding drift (cosine to the clean embedding) vs eps, and vs corruption severity.

Relative degradation is ``(clean - value) / clean`` for metrics where higher is better and
``(value - clean) / clean`` otherwise: 0 = unaffected, larger = worse.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustssl.bench.scores import HEADLINE
from robustssl.bench.store import Store

ATTACK_KINDS = ("attack", "embedding", "transfer")
TASK_ORDER = ("classification", "segmentation", "depth")


@dataclass
class Group:
    """The threats of one spec entry: an attack with its radii, all corruptions, or one shift set."""

    kind: str
    name: str
    labels: list[str] = field(default_factory=list)


@dataclass
class ReportData:
    """A run's rows and descriptions, indexed for the tables and plots."""

    run: str
    meta: dict[str, str]
    values: dict[tuple[str, str, str, str], dict[str, Any]]
    threats: dict[str, dict[str, Any]]
    tasks: dict[str, dict[str, Any]]
    encoders: list[str]
    heads: list[dict[str, Any]]

    @classmethod
    def load(cls, store: Store) -> ReportData:
        rows = store.rows()
        values = {(r["encoder"], r["task"], r["threat"], r["metric"]): r for r in rows}
        present = {r["threat"] for r in rows}
        threats = {t["threat"]: t for t in store.table("threats") if t["threat"] in present}
        tasks = {t["task"]: t for t in store.table("tasks") if any(r["task"] == t["task"] for r in rows)}
        encoders = [
            e["encoder"] for e in store.table("encoders") if any(r["encoder"] == e["encoder"] for r in rows)
        ]
        meta = store.meta()
        return cls(
            meta.get("run", store.path.parent.name),
            meta,
            values,
            threats,
            tasks,
            encoders,
            store.table("heads"),
        )

    def value(self, encoder: str, task: str, threat: str, metric: str) -> float:
        row = self.values.get((encoder, task, threat, metric))
        return float("nan") if row is None else float(row["value"])

    def task_labels(self) -> list[str]:
        """Downstream tasks (classification, segmentation, depth order), then nothing else."""
        labels = [t for t in self.tasks if self.tasks[t]["kind"] in TASK_ORDER]
        return sorted(
            labels, key=lambda t: (TASK_ORDER.index(self.tasks[t]["kind"]), list(self.tasks).index(t))
        )

    def headline(self, task: str) -> tuple[str, bool]:
        return HEADLINE[self.tasks[task]["kind"]]

    def groups(self, task: str | None = None) -> list[Group]:
        """Threat groups in spec order (restricted to those with rows for ``task`` when given)."""
        groups: dict[tuple[str, str], Group] = {}
        for label, t in self.threats.items():
            if task is not None and not any(k[1] == task and k[2] == label for k in self.values):
                continue
            if t["kind"] == "clean":
                continue
            name = (
                "corruptions"
                if t["kind"] == "corruptions"
                else json.loads(t["entry"] or "{}").get("name", label)
            )
            groups.setdefault((t["kind"], name), Group(t["kind"], name)).labels.append(label)
        for g in groups.values():
            if g.kind in ATTACK_KINDS:
                g.labels.sort(key=lambda lab: self.threats[lab]["eps"])
        return list(groups.values())

    def degradation(self, encoder: str, task: str, threat: str) -> float:
        """Relative degradation of ``task``'s headline metric under ``threat`` (see the module docstring)."""
        metric, higher = self.headline(task)
        clean, value = self.value(encoder, task, "clean", metric), self.value(encoder, task, threat, metric)
        if not clean or math.isnan(clean) or math.isnan(value):
            return float("nan")
        return (clean - value) / abs(clean) if higher else (value - clean) / abs(clean)

    def corruption_error(self, encoder: str, task: str, threat: str) -> float:
        """Error under ``threat``: 1 - top1 / 1 - mIoU, RMSE for depth, 1 - cosine for the embedding."""
        kind = self.tasks[task]["kind"]
        metric, higher = HEADLINE[kind]
        v = self.value(encoder, task, threat, metric)
        return 1.0 - v if higher else v

    def corruption_table(self, group: Group) -> dict[str, dict[int, str]]:
        """``{corruption: {severity: label}}``."""
        out: dict[str, dict[int, str]] = {}
        for label in group.labels:
            t = self.threats[label]
            out.setdefault(t["corruption"], {})[int(t["severity"])] = label
        return out


def _eps_axis(eps: float, norm: str | None) -> float:
    return eps * 255 if norm == "linf" else eps


def _eps_label(norm: str | None) -> str:
    return "eps (x 1/255)" if norm == "linf" else f"eps ({norm})"


# --- plots --------------------------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> str:
    """Write ``fig`` as PNG to ``path`` and return its base64 text."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return base64.b64encode(data).decode("ascii")


def _representatives(d: ReportData, task: str) -> list[tuple[str, str]]:
    """``(column title, threat label or 'corruptions')`` for summaries: each attack group at its largest eps,
    the corruption mean, each shift set."""
    out = []
    for g in d.groups(task):
        if g.kind in ATTACK_KINDS:
            out.append(
                (f"{g.labels[-1]}" if g.kind != "embedding" else f"{g.labels[-1]} (emb.)", g.labels[-1])
            )
        elif g.kind == "corruptions":
            out.append(("corruptions (mean)", "corruptions"))
        else:
            out.append((g.labels[0], g.labels[0]))
    return out


def _summary_value(d: ReportData, encoder: str, task: str, label: str, metric: str) -> float:
    if label != "corruptions":
        return d.value(encoder, task, label, metric)
    group = next((g for g in d.groups(task) if g.kind == "corruptions"), None)
    values = [d.value(encoder, task, lab, metric) for lab in (group.labels if group else [])]
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def plot_clean_vs_robust(d: ReportData, out: Path) -> str | None:
    tasks = d.task_labels()
    if not tasks:
        return None
    fig = _figure(4.2 * len(tasks), 3.6)
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), i + 1)
        metric, _ = d.headline(task)
        columns = [("clean", "clean")] + _representatives(d, task)
        width = 0.8 / len(columns)
        for j, (title, label) in enumerate(columns):
            xs = [k + j * width for k in range(len(d.encoders))]
            ax.bar(xs, [_summary_value(d, e, task, label, metric) for e in d.encoders], width, label=title)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(d.encoders))], d.encoders, fontsize=8)
        ax.set_title(f"{task}: {metric}", fontsize=10)
        ax.legend(fontsize=6)
    fig.suptitle("clean vs robust", fontsize=11)
    return _save(fig, out)


def plot_metric_vs_eps(d: ReportData, out: Path) -> str | None:
    tasks = [t for t in d.task_labels() if any(g.kind in ATTACK_KINDS for g in d.groups(t))]
    if not tasks:
        return None
    fig = _figure(4.2 * len(tasks), 3.6)
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), i + 1)
        metric, _ = d.headline(task)
        norm = None
        for g in d.groups(task):
            if g.kind not in ATTACK_KINDS:
                continue
            norm = d.threats[g.labels[0]]["norm"]
            for enc in d.encoders:
                xs = [0.0] + [_eps_axis(d.threats[lab]["eps"], norm) for lab in g.labels]
                ys = [d.value(enc, task, "clean", metric)] + [
                    d.value(enc, task, lab, metric) for lab in g.labels
                ]
                ax.plot(xs, ys, marker="o", label=f"{enc} / {g.name}")
        ax.set_xlabel(_eps_label(norm), fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
        ax.set_title(f"{task}: {metric} vs eps", fontsize=10)
        ax.legend(fontsize=6)
    return _save(fig, out)


def plot_corruptions(d: ReportData, task: str, out: Path) -> str | None:
    group = next((g for g in d.groups(task) if g.kind == "corruptions"), None)
    if group is None:
        return None
    table = d.corruption_table(group)
    cols = min(5, len(table))
    rows = math.ceil(len(table) / cols)
    fig = _figure(3.0 * cols, 2.4 * rows)
    kind = d.tasks[task]["kind"]
    ylabel = {
        "classification": "error (1 - top1)",
        "segmentation": "1 - mIoU",
        "depth": "RMSE (m)",
        "embedding": "1 - cosine",
    }[kind]
    for i, (corruption, by_severity) in enumerate(table.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        severities = sorted(by_severity)
        for enc in d.encoders:
            clean = d.corruption_error(enc, task, "clean") if kind != "embedding" else 0.0
            ys = [clean] + [d.corruption_error(enc, task, by_severity[s]) for s in severities]
            ax.plot([0, *severities], ys, marker="o", label=enc)
        ax.set_title(corruption, fontsize=9)
        ax.set_xticks([0, *severities])
        ax.tick_params(labelsize=7)
        if i % cols == 0:
            ax.set_ylabel(ylabel, fontsize=8)
        if i == 0:
            ax.legend(fontsize=6)
    fig.suptitle(f"{task}: corruption error vs severity (0 = clean)", fontsize=11)
    fig.tight_layout()
    return _save(fig, out)


def _heatmap_columns(d: ReportData, task: str) -> list[tuple[str, list[str]]]:
    """``(column title, threat labels averaged)``: every attack variant, each corruption (mean over its
    severities), each shift set."""
    cols = []
    for g in d.groups(task):
        if g.kind in ATTACK_KINDS:
            cols += [(lab, [lab]) for lab in g.labels]
        elif g.kind == "corruptions":
            cols += [(name, list(by.values())) for name, by in d.corruption_table(g).items()]
        else:
            cols.append((g.labels[0], g.labels))
    return cols


def plot_heatmap(d: ReportData, out: Path) -> str | None:
    tasks = [t for t in d.task_labels() if _heatmap_columns(d, t)]
    if not tasks:
        return None
    widest = max(len(_heatmap_columns(d, t)) for t in tasks)
    fig = _figure(max(6.0, 0.45 * widest + 2.5), (0.45 * len(d.encoders) + 1.6) * len(tasks))
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(len(tasks), 1, i + 1)
        cols = _heatmap_columns(d, task)
        grid = []
        for enc in d.encoders:
            row = []
            for _, labels in cols:
                vals = [d.degradation(enc, task, lab) for lab in labels]
                vals = [v for v in vals if not math.isnan(v)]
                row.append(sum(vals) / len(vals) if vals else float("nan"))
            grid.append(row)
        # improvements (negative degradation) share the colour of 0; the numbers in the cells keep their sign
        image = ax.imshow(grid, aspect="auto", cmap="magma_r", vmin=0.0)
        if len(cols) <= 40:
            top = max((v for row in grid for v in row if not math.isnan(v)), default=0.0)
            for r, row in enumerate(grid):
                for c, v in enumerate(row):
                    if not math.isnan(v):
                        colour = "white" if v > 0.6 * top else "black"
                        ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color=colour)
        ax.set_yticks(range(len(d.encoders)), d.encoders, fontsize=8)
        ax.set_xticks(range(len(cols)), [c[0] for c in cols], rotation=70, ha="right", fontsize=7)
        ax.set_title(f"{task}: relative degradation of {d.headline(task)[0]}", fontsize=10)
        fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    return _save(fig, out)


def plot_embedding_drift(d: ReportData, out: Path) -> str | None:
    if "embedding" not in d.tasks:
        return None
    groups = d.groups("embedding")
    attacks = [g for g in groups if g.kind == "embedding"]
    corruption = next((g for g in groups if g.kind == "corruptions"), None)
    panels = int(bool(attacks)) + int(corruption is not None)
    if panels == 0:
        return None
    fig = _figure(4.5 * panels, 3.6)
    position = 1
    if attacks:
        ax = fig.add_subplot(1, panels, position)
        position += 1
        norm = None
        for g in attacks:
            norm = d.threats[g.labels[0]]["norm"]
            for enc in d.encoders:
                xs = [0.0] + [_eps_axis(d.threats[lab]["eps"], norm) for lab in g.labels]
                ys = [1.0] + [d.value(enc, "embedding", lab, "cosine_to_clean") for lab in g.labels]
                ax.plot(xs, ys, marker="o", label=f"{enc} / {g.name}")
        ax.set_xlabel(_eps_label(norm), fontsize=8)
        ax.set_ylabel("cosine to clean embedding", fontsize=8)
        ax.set_title("embedding drift under attack", fontsize=10)
        ax.legend(fontsize=6)
    if corruption is not None:
        ax = fig.add_subplot(1, panels, position)
        table = d.corruption_table(corruption)
        severities = sorted({s for by in table.values() for s in by})
        for enc in d.encoders:
            ys = [1.0]
            for s in severities:
                vals = [
                    d.value(enc, "embedding", by[s], "cosine_to_clean") for by in table.values() if s in by
                ]
                ys.append(sum(vals) / len(vals))
            ax.plot([0, *severities], ys, marker="o", label=enc)
        ax.set_xlabel("corruption severity (mean over corruptions)", fontsize=8)
        ax.set_title("embedding drift under corruptions", fontsize=10)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, out)


# --- tables -------------------------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.4f}"


def summary_tables(d: ReportData) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per task: ``(title, header, rows)``: encoders x (clean, each threat family, corruption mean, shift)."""
    out = []
    for task in d.task_labels():
        metric, higher = d.headline(task)
        columns = [("clean", "clean")] + _representatives(d, task)
        header = ["encoder"] + [title for title, _ in columns]
        rows = [
            [enc] + [_fmt(_summary_value(d, enc, task, label, metric)) for _, label in columns]
            for enc in d.encoders
        ]
        ns = sorted({r["n"] for k, r in d.values.items() if k[1] == task})
        title = (
            f"{task} ({d.tasks[task]['data']}, {d.tasks[task]['protocol']}): {metric} "
            f"({'higher' if higher else 'lower'} is better), n = {' / '.join(map(str, ns))}"
        )
        out.append((title, header, rows))
    if "embedding" in d.tasks:
        columns = [(title, label) for title, label in _representatives(d, "embedding")]
        header = ["encoder"] + [title for title, _ in columns]
        rows = [
            [enc]
            + [_fmt(_summary_value(d, enc, "embedding", label, "cosine_to_clean")) for _, label in columns]
            for enc in d.encoders
        ]
        out.append(("embedding drift: cosine to the clean embedding (1 = unchanged)", header, rows))
    return out


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_summary(d: ReportData) -> str:
    parts = [f"# robustssl benchmark: {d.run}", ""]
    if d.meta.get("description"):
        parts += [d.meta["description"], ""]
    parts.append(
        f"spec digest {d.meta.get('spec_digest', '?')}, robustssl {d.meta.get('version', '?')}; "
        f"{len(d.values)} result rows."
    )
    for title, header, rows in summary_tables(d):
        parts += ["", f"## {title}", "", _markdown_table(header, rows)]
    parts.append("")
    return "\n".join(parts)


_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
"""


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html``, ``summary.md`` and ``plots/*.png`` for the run in ``run_dir`` (into ``out``,
    default ``run_dir``); returns the HTML path."""
    run_dir = Path(run_dir).expanduser()
    with Store.open(run_dir if run_dir.is_dir() else run_dir) as store:
        d = ReportData.load(store)
    if not d.values:
        raise ValueError(f"the store of {run_dir} holds no results yet; run or resume the benchmark first")
    folder = Path(out).expanduser() if out is not None else (run_dir if run_dir.is_dir() else run_dir.parent)
    plots = folder / "plots"
    figures: list[tuple[str, str, str]] = []

    def add(name: str, title: str, encoded: str | None) -> None:
        if encoded is not None:
            figures.append((name, title, encoded))

    add(
        "clean_vs_robust", "Clean vs robust, per task", plot_clean_vs_robust(d, plots / "clean_vs_robust.png")
    )
    add("metric_vs_eps", "Robust metric vs eps", plot_metric_vs_eps(d, plots / "metric_vs_eps.png"))
    for task in [*d.task_labels(), "embedding"]:
        if task in d.tasks:
            add(
                f"corruptions_{task}",
                f"Corruption error vs severity: {task}",
                plot_corruptions(d, task, plots / f"corruptions_{task}.png"),
            )
    add("heatmap", "Relative degradation, encoder x threat", plot_heatmap(d, plots / "heatmap.png"))
    add("embedding_drift", "Embedding drift", plot_embedding_drift(d, plots / "embedding_drift.png"))

    summary = markdown_summary(d)
    (folder / "summary.md").write_text(summary)
    body = [f"<h1>robustssl benchmark: {html.escape(d.run)}</h1>"]
    if d.meta.get("description"):
        body.append(f"<p>{html.escape(d.meta['description'])}</p>")
    body.append(
        f"<p>spec digest {html.escape(d.meta.get('spec_digest', '?'))}, robustssl "
        f"{html.escape(d.meta.get('version', '?'))}, {len(d.values)} result rows.</p>"
    )
    body.append("<h2>Summary</h2>")
    for title, header, rows in summary_tables(d):
        body += [f"<h3>{html.escape(title)}</h3>", _html_table(header, rows)]
    body.append("<h2>Plots</h2>")
    for name, title, encoded in figures:
        body += [
            f"<h3>{html.escape(title)}</h3>",
            f'<img id="plot-{name}" class="plot" alt="{html.escape(title)}" '
            f'src="data:image/png;base64,{encoded}">',
        ]
    if d.heads:
        body.append("<h2>Fine-tuned heads</h2>")
        rows = []
        for h in d.heads:
            info = json.loads(h["info"] or "{}")
            rows.append(
                [
                    h["encoder"],
                    h["task"],
                    info.get("protocol", ""),
                    info.get("val_metric", ""),
                    _fmt(info.get("val_score", float("nan"))),
                    info.get("n_train", ""),
                    info.get("n_val", ""),
                    f"{info.get('seconds', float('nan')):.1f}",
                ]
            )
        body.append(
            _html_table(
                ["encoder", "task", "protocol", "val metric", "val score", "n train", "n val", "seconds"],
                rows,
            )
        )
    all_rows = [
        [
            r["encoder"],
            r["task"],
            r["threat"],
            r["metric"],
            _fmt(r["value"]),
            r["n"],
            r["fwd"],
            r["bwd"],
            f"{r['seconds']:.2f}",
        ]
        for r in sorted(d.values.values(), key=lambda r: (r["encoder"], r["task"], r["threat"], r["metric"]))
    ]
    body += [
        "<h2>All results</h2>",
        f"<details><summary>{len(all_rows)} rows</summary>",
        _html_table(["encoder", "task", "threat", "metric", "value", "n", "fwd", "bwd", "seconds"], all_rows),
        "</details>",
        "<h2>Spec</h2>",
        f"<pre>{html.escape(d.meta.get('spec', ''))}</pre>",
    ]
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>robustssl: '
        f"{html.escape(d.run)}</title><style>{_STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    path = folder / "report.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page)
    tmp.replace(path)
    return path
