"""`stowaway run | demo | replay | alerts`: the daemon and the batch work, from the command line.

* run     the daemon (scheduler/daemon.py) with a TOML config.
* demo    no config, no service: train baselines on the bundled benign recording, replay the bundled
          attack recordings, print the alert table, write alerts.jsonl and report.html.
* replay  batch over recordings, a day of rotated logs per host (scheduler/backfill.py; on Dask
          too), or a Zeek log directory plus an osqueryd results log.
* alerts  list and filter an alerts.jsonl.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from scheduler.alerting.alerts import read_alerts, summarize_evidence
from scheduler.alerting.textsafe import escape_text
from scheduler.config import Config, check_paths, load_config

log = logging.getLogger(__name__)

DEMO_TRAIN = "benign_long"
DEMO_ATTACKS = ("geo_lookup", "churn", "drift")
DEMO_NEGATIVE = "benign"
DEMO_K8S = ("k8s_geo", "k8s_churn")     # with an API server audit log (docs/kubernetes.md)


# ----------------------------------------------------------------------------------- parsers

def add_parser(subparsers: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter

    p = subparsers.add_parser(
        "run", formatter_class=fmt, help="run the detection daemon (APScheduler jobs)",
        description="Run the daemon: collect osquery results and Zeek logs every few seconds, score "
                    "feature windows against per-image baselines at each window end, retrain daily "
                    "per environment, prune by retention. SIGTERM/SIGINT stop it cleanly.",
        epilog="example:\n  stowaway run --config /etc/stowaway/stowaway.toml\n"
               "See stowaway.example.toml and docs/scheduler.md for every setting.")
    p.add_argument("--config", "-c", default="stowaway.toml", help="TOML config (default: %(default)s)")
    p.add_argument("--once", action="store_true",
                   help="one collect + score + deliver cycle, then exit (cron-style use, tests)")
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser(
        "demo", formatter_class=fmt, help="replay the bundled recordings end to end (no set-up)",
        description="The whole pipeline on real recordings, with no configuration and no service: "
                    f"train per-image baselines on '{DEMO_TRAIN}' (30 min of benign containers), "
                    f"replay {', '.join(DEMO_ATTACKS)} (and '{DEMO_NEGATIVE}' as a negative control), "
                    "print the alerts, check them against the recordings' ground truth, and write "
                    "alerts.jsonl and report.html.",
        epilog="example:\n  stowaway demo --out demo-out && xdg-open demo-out/report.html")
    p.add_argument("--out", default="demo-out", help="output directory (default: %(default)s)")
    p.add_argument("--data", default=None,
                   help="recordings directory (default: the bundled scheduler/demo_data; built from "
                        "../shared/fixtures when missing)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--wide", action="store_true", help="do not shorten table columns")
    p.set_defaults(func=cmd_demo)

    p = subparsers.add_parser(
        "replay", formatter_class=fmt, help="batch detection over recordings or a day of logs",
        description=(
            "Run the pipeline over recordings (directories with meta.json, osquery/ and zeek/,\n"
            "see docs/recordings.md), over a day of rotated logs per host, or over a Zeek log\n"
            "directory plus an osqueryd results log.\n\n"
            "Backfill: a DIR may hold one directory per host or sensor, each with zeek/ (rotated\n"
            "<stream>.<stamp>.log.gz as Zeek or zeekctl write them, or a zeek -r run's\n"
            "<stream>.log) and/or osquery/ (osqueryd.results.log.N[.gz] ... .1 and the current\n"
            "file); rotated files are read oldest first. Each host runs through a pipeline of its\n"
            "own, with a progress bar over the input's bytes, a line per host and a summary line\n"
            "(lines read, records, bad lines, alerts, seconds, lines/s). With --dask-scheduler or\n"
            "--dask-local the hosts run on a Dask cluster's workers (the files at the same paths\n"
            "there), with the same alerts as in one process. docs/scheduler.md, Backfill.\n\n"
            "Progress is checkpointed in the state DB: a killed replay run again resumes (in one\n"
            "process at the last committed chunk; on Dask the hosts already done are not run\n"
            "again) and writes no alert twice."),
        epilog="examples:\n"
               "  stowaway replay scheduler/demo_data/geo_lookup --out alerts.jsonl\n"
               "  stowaway replay /srv/backfill/2026-12-01 --out day.jsonl   # <host>/{zeek,osquery}/\n"
               "  stowaway replay /srv/backfill/2026-12-01 --dask-scheduler tcp://10.0.0.5:8786\n"
               "  stowaway replay /srv/backfill/2026-12-01 --dask-local 2\n"
               "  stowaway replay --zeek-dir /var/log/zeek/2026-11-27 \\\n"
               "      --osquery-log /var/log/osquery/osqueryd.results.log --out alerts.jsonl\n"
               "  stowaway replay rec/ --train scheduler/demo_data/benign_long --report r.html")
    p.add_argument("recordings", nargs="*", metavar="DIR",
                   help="recording directories, host directories or day directories of hosts")
    p.add_argument("--zeek-dir", help="directory with conn/dns/http/ssl/container_geo logs")
    p.add_argument("--osquery-log", help="osqueryd results log (plain or .gz)")
    p.add_argument("--k8s-audit-log", help="Kubernetes API server audit log (JSON lines of "
                   "audit.k8s.io/v1 Events, plain or .gz; docs/kubernetes.md)")
    p.add_argument("--host", default="", help="host name for --zeek-dir/--osquery-log input")
    p.add_argument("--config", "-c", help="TOML config (detection settings, sinks)")
    p.add_argument("--out", default="alerts.jsonl", help="alerts JSONL (default: %(default)s)")
    p.add_argument("--state-db", default=None,
                   help="SQLite state for resumable replays (default: <out>.state.db)")
    p.add_argument("--fresh", action="store_true", help="ignore saved replay progress")
    p.add_argument("--models", help="model store directory: score with its current baselines")
    p.add_argument("--train", action="append", default=[],
                   help="benign recording to train baselines on first (repeatable)")
    p.add_argument("--report", help="also write an HTML report here")
    p.add_argument("--json", action="store_true", help="print alerts as JSON lines")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--dask-scheduler", metavar="ADDR",
                   help="replay the hosts on this dask.distributed scheduler's workers")
    p.add_argument("--dask-local", type=int, metavar="WORKERS",
                   help="start a Dask LocalCluster with this many worker processes for the hosts")
    p.set_defaults(func=cmd_replay)

    p = subparsers.add_parser(
        "alerts", formatter_class=fmt, help="list and filter alerts from alerts.jsonl",
        description="List alerts from a JSONL file written by the pipeline, newest last.",
        epilog="examples:\n  stowaway alerts --file demo-out/alerts.jsonl --rule location_discovery\n"
               "  stowaway alerts --container web-2 --since 2026-11-27T19:00:00Z --json")
    p.add_argument("--file", "-f", default=None,
                   help="alerts JSONL (default: sinks.jsonl of --config, else ./alerts.jsonl)")
    p.add_argument("--config", "-c", help="TOML config to find the alerts file")
    p.add_argument("--rule", action="append", help="only this rule (repeatable)")
    p.add_argument("--container", help="container id prefix or name")
    p.add_argument("--image", help="image name (substring)")
    p.add_argument("--severity", help="minimum severity: low, medium, high")
    p.add_argument("--since", help="ISO time (2026-11-27T19:00:00Z), epoch seconds, or an age "
                                   "like 15m / 2h / 1d")
    p.add_argument("--limit", type=int, default=0, help="only the last N")
    p.add_argument("--json", action="store_true", help="print the JSON lines")
    p.set_defaults(func=cmd_alerts)


# ----------------------------------------------------------------------------------- run

def cmd_run(args: argparse.Namespace) -> int:
    from scheduler.daemon import run_daemon

    if not Path(args.config).exists():
        print(f"stowaway run: config {args.config} not found (copy stowaway.example.toml)",
              file=sys.stderr)
        return 2
    cfg = load_config(args.config)
    problems = check_paths(cfg)      # before anything is opened: one line each, exit 2
    if problems:
        for p in problems:
            print(f"stowaway run: {args.config}: {p}", file=sys.stderr)
        return 2
    return run_daemon(cfg, once=args.once)


# ----------------------------------------------------------------------------------- tables

def _short(s: str, n: int) -> str:
    """Escaped (control characters made visible: the text comes from containers), then cut."""
    s = escape_text(s)
    return s if len(s) <= n else s[: n - 1] + "…"


def group_rows(alerts: list[dict[str, Any]], min_group: int = 5) -> list[dict[str, Any]]:
    """Table rows; many alerts of one rule on one image, each on a different container (a churn
    burst), collapse into one row that says how many containers."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for a in alerts:
        groups.setdefault((a.get("_scenario", ""), a["rule"], a["container"].get("image", "")),
                          []).append(a)
    rows = []
    for (scn, rule, image), members in groups.items():
        names = {m["container"].get("id") or m["container"].get("name") for m in members}
        if len(members) >= min_group and len(names) == len(members):
            first = min(members, key=lambda m: m["time"])
            fb = sum(1 for m in members if (m.get("details") or {}).get("baseline_fallback"))
            rows.append({"time": first["time"], "scenario": scn, "rule": rule,
                         "container": f"{len(members)} containers ({first['container'].get('name')}, …)",
                         "image": image,
                         "evidence": ("e.g. " + summarize_evidence(first.get("evidence", []))
                                      + (f" [cold-start fallback on {fb}]" if fb else "")),
                         "repeats": sum(m.get("_repeats", 0) for m in members)})
        else:
            for m in members:
                c = m["container"]
                rows.append({"time": m["time"], "scenario": scn, "rule": rule,
                             "container": c.get("name") or (c.get("id") or "")[:12] or "container unknown",
                             "image": image, "evidence": summarize_evidence(m.get("evidence", [])),
                             "repeats": m.get("_repeats", 0)})
    rows.sort(key=lambda r: (r["time"], r["rule"]))
    return rows


