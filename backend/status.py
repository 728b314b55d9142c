"""The status page at ``/``: is the loop paying? One server-rendered HTML page, no script, no build step.

What it shows: the served version; each project (its title from Label Studio) and its training (``queued``,
``running`` with the job's stage and progress, ``idle``, ``failed`` with the reason) from
:func:`shoeseg_services.trigger.overview` and the rq jobs' meta; every registry version with its validation mask AP,
the labels it trained on (``metrics.train_tasks``), what an annotator would edit on its validation images
(``meta["annotator"]``, :func:`shoeseg.edits.summary_text`), the gate's decision (``meta["gate"]`` when the worker
recorded one, else ``meta["decision"]``), its kind (``meta["kind"]``: a round on new labels or idle-time
training) and its live acceptance (:mod:`shoeseg.acceptance`); and the learning curve, an inline SVG of
validation AP and live acceptance against the labels trained on and against time.

Everything that comes from users or the outside (project titles, label names, versions, error text) is
HTML-escaped. The page is behind the same basic auth as every route but ``/health`` (``backend.app``).
"""

from __future__ import annotations

import html
import logging
import threading
import time
from datetime import datetime
from typing import Any

from shoeseg.edits import summary_text
from shoeseg.gate import evidence_text
from via_tools.model import is_finite_number

log = logging.getLogger(__name__)

#: Project titles are read from Label Studio at most this often (seconds), and a failure this often.
TITLE_TTL_S = 60.0
TITLE_RETRY_S = 15.0
#: At most this long for one title (the page must answer even when Label Studio does not).
TITLE_TIMEOUT_S = 2.0

_titles: dict[int, tuple[float, str | None]] = {}
_titles_lock = threading.Lock()


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


# -- gathering ---------------------------------------------------------------------------------------------

def fetch_title(model, project_id: int) -> str | None:
    """The project's title from its Label Studio (the ``/setup`` access, else the configured one), or None."""
    import httpx

    from shoeseg_services.ls_api import auth_headers

    access, _ = model._project_state(project_id)
    if not access.hostname or not access.token:
        return None
    base = access.hostname.rstrip("/")
    try:
        r = httpx.get(f"{base}/api/projects/{int(project_id)}", timeout=TITLE_TIMEOUT_S,
                      headers=auth_headers(base, access.token, timeout_s=TITLE_TIMEOUT_S), follow_redirects=False)
    except Exception as e:  # noqa: BLE001 - a title is a nicety
        log.debug("project %s: no title (%s)", project_id, e)
        return None
    if r.status_code != 200:
        return None
    title = (r.json() or {}).get("title")
    return str(title) if title is not None else None


def project_title(model, project_id: int) -> str | None:
    """:func:`fetch_title`, cached for :data:`TITLE_TTL_S`."""
    now = time.monotonic()
    with _titles_lock:
        known = _titles.get(project_id)
    if known and now < known[0]:
        return known[1]
    title = fetch_title(model, project_id)
    with _titles_lock:
        _titles[project_id] = (now + (TITLE_TTL_S if title is not None else TITLE_RETRY_S), title)
    return title


def _job_meta(conn, job_id: str | None) -> dict[str, Any]:
    if not job_id:
        return {}
    from rq.job import Job

    try:
        return dict(Job.fetch(job_id, connection=conn).meta or {})
    except Exception:  # noqa: BLE001 - an expired job
        return {}


def _progress(meta: dict[str, Any]) -> str:
    parts = []
    it, total = meta.get("iteration"), meta.get("iters") or meta.get("max_iter")
    if isinstance(it, int) and isinstance(total, int) and total:
        parts.append(f"iteration {it} / {total} ({100 * it / total:.0f} %)")
    done, of = meta.get("images_done"), meta.get("images_total")
    if meta.get("stage") == "fetching images" and isinstance(done, int) and isinstance(of, int):
        parts.append(f"{done} / {of} images")
    done, of = meta.get("tasks_done"), meta.get("tasks_total")
    if isinstance(done, int) and isinstance(of, int) and of:
        parts.append(f"{done} / {of} tasks")
    return ", ".join(parts)


