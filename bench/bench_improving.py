"""The model that keeps improving, measured with the whole stack for real, left alone with no click.

Label Studio 1.23.2, Redis, ``shoeseg serve`` and ``shoeseg worker`` run as processes with the default
settings of ``make up`` (``SHOESEG_PROFILE=cpu``, idle-time training on). The 76 shared shoe photos
(``../shared/datasets/shoes``) are split with :func:`shoeseg.data.split_dataset` (seed 0): its val+test part
(23 images) is **kept out of the project** and only ever used here to score versions; its train part (53
images) is imported by ``shoeseg via import`` as a user runs it, labelled. With ``--add-at M``, ``--hold-back``
of them (10) are imported unlabelled and their annotations are created through the SDK at minute ``M``, as an
annotator would.

Recorded while it runs (``events.jsonl`` in ``--out``, a line as each happens): every change of the served
version with its minute, the label event, and ``/predict`` latency for one task every ``--latency-every``
seconds, tagged with what the worker was doing (an idle-time chunk running, a round, or nothing). After
``--minutes`` the worker is stopped and the same ``/predict`` is timed ``--baseline`` times with the worker
gone (the idle machine). Then every registered version is scored on the 23 held-out photos (COCO mask AP,
AP75, and the annotator's numbers at the version's serving threshold), the processes being stopped, so that
scoring does not disturb the run.

Output in ``--out``: ``improving.md`` (the versions table, the gate's decisions, the latency table),
``improving.json`` (every value), ``improving.png`` (held-out mask AP of every promoted version against
minutes, candidates as crosses, the label event as a line) and ``events.jsonl``. The stack's registry stays
in ``--out/run/models`` so the scoring can be redone with ``--score-only``.

Run (nothing else on the machine, about 75 minutes):

* ``python -m bench.bench_improving --out bench/out/improving --minutes 60`` (no click);
* ``python -m bench.bench_improving --out bench/out/improving-labels --minutes 60 --add-at 20``;
* ``--set SHOESEG_TRAIN_BUDGET_S=0`` (repeatable): the same with a setting other than ``make up``'s;
* ``python -m bench.bench_improving --tiny --out bench/out/improving-tiny``: the same flow in a few minutes on 9
  photos at 128-192 px with 2-iteration trainings, a smoke test whose figures mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from bench.bench_loop import BIN, REPO, SHOES, _healthy, _kill, _markdown, _start, _stop, _wait, shoes_plan
from shoeseg.gate import evidence_text


def _event(path: Path, **values) -> dict:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(values) + "\n")
    return values


def _activity(conn, trigger, idle_training, pid: int) -> str:
    """What the worker is doing for the project: ``idle chunk``, ``round``, or ``nothing``."""
    if trigger.training_state(conn, pid).get("liveness") == "running":
        return "round"
    if idle_training.idle_state(conn, pid).get("state") == "running":
        return "idle chunk"
    return "nothing"


def _time_predict(client_http, url: str, body: dict) -> float:
    t = time.perf_counter()
    r = client_http.post(url + "/predict", json=body, timeout=120)
    r.raise_for_status()
    return (time.perf_counter() - t) * 1000


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p95": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"n": len(values), "p50": statistics.median(ordered), "p95": p95}


def run_stack(args, out: Path, events: Path) -> dict:
    import httpx
    import redis

    from shoeseg.data import subset
    from shoeseg_app.stack.labelstudio import LabelStudioServer
    from shoeseg_app.stack.redis import RedisServer
    from shoeseg_app.stack.service import free_port
    from shoeseg_services import idle_training, trigger
    from shoeseg_services.ls_api import list_tasks
    from shoeseg_services.registry import ModelRegistry
    from via_tools.io import load, save
    from via_tools.labelstudio import region_to_ls_results
    from via_tools.options import ReadOptions

    data = Path(args.data)
    ds = load(data / "via_project.json", options=ReadOptions(images_dir=data / "images"))
    plan = shoes_plan(ds, tiny=args.tiny, hold_back=args.hold_back)
    tasks = list(plan["train"])  # the held-out photos are not tasks
    labelled = set(plan["labelled"] if args.add_at is not None else plan["train"])
    truth = {im.file_name: im for im in ds.images}
    root = out / "run"
    if root.exists():
        shutil.rmtree(root)
    files_root, log_path = root / "files", root / "processes.log"
    images_dir = files_root / "shoes"
    images_dir.mkdir(parents=True)
    for name in tasks:  # a temporary copy under Label Studio's files root (nothing in the repository)
        shutil.copyfile(data / "images" / name, images_dir / name)
    to_import = subset(copy.deepcopy(ds), tasks)
    for im in to_import.images:
        if im.file_name not in labelled:
            im.regions = []
    via_import = root / "via_import.json"
    save(to_import, via_import, fmt="via2")
    env_stack = {"SHOESEG_PROFILE": "cpu", "SHOESEG_DEVICE": "cpu", "SHOESEG_MODEL_DIR": str(root / "models"),
                 "SHOESEG_CACHE_DIR": str(root / "cache"), "SHOESEG_RESULT_CACHE_SIZE": "0",
                 "PYTHONUNBUFFERED": "1"}
    env_stack.update(args.settings)
    if args.tiny:
        env_stack.update(SHOESEG_TRAIN_ITERS="2", SHOESEG_MIN_SIZE="128", SHOESEG_MAX_SIZE="192",
                         SHOESEG_ROI_BATCH="32", SHOESEG_IDLE_CHUNK_ITERS="2", SHOESEG_MIN_NEW_ANNOTATIONS="3")
    result: dict = {"tasks": len(tasks), "labelled_at_import": len(labelled), "held_out": len(plan["held_out"]),
                    "minutes": args.minutes, "add_at": args.add_at,
                    "added": len(plan["held_back"]) if args.add_at is not None else 0,
                    "settings": {k: v for k, v in env_stack.items() if k.startswith("SHOESEG_")
                                 and k not in ("SHOESEG_MODEL_DIR", "SHOESEG_CACHE_DIR")}}
    procs: list[subprocess.Popen] = []
    try:
        with LabelStudioServer(data_dir=root / "ls", files_root=files_root) as ls, \
                RedisServer(data_dir=root / "redis") as rs:
            client = ls.client()
            base = {k: v for k, v in os.environ.items() if not k.startswith(("SHOESEG_", "LABEL_STUDIO_", "REDIS_URL"))}
            env = {**base, **env_stack, "REDIS_URL": rs.url, "LABEL_STUDIO_URL": ls.url,
                   "LABEL_STUDIO_API_KEY": ls.token}
            conn = redis.Redis.from_url(rs.url)
            port = free_port()
            backend = f"http://127.0.0.1:{port}"
            procs += _start([[str(BIN / "shoeseg"), "serve", "--port", str(port)]], env, log_path)
            worker = _start([[str(BIN / "shoeseg"), "worker"]], env, log_path)
            procs += worker
            _wait("the backend", lambda: _healthy(backend), 180, logs=log_path)
            registry = ModelRegistry(root / "models")

            t0 = time.perf_counter()
            minute = lambda: round((time.perf_counter() - t0) / 60, 3)  # noqa: E731
            run = subprocess.run(
                [str(BIN / "shoeseg"), "via", "import", str(via_import), "--images", str(images_dir),
                 "--url", ls.url, "--api-key", ls.token, "--title", "bench improving", "--files-root",
                 str(files_root)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
            if run.returncode != 0:
                raise RuntimeError(f"shoeseg via import failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
            pid = int(re.search(r"/projects/(\d+)/", run.stdout).group(1))
            client.ml.create(project=pid, url=backend, title="shoeseg", is_interactive=False)
            task_list = list_tasks(client, pid)
            task_ids = {t["data"]["file_name"]: int(t["id"]) for t in task_list}
            label_config = client.projects.get(id=pid).label_config
            _event(events, kind="imported", minute=minute(), project=pid, tasks=len(task_list))

            served, added, next_latency, k = None, False, 0.0, 0
            with httpx.Client() as http:
                while minute() < args.minutes:
                    now = minute()
                    current = registry.current_version_id()
                    if current != served:
                        served = current
                        mv = registry.get(current)
                        _event(events, kind="promoted", minute=now, version=current, reason=mv.meta.get("reason"),
                               version_kind=mv.meta.get("kind"), decision=mv.meta.get("decision"))
                        print(f"[{now:6.2f} min] served: {current} ({mv.meta.get('kind')})", flush=True)
                    if args.add_at is not None and not added and now >= args.add_at:
                        for name in plan["held_back"]:
                            im = truth[name]
                            res = []
                            for r in im.regions:
                                res += region_to_ls_results(r, im.width_px, im.height_px, from_name="label",
                                                            to_name="image")
                            client.annotations.create(id=task_ids[name], result=res, project=pid)
                        added = True
                        _event(events, kind="labels added", minute=minute(), count=len(plan["held_back"]))
                        print(f"[{minute():6.2f} min] {len(plan['held_back'])} annotations created", flush=True)
                    if served and time.perf_counter() >= next_latency:
                        task = task_list[k % len(task_list)]
                        k += 1
                        doing = _activity(conn, trigger, idle_training, pid)
                        body = {"tasks": [task], "label_config": label_config, "project": f"{pid}.1"}
                        ms = _time_predict(http, backend, body)
                        _event(events, kind="predict", minute=minute(), ms=round(ms, 1), worker=doing)
                        next_latency = time.perf_counter() + args.latency_every
                    time.sleep(2.0)
                _stop(list(worker))  # the idle machine: the worker gone
                _event(events, kind="worker stopped", minute=minute())
                for i in range(args.baseline):
                    task = task_list[i % len(task_list)]
                    body = {"tasks": [task], "label_config": label_config, "project": f"{pid}.1"}
                    _event(events, kind="predict", minute=minute(), ms=round(_time_predict(http, backend, body), 1),
                           worker="stopped")
            result["idle_state"] = idle_training.idle_state(conn, pid)
            _stop(procs)
        return result
    finally:
        _kill(procs)


def score_versions(args, out: Path) -> list[dict]:
    """Every registered version on the held-out photos, oldest first."""
    from shoeseg.data import subset
    from shoeseg.evaluate import evaluate
    from shoeseg.predict import Predictor
    from shoeseg_services.registry import ModelRegistry
    from via_tools.io import load
    from via_tools.options import ReadOptions

    data = Path(args.data)
    ds = load(data / "via_project.json", options=ReadOptions(images_dir=data / "images"))
    plan = shoes_plan(ds, tiny=args.tiny, hold_back=args.hold_back)
    held = subset(ds, plan["held_out"])
    registry = ModelRegistry(out / "run" / "models")
    rows = []
    for mv in sorted(registry.versions(), key=lambda v: v.created_at):
        predictor = Predictor.from_checkpoint(mv.checkpoint, device="cpu")
        res = evaluate(predictor, held, images_dir=data / "images", with_losses=False)
        ann = res.annotator.to_json() if res.annotator is not None else {}
        cfg = mv.meta.get("train_config") or {}
        rows.append({"version": mv.version, "kind": mv.meta.get("kind") or "round", "created_at": mv.created_at,
                     "promoted": bool(mv.meta.get("promoted")), "reason": mv.meta.get("reason"),
                     "gate": mv.recorded("gate"), "labels": mv.metrics.get("train_tasks"),
                     "trained_from": mv.meta.get("trained_from", mv.parent),
                     "iters": cfg.get("iters"), "size": cfg.get("min_size"),
                     "segm_AP": res.metrics.get("segm_AP"), "segm_AP75": res.metrics.get("segm_AP75"),
                     "annotator": ann})
        print(f"{mv.version}: held-out mask AP {res.metrics.get('segm_AP')}", flush=True)
    return rows


def _f(v, spec=".3f") -> str:
    return "–" if v is None else format(v, spec)


def _served_at(events: list[dict], minute: float) -> str | None:
    """The version served at ``minute``: the last one promoted at or before it."""
    served = None
    for e in events:
        if e.get("kind") == "promoted" and e["minute"] <= minute:
            served = e["version"]
    return served


def _latency_by_served_version(rows: list[dict], events: list[dict]) -> list[str]:
    """The latency table again, split by the version served (its input size sets most of the cost), and the
    ratio the target asks for where the same model, or a model of the same input size, was served both with an
    idle chunk running and with the worker stopped (the last version): so that only the worker's load differs."""
    size = {r["version"]: r.get("size") for r in rows}
    groups: dict[tuple[str, str], list[float]] = {}
    for e in events:
        if e.get("kind") == "predict":
            groups.setdefault((e["worker"], _served_at(events, e["minute"]) or "–"), []).append(e["ms"])
    table = [[w, v, str(size.get(v, "–")), str(p["n"]), _f(p["p50"], ".0f"), _f(p["p95"], ".0f")]
             for (w, v), p in ((k, _percentiles(vals)) for k, vals in sorted(groups.items()))]
    lines = ["`/predict` by what the worker was doing and the version served:", "",
             _markdown(["worker", "served version", "px", "requests", "p50", "p95"], table), ""]
    for what, key in (("the same version", lambda v: v), ("versions of the same input size", lambda v: size.get(v))):
        for k in sorted({key(v) for (w, v) in groups if w == "stopped"}, key=str):
            idle = [ms for (w, v), vals in groups.items() if w == "idle chunk" and key(v) == k for ms in vals]
            alone = [ms for (w, v), vals in groups.items() if w == "stopped" and key(v) == k for ms in vals]
            if idle and alone:
                a, b = _percentiles(idle), _percentiles(alone)
                lines += [f"{what} served ({k}): p50 {a['p50']:.0f} ms with an idle chunk running ({a['n']} requests), "
                          f"{b['p50']:.0f} ms with the worker stopped ({b['n']}): {a['p50'] / b['p50']:.2f}x", ""]
    return lines