def print_table(rows: list[dict[str, Any]], wide: bool = False, stream: Any = None) -> None:
    stream = stream or sys.stdout
    width = shutil.get_terminal_size((220, 40)).columns
    cols = [("scenario", 10), ("rule", 22), ("container", 26), ("image", 27), ("rep", 3),
            ("evidence", 0)]
    fixed = sum(w + 2 for _, w in cols[:-1])
    ev_w = 10_000 if wide else max(60, width - fixed)
    head = "  ".join(f"{name:<{w}}" for name, w in cols[:-1]) + "  evidence"
    stream.write(head + "\n" + "-" * min(len(head) + 40, max(width, 100)) + "\n")
    for r in rows:
        vals = [r["scenario"], r["rule"], r["container"], r["image"], str(r["repeats"] or "")]
        line = "  ".join(f"{_short(str(v), w) if not wide else escape_text(v):<{w}}"
                         for v, (_, w) in zip(vals, cols[:-1]))
        stream.write(line + "  " + _short(r["evidence"], ev_w) + "\n")
    stream.flush()


# ----------------------------------------------------------------------------------- demo

def _fixtures_dir() -> Path | None:
    env = os.environ.get("STOWAWAY_FIXTURES")
    cands = [Path(env) / "container-scenarios"] if env else []
    repo = Path(__file__).resolve().parents[2]
    cands += [repo / "tests" / "data" / "container-scenarios"]   # a source checkout
    return next((c for c in cands if c.is_dir()), None)


