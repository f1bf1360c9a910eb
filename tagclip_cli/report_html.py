"""The report as one self-contained HTML page: summary, a per-control table, and a per-label bar chart of
precision, recall, F1 and AP in inline SVG (no scripts, no external files)."""

from __future__ import annotations

from html import escape

from .memory_review import MemoryReport
from .review import ControlReport, Report

METRICS = (("precision", "#4e79a7"), ("recall", "#f28e2b"), ("f1", "#59a14f"), ("ap", "#b07aa1"))
BAR_WIDTH = 9
BAR_GAP = 2
GROUP_GAP = 14
CHART_HEIGHT = 160
LABEL_SPACE = 90
LEFT = 34
COLUMNS = ("label", "support", "suggested", "TP", "FP", "FN", "precision", "recall", "F1", "AP", "best t", "F1@t")


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def fmt_t(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def render(report: Report, project: int, memory: MemoryReport | None = None) -> str:
    rate = fmt(report.acceptance_rate * 100, 1) + " %" if report.acceptance_rate is not None else "–"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>TagCLIP report, project {project}</title>",
        "<style>body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "th{background:#f4f4f4}.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}</style>",
        "</head><body>",
        f"<h1>Predictions vs reviewed annotations: project {project}</h1>",
        f"<p>model_version <code>{escape(str(report.model_version))}</code>; {report.reviewed} reviewed task(s), "
        f"{report.compared} with a prediction of this version ({report.with_label_scores} with per-label scores); "
        f"accepted unchanged: <b>{report.accepted_unchanged}</b> ({rate}).</p>",
    ]
    for control in report.controls:
        parts += [_control_table(control), _chart(control)]
    if memory is not None:
        parts.append(_memory_tables(memory))
    parts.append("</body></html>")
    return "\n".join(parts)


def _control_table(control: ControlReport) -> str:
    head = "".join(f"<th>{h}</th>" for h in COLUMNS)
    rows = []
    for m in control.labels:
        cells = [escape(m.label), m.support, m.suggested, m.tp, m.fp, m.fn]
        cells += [fmt(m.precision), fmt(m.recall), fmt(m.f1), fmt(m.ap), fmt_t(m.threshold), fmt(m.threshold_f1)]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    summary = (
        f"micro P {fmt(control.micro_precision)}, R {fmt(control.micro_recall)}, F1 {fmt(control.micro_f1)}; "
        f"mAP {fmt(control.mean_ap)}; suggested model_score_threshold {fmt_t(control.threshold)} "
        f"(F1 {fmt(control.threshold_f1)}); {control.accepted} task(s) unchanged"
    )
    kind = "single" if control.single else "multiple"
    return (
        f"<h2>{escape(control.tag)} <code>{escape(control.name)}</code> ({kind})</h2><p>{escape(summary)}</p>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table>"
    )


def _memory_tables(memory: MemoryReport) -> str:
    out = [
        f"<h2>Memory of reviewed examples</h2><p>{memory.examples} example(s), generation {memory.generation}: "
        "TagCLIP alone vs with the memory, by cross-validation on the reviewed examples.</p>"
    ]
    head = "<th>label</th><th>support</th>" + "".join(
        f"<th>{m} alone</th><th>{m} memory</th>" for m in ("P", "R", "F1", "AP")
    )
    for control in memory.controls:
        rows = [(x.label, x.support, x.alone, x.memory) for x in control.labels]
        rows.append(("micro / mAP", "", control.alone, control.memory))
        body = "".join(
            f"<tr><td>{escape(str(name))}</td><td>{support}</td>"
            + "".join(
                f"<td>{fmt(getattr(a, k))}</td><td>{fmt(getattr(b, k))}</td>"
                for k in ("precision", "recall", "f1", "ap")
            )
            + "</tr>"
            for name, support, a, b in rows
        )
        out.append(
            f"<h3>{escape(control.tag)} <code>{escape(control.name)}</code>: {control.examples} examples, "
            f"{control.folds} folds</h3><table><tr>{head}</tr>{body}</table>"
        )
    return "".join(out)


def _chart(control: ControlReport) -> str:
    group = len(METRICS) * (BAR_WIDTH + BAR_GAP) + GROUP_GAP
    width = LEFT + group * max(1, len(control.labels)) + 10
    height = CHART_HEIGHT + LABEL_SPACE
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img'>"]
    for tick in (0.0, 0.5, 1.0):
        y = CHART_HEIGHT * (1 - tick) + 5
        out.append(f"<line x1='{LEFT}' x2='{width}' y1='{y}' y2='{y}' stroke='#ddd'/>")
        out.append(f"<text x='2' y='{y + 4}' font-size='10'>{tick:.1f}</text>")
    for i, m in enumerate(control.labels):
        x0 = LEFT + i * group
        for k, (name, colour) in enumerate(METRICS):
            value = getattr(m, name)
            if value is None:
                continue
            h = CHART_HEIGHT * value
            x = x0 + k * (BAR_WIDTH + BAR_GAP)
            out.append(
                f"<rect x='{x}' y='{CHART_HEIGHT - h + 5:.1f}' width='{BAR_WIDTH}' height='{h:.1f}' fill='{colour}'>"
                f"<title>{escape(m.label)} {name} {value:.3f}</title></rect>"
            )
        cx, cy = x0 + group / 2 - GROUP_GAP / 2, CHART_HEIGHT + 14
        out.append(
            f"<text x='{cx}' y='{cy}' font-size='10' text-anchor='end' transform='rotate(-40 {cx} {cy})'>"
            f"{escape(m.label)}</text>"
        )
    out.append("</svg>")
    legend = "".join(f"<span style='background:{c}'></span>{n}" for n, c in METRICS)
    return "".join(out) + f"<div class='legend'>{legend}</div>"