def report(out: Path, result: dict, rows: list[dict], events: list[dict]) -> str:
    promoted_at = {e["version"]: e["minute"] for e in events if e.get("kind") == "promoted"}
    t_import = next((e["minute"] for e in events if e.get("kind") == "imported"), 0.0)
    lines = [f"# The improving loop: {result.get('minutes')} minutes, {result.get('labelled_at_import')} labels at "
             f"import" + (f", {result['added']} added at minute {result['add_at']}" if result.get("added") else "")
             + f"; held-out: {result.get('held_out')} photos outside the project", ""]
    header = ["version", "kind", "trained from", "labels", "iters", "px", "promoted at min", "held-out mask AP", "AP75",
              "IoU>=0.85", "IoU>=0.75", "FP/img", "missed", "gate: diff [interval] on n", "decision"]
    table = []
    for r in rows:
        g = r.get("gate") or {}
        gate = evidence_text(g) or "–"
        share = (r["annotator"] or {}).get("matched_share") or {}
        table.append([r["version"], r["kind"], r.get("trained_from") or "–", str(r["labels"]), str(r["iters"]),
                      str(r["size"]),
                      _f(promoted_at.get(r["version"]), ".1f") if r["promoted"] else "not promoted",
                      _f(r["segm_AP"]), _f(r["segm_AP75"]), _f(share.get("iou>=0.85"), ".2f"),
                      _f(share.get("iou>=0.75"), ".2f"),
                      _f((r["annotator"] or {}).get("false_positives_per_image"), ".2f"),
                      str((r["annotator"] or {}).get("missed", "–")),
                      gate, "promoted" if r["promoted"] else (g.get("reason") or r.get("reason") or "")[:60]])
    lines += [_markdown(header, table), ""]
    lat = {}
    for e in events:
        if e.get("kind") == "predict":
            lat.setdefault(e["worker"], []).append(e["ms"])
    lat_rows = [[k, str(p["n"]), _f(p["p50"], ".0f"), _f(p["p95"], ".0f")]
                for k, p in ((k, _percentiles(v)) for k, v in sorted(lat.items()))]
    lines += ["`/predict`, one task, ms, by what the worker was doing:", "",
              _markdown(["worker", "requests", "p50", "p95"], lat_rows), ""]
    lines += _latency_by_served_version(rows, events)
    first = min((promoted_at[r["version"]] for r in rows if r["promoted"] and r["version"] in promoted_at),
                default=None)
    lines.append(f"first version served at minute {_f(first, '.1f')} (import at {t_import:.1f}); idle state at the "
                 f"end: {result.get('idle_state')}")
    text = "\n".join(lines) + "\n"
    (out / "improving.md").write_text(text, encoding="utf-8")
    return text