def find_demo_data(explicit: str | None, out: Path) -> Path:
    """The bundled recordings; built from the fixture-layout scenarios (tests/data in a source
    checkout, or STOWAWAY_FIXTURES) into <out> when not bundled."""
    from scheduler.collect.recording import demo_data_dir

    needed = (DEMO_TRAIN, *DEMO_ATTACKS)
    cands = [Path(explicit)] if explicit else [demo_data_dir(), out / "demo_data"]
    for c in cands:
        if all((c / n / "meta.json").exists() for n in needed):
            return c
    if explicit:
        raise SystemExit(f"stowaway demo: {explicit} lacks one of {', '.join(needed)}")
    fx = _fixtures_dir()
    if fx is None:
        raise SystemExit("stowaway demo: no bundled recordings (scheduler/demo_data) and no "
                         "shared fixtures to build them from")
    print(f"bundled recordings missing: converting {fx} -> {out / 'demo_data'}")
    from scheduler.collect import recording

    target = out / "demo_data"
    target.mkdir(parents=True, exist_ok=True)
    rc = recording.main(["build-demo", "--fixtures", str(fx), "--out", str(target)]) \
        if hasattr(recording, "main") else 1
    if rc not in (0, None) or not all((target / n / "meta.json").exists() for n in needed):
        raise SystemExit("stowaway demo: building the recordings failed")
    return target