def training_rows(model) -> tuple[dict[str, dict], str | None]:
    """Each project's training (``trigger.overview`` plus the job's stage and progress), and why it is unknown."""
    if not model.settings.redis_url:
        return {}, "REDIS_URL is not set: no training queue"
    from shoeseg_services.trigger import overview

    try:
        conn = model._redis_conn()
        rows = overview(conn)
        for entry in rows.values():
            meta = _job_meta(conn, entry.get("job_id"))
            entry["stage"] = meta.get("stage")
            entry["progress"] = _progress(meta)
            if entry.get("state") == "failed" and not entry.get("error"):
                entry["error"] = meta.get("error")
        return rows, None
    except Exception as e:  # noqa: BLE001 - the page must answer
        return {}, f"Redis at {model.settings.redis_url} does not answer ({type(e).__name__})"


def gather(model) -> dict[str, Any]:
    """Everything the page shows, as plain data (also what the tests check)."""
    registry = model.models.registry
    versions, registry_error = [], None
    try:
        listed = registry.versions()
    except Exception as e:  # noqa: BLE001
        listed, registry_error = [], f"the registry at {registry.root} cannot be read ({e})"
    for v in listed:
        metrics, meta = v.metrics or {}, v.meta or {}
        try:
            acceptance = registry.acceptance(v.version)
        except Exception:  # noqa: BLE001
            acceptance = None
        versions.append({
            "version": v.version, "status": v.status, "created_at": v.created_at, "parent": v.parent,
            "project": meta.get("project"), "ap": metrics.get("segm_AP"), "box_ap": metrics.get("bbox_AP"),
            "train_tasks": metrics.get("train_tasks"), "val_tasks": metrics.get("val_tasks"),
            "decision": meta.get("decision"), "gate": v.recorded("gate"),
            "annotator": v.recorded("annotator"),
            "kind": meta.get("kind"), "promoted_at": v.promoted_at, "acceptance": acceptance,
        })
    training, training_error = training_rows(model)
    ids: set[int] = set()
    for pid in training:
        if str(pid).isdigit():
            ids.add(int(pid))
    for v in versions:
        if isinstance(v["project"], int) or str(v["project"] or "").isdigit():
            ids.add(int(v["project"]))
    for key in list(getattr(model._projects, "_items", {}) or {}):
        head = str(key).split(".", 1)[0]
        if head.isdigit():
            ids.add(int(head))
    projects = []
    for pid in sorted(ids):
        projects.append({"id": pid, "title": project_title(model, pid), "training": training.get(str(pid)),
                         "versions": sum(1 for v in versions if str(v["project"]) == str(pid))})
    loaded = model.models.current(wait=False)
    return {
        "served": loaded.version if loaded else None, "reason": model.models.reason,
        "projects": projects, "versions": versions, "training_error": training_error,
        "registry_error": registry_error, "registry": str(registry.root),
        "generated_at": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


# -- the learning curve --------------------------------------------------------------------------------------

_AP_COLOUR, _ACC_COLOUR, _KEPT_COLOUR = "#1f77b4", "#d95f02", "#2ca02c"


def _finite(x) -> float | None:
    """``x`` as a number to plot, or None where it is none (a record without it, NaN, infinite, text)."""
    return float(x) if is_finite_number(x) else None


def _kept_share(annotator: Any) -> Any:
    """The share of validation shoes a version's pre-labels outlined within IoU 0.85 (its ``meta.annotator``)."""
    shares = annotator.get("matched_share") if isinstance(annotator, dict) else None
    return shares.get("iou>=0.85") if isinstance(shares, dict) else None


def _when(text: str | None) -> float | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _panel(points: list[dict], *, x_key: str, x_label: str, x_fmt, left: float, width: float, height: float) -> str:
    """One panel: AP, pre-labels within IoU 0.85 and live acceptance (all 0..1) of the versions against ``x_key``."""
    top, bottom = 30.0, height - 45.0
    xs = [p[x_key] for p in points if p[x_key] is not None]
    out = [f'<g class="panel" data-x="{_e(x_key)}">',
           f'<text x="{left + width / 2:.1f}" y="{height - 8:.1f}" text-anchor="middle" class="axis">{_e(x_label)}</text>',
           f'<rect x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" height="{bottom - top:.1f}" class="frame"/>']
    for k in range(6):
        y = bottom - (bottom - top) * k / 5
        out.append(f'<line x1="{left:.1f}" x2="{left + width:.1f}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{left - 6:.1f}" y="{y + 4:.1f}" text-anchor="end" class="tick">{k / 5:.1f}</text>')
    if not xs:
        out.append(f'<text x="{left + width / 2:.1f}" y="{(top + bottom) / 2:.1f}" text-anchor="middle" '
                   f'class="empty">no version yet</text></g>')
        return "".join(out)
    lo, hi = min(xs), max(xs)
    if hi == lo:
        lo, hi = lo - 1, hi + 1

    def sx(x):
        return left + 20 + (width - 40) * (x - lo) / (hi - lo)

    def sy(y):
        return bottom - (bottom - top) * max(0.0, min(1.0, float(y)))

    for x in (lo, (lo + hi) / 2, hi):
        out.append(f'<text x="{sx(x):.1f}" y="{bottom + 16:.1f}" text-anchor="middle" class="tick">{_e(x_fmt(x))}</text>')
    for series, colour, shape in (("ap", _AP_COLOUR, "circle"), ("kept", _KEPT_COLOUR, "polygon"),
                                  ("acceptance", _ACC_COLOUR, "rect")):
        pts = sorted(((p[x_key], p[series], p) for p in points if p[x_key] is not None and p[series] is not None),
                     key=lambda t: (t[0], t[1]))  # ties (two versions in one second, same AP) keep their order
        if len(pts) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y, _ in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5" '
                       f'class="line-{series}"/>')
        for x, y, p in pts:
            tip = f"{p['version']}: {series} {y:.3f} at {x_label.lower()} {x_fmt(x)}"
            fill = colour if p["served"] else "white"
            if shape == "circle":
                mark = (f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{fill}" stroke="{colour}" '
                        f'stroke-width="2"')
            elif shape == "polygon":  # a triangle
                mark = (f'<polygon points="{sx(x):.1f},{sy(y) - 5.5:.1f} {sx(x) - 5:.1f},{sy(y) + 4:.1f} '
                        f'{sx(x) + 5:.1f},{sy(y) + 4:.1f}" fill="{fill}" stroke="{colour}" stroke-width="2"')
            else:
                mark = (f'<rect x="{sx(x) - 4.5:.1f}" y="{sy(y) - 4.5:.1f}" width="9" height="9" fill="{fill}" '
                        f'stroke="{colour}" stroke-width="2"')
            out.append(f'{mark} class="point {series}" data-version="{_e(p["version"])}" data-value="{y:.4f}">'
                       f"<title>{_e(tip)}</title></{shape}>")
    out.append("</g>")
    return "".join(out)