def plot(out: Path, result: dict, rows: list[dict], events: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    promoted_at = {e["version"]: e["minute"] for e in events if e.get("kind") == "promoted"}
    created = {}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs, ys = [], []
    for r in rows:
        if r["promoted"] and r["version"] in promoted_at and r["segm_AP"] is not None:
            xs.append(promoted_at[r["version"]])
            ys.append(r["segm_AP"])
            ax.annotate(f"{r['labels']} labels" if r["kind"] == "round" else "", (xs[-1], ys[-1]),
                        textcoords="offset points", xytext=(4, -12), fontsize=8)
        created[r["version"]] = r
    if xs:
        ax.step(xs + [result.get("minutes", xs[-1])], ys + [ys[-1]], where="post", color="tab:blue",
                label="served version (held-out mask AP)")
        ax.scatter(xs, ys, color="tab:blue", zorder=3)
    if result.get("add_at") is not None:
        ax.axvline(result["add_at"], color="tab:green", linestyle="--", label=f"{result.get('added')} labels added")
    ax.set_xlabel("minutes since the import")
    ax.set_ylabel("mask AP on 23 held-out photos")
    ax.set_title("ShoeSeg left running on 2 CPU cores: every promoted version")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    path = out / "improving.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHOES))
    parser.add_argument("--out", default="bench/out/improving")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--add-at", type=float, default=None, help="minute at which the held-back labels are added")
    parser.add_argument("--hold-back", type=int, default=None)
    parser.add_argument("--latency-every", type=float, default=20.0)
    parser.add_argument("--baseline", type=int, default=40, help="/predict requests with the worker stopped")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="SHOESEG_NAME=VALUE",
                        help="a setting of the stack other than make up's default (repeatable; recorded in the report)")
    parser.add_argument("--score-only", action="store_true", help="score the versions of an earlier run again")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report and the plot of an earlier run again from its improving.json")
    args = parser.parse_args(argv)
    args.settings = dict(item.split("=", 1) for item in args.set if "=" in item)
    if len(args.settings) != len(args.set) or not all(k.startswith("SHOESEG_") for k in args.settings):
        parser.error(f"--set takes SHOESEG_NAME=VALUE, got {args.set}")
    if args.tiny and args.minutes == 60.0:
        args.minutes = 4.0
    data = Path(args.data)
    if not (data / "via_project.json").is_file():
        print(f"bench_improving: skipped: {data}/via_project.json is needed (the shared datasets are absent)")
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    events_path = out / "events.jsonl"
    if args.score_only or args.report_only:
        result = json.loads((out / "improving.json").read_text(encoding="utf-8"))["run"]
    else:
        events_path.unlink(missing_ok=True)
        result = run_stack(args, out, events_path)
        (out / "improving.json").write_text(json.dumps({"run": result}, indent=1), encoding="utf-8")
    events = [json.loads(line) for line in events_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if args.report_only:
        rows = json.loads((out / "improving.json").read_text(encoding="utf-8"))["versions"]
        print(report(out, result, rows, events))
        print(f"plot: {plot(out, result, rows, events)}")
        return
    rows = score_versions(args, out)
    (out / "improving.json").write_text(json.dumps({"run": result, "versions": rows}, indent=1, default=str),
                                        encoding="utf-8")
    print(report(out, result, rows, events))
    print(f"plot: {plot(out, result, rows, events)}")


if __name__ == "__main__":
    main()