def demo_config(out: Path) -> Config:
    cfg = Config()
    cfg.environment = "default"
    cfg.state_db = str(out / "state.db")
    cfg.sinks.jsonl = str(out / "alerts.jsonl")
    cfg.model.dir = str(out / "models")
    # The demo trains on a 30-minute recording (benign_long): in 60 s windows cron:1.0 has 31
    # windows, worker 62, webapp 186. Under the default of 50 cron would never get its own
    # baseline, so the demo asks for 20 here; a real deployment keeps the default (50).
    cfg.model.min_windows = 20
    # The k8s recordings carry two hours of audit history before the attack; the first hour
    # is their baseline (a deployment learns for a week, kubernetes.baseline_s).
    cfg.kubernetes.baseline_s = 3600.0
    return cfg


def cmd_demo(args: argparse.Namespace) -> int:
    from scheduler.replay import check_ground_truth, replay, train_from_recordings
    from scheduler.collect.k8s_recording import check_k8s_ground_truth
    from scheduler.collect.recording import Recording
    from scheduler.alerting.report import Section, write_report
    from scheduler.alerting.sinks import build_sinks

    t_start = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = find_demo_data(args.data, out)
    # A demo always starts clean: the same input gives the same alert ids anyway.
    for name in ("alerts.jsonl", "report.html", "state.db", "state.db-wal", "state.db-shm"):
        (out / name).unlink(missing_ok=True)
    cfg = demo_config(out)
    progress = not args.no_progress
    print(f"Stowaway demo: recordings from {data}")

    print(f"\n[1/3] training per-image baselines on '{DEMO_TRAIN}' "
          f"(window {cfg.detection.window_s:g}s)")
    eb, fw = train_from_recordings([data / DEMO_TRAIN], cfg, progress=progress,
                                   model_dir=cfg.model.dir)
    scorer = _compiled(eb)      # scored as the daemon scores: compiled arrays
    for key, n in sorted(eb.window_counts.items()):
        scope = "own baseline" if key in eb.models else \
            f"< {eb.min_windows} windows: environment-wide fallback"
        print(f"      {key:<30} {n:>4} windows  {scope}")

    sinks = build_sinks(cfg.sinks)
    scenarios = [*DEMO_ATTACKS] + [k for k in DEMO_K8S if (data / k / "meta.json").exists()] \
        + ([DEMO_NEGATIVE] if (data / DEMO_NEGATIVE / "meta.json").exists() else [])
    print(f"\n[2/3] replaying {', '.join(scenarios)}")
    sections, all_rows, coverage_all = [], [], []
    counts = {}
    try:
        for sc in scenarios:
            res = replay(data / sc, cfg, scorer, sinks=sinks, state_db=cfg.state_db,
                         progress=progress)
            alerts = [a.to_dict() for a in res.alerts]
            rep_count: dict[str, int] = {}
            for r in res.repeats:
                rep_count[r["alert_id"]] = rep_count.get(r["alert_id"], 0) + 1
            for a in alerts:
                a["_scenario"], a["_repeats"] = sc, rep_count.get(a["id"], 0)
            gt = Recording(data / sc).ground_truth()
            cov = check_ground_truth(gt, alerts, cfg.detection.suppression_s)
            cov += check_k8s_ground_truth(gt, alerts)     # requester named, k8s alerts
            coverage_all.extend(cov)
            counts[sc] = len(alerts)
            bad = res.stats.get("zeek", {}).get("bad_lines", 0) + \
                res.stats.get("osquery", {}).get("malformed", 0)
            ok = sum(1 for c in cov if c["alert_id"])
            gt_note = f"ground truth {ok}/{len(cov)} actions alerted" if cov else \
                "no labelled actions (benign): expect no alerts"
            print(f"      {sc:<11} {res.items:>6} records  {len(alerts):>3} alerts  "
                  f"{len(res.repeats):>3} repeats suppressed  {bad} bad lines  {gt_note}")
            sections.append(Section(title=f"{sc}: {len(alerts)} alerts", alerts=alerts,
                                    repeats=res.repeats, coverage=cov,
                                    note=f"{res.items} records replayed; {gt_note}."))
            all_rows.extend(group_rows(alerts))
    finally:
        sinks.close()

    print(f"\n[3/3] alerts ({sum(counts.values())} total; rows of many containers of one image "
          f"are grouped; rep = repeats kept quiet by the suppression window)\n")
    print_table(all_rows, wide=args.wide)
    missed = [c for c in coverage_all if not c["alert_id"]]
    ok = len(coverage_all) - len(missed)
    print(f"\nground truth: {ok}/{len(coverage_all)} labelled actions have an alert on the right "
          f"container and image" + (f"; MISSED: {', '.join(c['action_id'] for c in missed)}"
                                    if missed else ""))
    if DEMO_NEGATIVE in counts:
        print(f"negative control '{DEMO_NEGATIVE}': {counts[DEMO_NEGATIVE]} alerts")
    report = write_report(out / "report.html", sections, title="Stowaway demo",
                          summary={"alerts": sum(counts.values()),
                                   "ground truth": f"{ok}/{len(coverage_all)}",
                                   "trained on": DEMO_TRAIN, "window": f"{cfg.detection.window_s:g}s"})
    print(f"\nwrote {out / 'alerts.jsonl'} and {report}  ({time.monotonic() - t_start:.1f}s)")
    return 0 if not missed else 1