def learning_curve_svg(versions: list[dict], *, served: str | None) -> str:
    """The learning curve as inline SVG: validation mask AP (circles), the share of validation shoes its pre-labels
    outline within IoU 0.85 (triangles, ``meta.annotator``) and live acceptance (squares, kept share) of each version
    against the labels it trained on (left) and against time (right); the served version filled."""
    points = [{"version": v["version"], "served": v["version"] == served, "ap": _finite(v["ap"]),
               "acceptance": _finite((v["acceptance"] or {}).get("kept_share")),
               "kept": _finite(_kept_share(v.get("annotator"))), "labels": _finite(v["train_tasks"]),
               "time": _when(v["created_at"])} for v in versions]
    width, height, panel_w = 960, 300, 400

    times = [p["time"] for p in points if p["time"] is not None]
    pattern = "%m-%d %H:%M:%S" if times and max(times) - min(times) < 3600 else "%Y-%m-%d %H:%M"

    def when_fmt(t):
        return datetime.fromtimestamp(t).astimezone().strftime(pattern)

    body = [
        _panel(points, x_key="labels", x_label="Labels trained on", x_fmt=lambda x: f"{x:.0f}", left=60,
               width=panel_w, height=height),
        _panel(points, x_key="time", x_label="Time (version registered)", x_fmt=when_fmt, left=60 + panel_w + 80,
               width=panel_w, height=height),
    ]
    legend = (f'<g class="legend"><circle cx="70" cy="14" r="5" fill="{_AP_COLOUR}"/>'
              f'<text x="80" y="18">validation mask AP</text>'
              f'<polygon points="215,8.5 210,18 220,18" fill="{_KEPT_COLOUR}"/>'
              f'<text x="226" y="18">validation shoes outlined within IoU 0.85</text>'
              f'<rect x="495" y="9.5" width="9" height="9" fill="{_ACC_COLOUR}"/>'
              f'<text x="510" y="18">live: pre-labelled shoes kept (IoU 0.9)</text>'
              f'<text x="790" y="18">filled: the served version</text></g>')
    return (f'<svg id="learning-curve" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="learning curve">{legend}{"".join(body)}</svg>')


