"""HTML report: a timeline of alerts per container (hand-written SVG) and the alert table.

Why no plotting library: the report must open anywhere with no network and no JavaScript, and the
demo must not pull matplotlib. One SVG per section (e.g. per replayed scenario): x is time, one row
per container (or image for churn), one mark per alert coloured by rule, small ticks for repeats
that the suppression window kept quiet, and a bar for an anomaly's window.
"""
from __future__ import annotations

import datetime as _dt
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from scheduler.alerting.alerts import summarize_evidence
from scheduler.alerting.textsafe import escape_text

RULE_COLOURS = {
    "location_discovery": "#d62728",
    "container_churn": "#ff7f0e",
    "risky_container_config": "#9467bd",
    "behaviour_anomaly": "#1f77b4",
}
DEFAULT_COLOUR = "#7f7f7f"


@dataclass
class Section:
    title: str
    alerts: list[dict[str, Any]]
    repeats: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    coverage: list[dict[str, Any]] = field(default_factory=list)


def _e(s: Any) -> str:
    """HTML-escaped, with control and bidi characters made visible (alerting.textsafe)."""
    return html.escape(escape_text(s), quote=True)


def _hms(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%H:%M:%S")


def _row_label(a: dict[str, Any]) -> str:
    c = a.get("container", {})
    return c.get("name") or (c.get("id") or "")[:12] or "container unknown"


def nice_ticks(t0: float, t1: float, target: int = 6) -> list[float]:
    """Round tick positions (seconds) between t0 and t1."""
    span = max(t1 - t0, 1.0)
    steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400]
    step = next((s for s in steps if span / s <= target), steps[-1])
    first = (int(t0 // step) + 1) * step
    return [float(t) for t in range(int(first), int(t1) + 1, step)]


def timeline_svg(alerts: list[dict[str, Any]], repeats: Iterable[dict[str, Any]] = (),
                 width: int = 900) -> str:
    """The SVG timeline for one set of alerts (empty string when there are none)."""
    if not alerts:
        return ""
    by_id = {a["id"]: a for a in alerts}
    rows: list[str] = []
    for a in sorted(alerts, key=lambda a: a["time"]):
        lab = _row_label(a)
        if lab not in rows:
            rows.append(lab)
    repeats = [r for r in repeats if r.get("alert_id") in by_id]
    times = [a["time"] for a in alerts] + [float(r["time"]) for r in repeats]
    for a in alerts:
        for e in a.get("evidence", []):
            if e.get("kind") == "window":
                times += [float(e.get("window_start", a["time"])), float(e.get("window_end", a["time"]))]
    t0, t1 = min(times), max(times)
    if t1 - t0 < 10:
        t0, t1 = t0 - 5, t1 + 5
    pad = (t1 - t0) * 0.03
    t0, t1 = t0 - pad, t1 + pad
    left, right, top, row_h = 190, 20, 28, 22
    plot_w = width - left - right
    height = top + row_h * len(rows) + 40

    def x(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * plot_w

    def y(label: str) -> float:
        return top + rows.index(label) * row_h + row_h / 2

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect x="{left}" y="{top}" width="{plot_w}" height="{row_h * len(rows)}" '
           f'fill="#fafafa" stroke="#ccc"/>']
    for i, lab in enumerate(rows):
        yy = top + i * row_h
        if i % 2:
            out.append(f'<rect x="{left}" y="{yy}" width="{plot_w}" height="{row_h}" fill="#f0f0f0"/>')
        out.append(f'<text x="{left - 6}" y="{yy + row_h / 2 + 4}" text-anchor="end">'
                   f'{_e(lab[:28])}</text>')
    base = top + row_h * len(rows)
    for t in nice_ticks(t0, t1):
        xx = x(t)
        out.append(f'<line x1="{xx:.1f}" y1="{top}" x2="{xx:.1f}" y2="{base + 4}" stroke="#ddd"/>')
        out.append(f'<text x="{xx:.1f}" y="{base + 16}" text-anchor="middle">{_hms(t)}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{base + 32}" text-anchor="middle" '
               f'fill="#555">time (UTC)</text>')
    for a in alerts:
        colour = RULE_COLOURS.get(a["rule"], DEFAULT_COLOUR)
        yy = y(_row_label(a))
        for e in a.get("evidence", []):
            if e.get("kind") == "window":
                xs, xe = x(float(e["window_start"])), x(float(e["window_end"]))
                out.append(f'<rect x="{xs:.1f}" y="{yy - 4}" width="{max(xe - xs, 1):.1f}" '
                           f'height="8" fill="{colour}" opacity="0.25"/>')
        tip = f'{a["rule"]} {a.get("severity", "")} {_hms(a["time"])}: {a.get("title", "")}'
        out.append(f'<circle cx="{x(a["time"]):.1f}" cy="{yy:.1f}" r="6" fill="{colour}" '
                   f'stroke="#222" stroke-width="0.8"><title>{_e(tip)}</title></circle>')
    for r in repeats:
        a = by_id[r["alert_id"]]
        xx, yy = x(float(r["time"])), y(_row_label(a))
        colour = RULE_COLOURS.get(a["rule"], DEFAULT_COLOUR)
        out.append(f'<line x1="{xx:.1f}" y1="{yy - 7}" x2="{xx:.1f}" y2="{yy + 7}" '
                   f'stroke="{colour}" stroke-width="2"><title>{_e("repeat (suppressed): " + r.get("summary", ""))}'
                   f'</title></line>')
    out.append("</svg>")
    return "\n".join(out)


def legend_html() -> str:
    items = "".join(f'<span class="lg"><span class="dot" style="background:{c}"></span>{_e(r)}</span>'
                    for r, c in RULE_COLOURS.items())
    return (f'<p class="legend">{items}<span class="lg">| tick = repeat kept quiet by the '
            f'suppression window; bar = anomaly window</span></p>')


def alerts_table_html(alerts: list[dict[str, Any]], repeats: list[dict[str, Any]]) -> str:
    rep_count: dict[str, int] = {}
    for r in repeats:
        rep_count[r["alert_id"]] = rep_count.get(r["alert_id"], 0) + 1
    rows = []
    for a in sorted(alerts, key=lambda a: a["time"]):
        c = a.get("container", {})
        mitre = ", ".join(m["technique"] for m in a.get("mitre", []))
        score = ""
        if a.get("score") is not None:
            score = f'{a["score"]:.3f} / {a.get("threshold") or 0:.3f}'
        rows.append(
            f'<tr><td>{_hms(a["time"])}</td><td class="r" style="color:'
            f'{RULE_COLOURS.get(a["rule"], DEFAULT_COLOUR)}">{_e(a["rule"])}</td>'
            f'<td>{_e(a.get("severity", ""))}</td><td>{_e(c.get("name") or c.get("id", "")[:12])}</td>'
            f'<td>{_e(c.get("image", ""))}</td><td>{_e(summarize_evidence(a.get("evidence", []), 4))}</td>'
            f'<td>{_e(score)}</td><td>{_e(mitre)}</td><td>{rep_count.get(a["id"], 0)}</td>'
            f'<td class="id">{_e(a["id"])}</td></tr>')
    return ('<table><tr><th>time</th><th>rule</th><th>sev</th><th>container</th><th>image</th>'
            '<th>evidence (host | network)</th><th>score / threshold</th><th>MITRE</th>'
            '<th>repeats</th><th>id</th></tr>' + "".join(rows) + "</table>")


def coverage_html(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    ok = sum(1 for r in rows if r.get("alert_id"))
    body = "".join(
        f'<tr><td>{_e(r["action_id"])}</td><td>{_e(r["label"])}</td><td>{_e(r["rule"])}</td>'
        f'<td>{_e(r["container"])}</td><td>{_e(r["image"])}</td>'
        f'<td>{"yes (" + _e(r["how"]) + ")" if r.get("alert_id") else "<b>MISSED</b>"}</td></tr>'
        for r in rows)
    return (f'<p>Ground truth: {ok} of {len(rows)} labelled actions have their alert.</p>'
            '<table><tr><th>action</th><th>label</th><th>expected rule</th><th>container</th>'
            f'<th>image</th><th>alerted</th></tr>{body}</table>')


CSS = """
body{font-family:sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;font-size:12px;margin:8px 0 20px}
td,th{border:1px solid #ddd;padding:3px 6px;vertical-align:top;text-align:left}
th{background:#f3f3f3}
td.id{font-family:monospace;font-size:10px;color:#666}
.legend{font-size:12px}.lg{margin-right:14px}
.dot{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:4px}
h2{margin-top:32px;border-bottom:1px solid #ddd}
"""


def render(sections: list[Section], title: str = "Stowaway alerts",
           summary: dict[str, Any] | None = None) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>"]
    if summary:
        parts.append("<p>" + " &middot; ".join(f"{_e(k)}: <b>{_e(v)}</b>" for k, v in summary.items())
                     + "</p>")
    parts.append(legend_html())
    for s in sections:
        parts.append(f"<h2>{_e(s.title)}</h2>")
        if s.note:
            parts.append(f"<p>{_e(s.note)}</p>")
        if s.alerts:
            parts.append(timeline_svg(s.alerts, s.repeats))
            parts.append(alerts_table_html(s.alerts, s.repeats))
        else:
            parts.append("<p>No alerts.</p>")
        parts.append(coverage_html(s.coverage))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | Path, sections: list[Section], title: str = "Stowaway alerts",
                 summary: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(sections, title, summary), encoding="utf-8")
    return path