# ----------------------------------------------------------------------------------- replay

def _logs_as_recording(zeek_dir: str | None, osquery_log: str | None, host: str,
                       k8s_log: str | None = None) -> Path:
    """A temporary recording directory (symlinks) around loose logs, so one code path reads all."""
    from scheduler.pipeline import ZEEK_STREAMS

    d = Path(tempfile.mkdtemp(prefix="stowaway-replay-"))
    (d / "zeek").mkdir()
    (d / "osquery").mkdir()
    if osquery_log:
        src = Path(osquery_log).resolve()
        name = "osqueryd.results.log.gz" if src.name.endswith(".gz") else "osqueryd.results.log"
        (d / "osquery" / name).symlink_to(src)
    if zeek_dir:
        for stream in ZEEK_STREAMS:
            for cand in (f"{stream}.log", f"{stream}.log.gz"):
                src = Path(zeek_dir) / cand
                if src.exists():
                    (d / "zeek" / cand).symlink_to(src.resolve())
                    break
    if k8s_log:
        src = Path(k8s_log).resolve()
        (d / "k8s").mkdir()
        (d / "k8s" / ("audit.log.gz" if src.name.endswith(".gz") else "audit.log")).symlink_to(src)
    name = Path(zeek_dir or osquery_log or "logs").name
    (d / "meta.json").write_text(json.dumps({"name": name, "host": host, "environment": "default",
                                             "source": "stowaway replay", "time_range": [0, 0]}))
    return d


def _compiled(eb: Any) -> Any:
    """Freshly trained baselines as the daemon scores with them (model.compiled: the same
    scores bit for bit, from arrays), carrying the training destinations (misuse_baseline)."""
    from model.compiled import compile_baselines

    return compile_baselines(eb)


def replay_mode(baselines: Any, cfg: Config) -> str:
    """One line saying what a replay will detect with, so rules-only runs are never silent."""
    if not cfg.detection.anomaly:
        return "rules only (detection.anomaly is off)"
    if baselines is None:
        return ("rules only: no baselines (give --train BENIGN_RECORDING or --models DIR to score "
                "feature windows)")
    models = getattr(baselines, "models", {}) or {}
    fallback = getattr(baselines, "fallback", None) is not None
    return (f"rules + anomaly scoring with {len(models)} image model(s)"
            f"{' + environment-wide fallback' if fallback else ''}"
            f" (environment {getattr(baselines, 'environment', cfg.environment)!r})")