# -- the page ----------------------------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
table { border-collapse: collapse; } th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left;
vertical-align: top; } th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.state-failed { color: #b00020; font-weight: bold; } .state-running { color: #0a6; font-weight: bold; }
.state-queued { color: #a60; } .muted { color: #777; } .error { color: #b00020; }
svg .frame { fill: none; stroke: #999; } svg .grid { stroke: #eee; } svg .tick, svg .axis, svg .legend text,
svg .empty { font: 12px system-ui, sans-serif; fill: #444; }
"""


def _num(value: Any, fmt: str = ".3f") -> str:
    return "–" if _finite(value) is None else format(value, fmt)


def _training_cell(t: dict | None) -> str:
    if not t:
        return '<span class="muted">never trained</span>'
    state = t.get("state") or "idle"
    bits = [f'<span class="state state-{_e(state)}">{_e(state)}</span>']
    if state == "running":
        stage = t.get("stage") or "starting"
        bits.append(f"{_e(stage)}" + (f": {_e(t['progress'])}" if t.get("progress") else ""))
    if state == "failed":
        bits.append(f'<span class="error">{_e(t.get("error") or "no reason recorded")}</span>')
    if t.get("job_id"):
        bits.append(f'<span class="muted">job {_e(t["job_id"])}'
                    + (f" ({_e(t['reason'])})" if t.get("reason") else "") + "</span>")
    if state == "idle" and t.get("last_outcome"):
        bits.append(f'<span class="muted">last: {_e(t["last_outcome"])}</span>')
    return "<br>".join(bits)


def _gate_cell(v: dict) -> str:
    gate = v.get("gate")
    if gate:
        decision = gate.get("decision")
        if decision is None and isinstance(gate.get("promote"), bool):
            decision = "promoted" if gate["promote"] else "kept as a candidate"
        evidence = evidence_text(gate)
        line = f"<br>{_e(gate.get('metric') or 'AP')} {_e(evidence)}" if evidence else ""
        reason = f'<br><span class="muted">{_e(gate["reason"])}</span>' if gate.get("reason") else ""
        return f"<b>{_e(decision or '–')}</b>{line}{reason}"
    return _e(v.get("decision")) if v.get("decision") else '<span class="muted">–</span>'


def _prelabels_cell(numbers: dict | None) -> str:
    text = summary_text(numbers)
    return _e(text) if text else '<span class="muted">–</span>'


def _acceptance_cells(a: dict | None) -> str:
    if not a:
        return '<td class="num muted">–</td>' * 7
    cells = [_num(a.get("kept_share"), ".2f"), a.get("annotations", 0), a.get("kept", 0), a.get("moved", 0),
             a.get("deleted", 0), a.get("drawn", 0), a.get("vertices_changed", 0)]
    return "".join(f'<td class="num">{_e(c)}</td>' for c in cells)


def render(data: dict[str, Any]) -> str:
    """The page's HTML for :func:`gather`'s data; every outside value escaped."""
    served = data["served"]
    head = (f"<p>Served version: <b id=\"served\">{_e(served) if served else 'none'}</b>"
            + (f' <span class="muted">({_e(data["reason"])})</span>' if data.get("reason") else "")
            + f' · registry <code>{_e(data["registry"])}</code> · {_e(data["generated_at"])}</p>')
    problems = "".join(f'<p class="error">{_e(data[k])}</p>' for k in ("training_error", "registry_error") if data.get(k))

    rows = []
    for p in data["projects"]:
        title = _e(p["title"]) if p["title"] is not None else '<span class="muted">(title unavailable)</span>'
        state = (p["training"] or {}).get("state", "never")
        rows.append(f'<tr data-project="{p["id"]}" data-state="{_e(state)}"><td class="num">{p["id"]}</td>'
                    f'<td class="title">{title}</td><td>{_training_cell(p["training"])}</td>'
                    f'<td class="num">{p["versions"]}</td></tr>')
    projects = ('<table id="projects"><tr><th>project</th><th>title</th><th>training</th><th>versions</th></tr>'
                + ("".join(rows) or '<tr><td colspan="4" class="muted">no project yet</td></tr>') + "</table>")

    vrows = []
    for v in reversed(data["versions"]):
        mark = "★ " if v["version"] == served else ""
        kind = _e(v["kind"]) if v.get("kind") else '<span class="muted">–</span>'
        vrows.append(
            f'<tr data-version="{_e(v["version"])}" data-status="{_e(v["status"])}">'
            f'<td>{mark}<code>{_e(v["version"])}</code><br><span class="muted">{_e(v["status"])}'
            + (f", parent {_e(v['parent'])}" if v.get("parent") else "") + "</span></td>"
            f'<td class="num">{_e(v["project"]) if v["project"] is not None else "–"}</td>'
            f'<td>{_e((v["created_at"] or "")[:19].replace("T", " "))}</td><td>{kind}</td>'
            f'<td class="num">{_e(_num(v["train_tasks"], "d") if isinstance(v["train_tasks"], int) else "–")}</td>'
            f'<td class="num ap">{_num(v["ap"])}</td><td class="prelabels">{_prelabels_cell(v.get("annotator"))}</td>'
            f'<td>{_gate_cell(v)}</td>{_acceptance_cells(v["acceptance"])}</tr>')
    versions = ('<table id="versions"><tr><th rowspan="2">version</th><th rowspan="2">project</th>'
                '<th rowspan="2">registered</th><th rowspan="2">kind</th><th rowspan="2">labels trained on</th>'
                '<th rowspan="2">validation mask AP</th><th rowspan="2">pre-labels on validation</th>'
                '<th rowspan="2">gate</th><th colspan="7">live acceptance</th>'
                '</tr><tr><th>kept share</th><th>annotations</th><th>kept (IoU ≥ 0.9)</th><th>moved</th>'
                '<th>deleted</th><th>drawn</th><th>vertices changed</th></tr>'
                + ("".join(vrows) or '<tr><td colspan="15" class="muted">no version yet</td></tr>') + "</table>")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="30">'
        f"<title>ShoeSeg status</title><style>{_STYLE}</style></head><body>"
        f"<h1>ShoeSeg: is the loop paying?</h1>{head}{problems}"
        f"<h2>Learning curve</h2>{learning_curve_svg(data['versions'], served=served)}"
        f"<h2>Projects</h2>{projects}<h2>Versions</h2>{versions}"
        '<p class="muted">Live acceptance: every annotation submitted on a task that showed a version\'s pre-label, '
        "compared with that pre-label (shoes kept within IoU 0.9, moved, deleted, drawn; vertices moved off the "
        "annotated outline), once per annotation. JSON: <code>/versions</code>, <code>/health</code>. "
        "The page reloads every 30 s.</p></body></html>")


def status_page(model) -> str:
    """The status page of a running backend (``GET /``)."""
    return render(gather(model))