def _bad_input_line(name: str, stats: dict[str, Any]) -> str | None:
    """What of a replay's input was unreadable, naming files; None when nothing was."""
    z, o = stats.get("zeek", {}), stats.get("osquery", {})
    if not (z.get("bad_lines") or z.get("io_errors") or o.get("malformed") or o.get("io_errors")):
        return None
    return (f"{name}: bad input: zeek {z.get('bad_lines', 0)} lines"
            f" {z.get('bad_by_file') or ''}"
            f"{', %d zeek file(s) unreadable to the end' % z['io_errors'] if z.get('io_errors') else ''}"
            f", osquery {o.get('malformed', 0)} lines"
            f"{', %d osquery file(s) unreadable to the end' % o['io_errors'] if o.get('io_errors') else ''}")


def cmd_replay(args: argparse.Namespace) -> int:
    from scheduler.backfill import LayoutError, check_unique, discover, run_backfill
    from scheduler.replay import train_from_recordings
    from scheduler.alerting.report import Section, write_report
    from scheduler.alerting.sinks import JsonlSink, SinkSet

    cfg = load_config(args.config) if args.config else Config()
    dirs = [Path(r) for r in args.recordings]
    tmp = None
    if args.zeek_dir or args.osquery_log or args.k8s_audit_log:
        tmp = _logs_as_recording(args.zeek_dir, args.osquery_log, args.host or cfg.host_name,
                                 args.k8s_audit_log)
        dirs.append(tmp)
    if not dirs:
        print("stowaway replay: give recording directories or --zeek-dir/--osquery-log",
              file=sys.stderr)
        return 2
    from scheduler.collect.recording import recording_problem

    # Every argument is checked before anything is written: a wrong one leaves no empty output.
    parts = []
    try:
        for d in dirs:
            parts.extend(discover(d))
        check_unique(parts)
        for d in map(Path, args.train):
            problem = recording_problem(d)
            if problem:
                raise LayoutError(problem)
    except LayoutError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"stowaway replay: {exc}", file=sys.stderr)
        return 2
    baselines = None
    progress = not args.no_progress
    if args.train:
        try:
            baselines, train_fw = train_from_recordings(args.train, cfg, progress=progress)
            baselines = _compiled(baselines)
        except ValueError as exc:     # no windows at all: nothing to fit
            baselines, train_fw = None, None
            log.debug("training failed: %s", exc)
        if train_fw is None or len(train_fw) == 0:
            baselines = None
            print(f"stowaway replay: warning: training on {', '.join(args.train)} found no "
                  f"feature windows (windows need the osquery host view: container and process "
                  f"rows; Zeek-only input gives none): the anomaly rule scores nothing",
                  file=sys.stderr)
    elif args.models:
        from model.store import ModelStore
        from scheduler.collect.recording import Recording

        env = cfg.environment
        if env == "default" and dirs and (dirs[0] / "meta.json").exists():
            env = Recording(dirs[0]).meta.environment
        try:
            baselines = ModelStore(args.models).load_compiled(env)
        except Exception as exc:
            print(f"stowaway replay: no baselines for environment {env!r} in {args.models}: {exc}",
                  file=sys.stderr)
            return 2
    print(f"stowaway replay: mode: {replay_mode(baselines, cfg)}", file=sys.stderr)
    state_db = args.state_db or f"{args.out}.state.db"
    sinks = SinkSet([JsonlSink(args.out)])
    sections = []
    client = cluster = None
    try:
        if args.dask_scheduler or args.dask_local:
            import distributed  # noqa: F401  (its import sets its loggers to INFO)

            from scheduler.cli.cmd_model import _dask_client

            if logging.getLogger().level >= logging.WARNING:     # no -v: the summary, not chatter
                logging.getLogger("distributed").setLevel(logging.WARNING)
            client, cluster = _dask_client(args)
        res = run_backfill(parts, cfg, baselines, sinks=sinks, state_db=state_db,
                           resume=not args.fresh, progress=progress, client=client)
        for pr in res.partitions:
            alerts = [a.to_dict() for a in pr.alerts]
            sections.append(Section(title=f"{pr.label}: {len(alerts)} alerts", alerts=alerts,
                                    repeats=pr.repeats))
            bad = _bad_input_line(pr.label, pr.stats)
            if bad:
                print(bad, file=sys.stderr)
            rep_count: dict[str, int] = {}
            for r in pr.repeats:
                rep_count[r["alert_id"]] = rep_count.get(r["alert_id"], 0) + 1
            if args.json:
                for a in alerts:
                    print(json.dumps(a))
            else:
                for a in alerts:
                    a["_scenario"], a["_repeats"] = pr.label, rep_count.get(a["id"], 0)
                print_table(group_rows(alerts, min_group=10**9))
                for a in alerts:
                    a.pop("_scenario"), a.pop("_repeats")
    finally:
        sinks.close()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.report:
        write_report(args.report, sections, title="Stowaway replay")
    return 0


# ----------------------------------------------------------------------------------- alerts

SEV = {"low": 1, "medium": 2, "high": 3, "critical": 4}


def parse_since(s: str, now: float | None = None) -> float:
    """ISO time, epoch seconds, or an age like 30s/15m/2h/1d before now."""
    now = time.time() if now is None else now
    s = s.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if s and s[-1] in units and s[:-1].replace(".", "", 1).isdigit():
        return now - float(s[:-1]) * units[s[-1]]
    try:
        return float(s)
    except ValueError:
        pass
    dt = _dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_dt.timezone.utc)
    return dt.timestamp()


def filter_alerts(alerts: Iterable[dict[str, Any]], rules: list[str] | None = None,
                  container: str | None = None, image: str | None = None,
                  severity: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
    out = []
    for a in alerts:
        c = a.get("container", {})
        if rules and a.get("rule") not in rules:
            continue
        if container and not ((c.get("id") or "").startswith(container)
                              or c.get("name") == container):
            continue
        if image and image not in (c.get("image") or ""):
            continue
        if severity and SEV.get(a.get("severity", ""), 0) < SEV.get(severity, 0):
            continue
        if since is not None and float(a.get("time", 0)) < since:
            continue
        out.append(a)
    out.sort(key=lambda a: a.get("time", 0))
    return out


def cmd_alerts(args: argparse.Namespace) -> int:
    path = args.file
    if not path:
        if args.config:
            path = load_config(args.config).sinks.jsonl
        else:
            path = "alerts.jsonl"
    if not Path(path).exists():
        print(f"stowaway alerts: {path} not found", file=sys.stderr)
        return 2
    errors: list[str] = []
    alerts = read_alerts(path, errors)
    for e in errors[:5]:
        print(f"skipped unreadable line {escape_text(e)}", file=sys.stderr)
    since = parse_since(args.since) if args.since else None
    sel = filter_alerts(alerts, args.rule, args.container, args.image, args.severity, since)
    if args.limit:
        sel = sel[-args.limit:]
    if args.json:
        for a in sel:
            print(json.dumps(a))
        return 0
    rows = []
    for a in sel:
        c = a.get("container", {})
        ts = _dt.datetime.fromtimestamp(a["time"], _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        rows.append((ts, a.get("rule", ""), a.get("severity", ""),
                     c.get("name") or (c.get("id") or "")[:12], c.get("image", ""),
                     summarize_evidence(a.get("evidence", []))))
    print(f"{'time (UTC)':<19}  {'rule':<22}  {'sev':<6}  {'container':<22}  {'image':<27}  evidence")
    for r in rows:
        print(f"{r[0]:<19}  {_short(r[1], 22):<22}  {_short(r[2], 6):<6}  {_short(r[3], 22):<22}  "
              f"{_short(r[4], 27):<27}  {_short(r[5], 100)}")
    print(f"{len(sel)} of {len(alerts)} alerts", file=sys.stderr)
    return 0
