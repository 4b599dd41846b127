"""`stowaway train`, `models`, `rollback`, `compile`: per-image baselines from the CLI.

Why here: training is an operator action (which environment, which time range, where it runs), so
the knobs live on the command line; the work itself is model.retrain / model.store.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime, timezone

log = logging.getLogger(__name__)

DEFAULT_MODELS = os.environ.get("STOWAWAY_MODELS", "models")
DEFAULT_WINDOWS = os.environ.get("STOWAWAY_WINDOWS")   # else <models>/windows.db, where the daemon writes


def parse_time(value: str) -> float:
    """Epoch seconds or ISO 8601 (a trailing Z means UTC; naive times are taken as UTC)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an epoch time or ISO 8601 date: {value!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def add_parser(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models", default=DEFAULT_MODELS, metavar="DIR",
                        help="model store directory (default: $STOWAWAY_MODELS or ./models); must be "
                             "owned by you and not group/other-writable")

    p = subparsers.add_parser(
        "train", parents=[common], formatter_class=fmt,
        help="train per-image baselines from stored feature windows",
        description=(
            "Train one IsolationForest baseline per image (plus an environment-wide fallback for\n"
            "images with fewer than --min-windows windows) from the feature windows the scheduler\n"
            "stored, over a time range, and save them as a new model version.\n\n"
            "examples:\n"
            "  stowaway train --models /var/lib/stowaway/models -e prod --since 2026-11-20 --until 2026-11-27\n"
            "  stowaway train --windows windows.sqlite --models models -e prod\n"
            "  stowaway train -e prod --backend loky --n-jobs 8\n"
            "  stowaway train -e prod --backend dask --dask-scheduler tcp://10.0.0.5:8786\n"
            "  stowaway train -e staging --backend dask --dask-local 4   # local cluster, 4 workers"))
    p.add_argument("--windows", default=DEFAULT_WINDOWS, metavar="SQLITE",
                   help="window store written by the scheduler (default: $STOWAWAY_WINDOWS, else "
                        "<models>/windows.db where the daemon keeps it)")
    p.add_argument("-e", "--environment", action="append", metavar="ENV",
                   help="environment to train (repeatable; default: every environment in the window store)")
    p.add_argument("--since", type=parse_time, metavar="TIME", help="first window start (epoch or ISO 8601)")
    p.add_argument("--until", type=parse_time, metavar="TIME", help="train on windows starting before this")
    p.add_argument("--min-windows", type=int, default=50, metavar="N",
                   help="images with fewer windows use the environment-wide model (default 50)")
    p.add_argument("--grouping", choices=("tag", "repository", "digest"), default="tag",
                   help="image key: registry/repo:tag (default), registry/repo (ignore tags), or by digest")
    p.add_argument("--backend", choices=("sequential", "loky", "threading", "dask"), default="loky",
                   help="joblib backend that trains images in parallel (default loky)")
    p.add_argument("--n-jobs", type=int, default=-1, metavar="N", help="parallel fits (default -1: all cores / workers)")
    p.add_argument("--dask-scheduler", metavar="ADDR", help="dask.distributed scheduler address for --backend dask")
    p.add_argument("--dask-local", type=int, metavar="WORKERS",
                   help="with --backend dask and no scheduler: start a LocalCluster with this many workers")
    p.add_argument("--keep", type=int, default=5, metavar="K", help="model versions kept per environment (default 5)")
    p.add_argument("--n-estimators", type=int, default=100, help="trees per forest (default 100)")
    p.add_argument("--threshold-quantile", type=float, default=0.99,
                   help="training-score quantile the threshold starts from (default 0.99)")
    p.add_argument("--threshold-margin", type=float, default=0.05,
                   help="added to that quantile (default 0.05)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the retrain report as JSON")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("models", parents=[common], help="list model versions per environment",
                              description="List stored model versions (manifests only; nothing is unpickled).")
    p.add_argument("-e", "--environment", action="append", metavar="ENV", help="only this environment (repeatable)")
    p.add_argument("--verify", action="store_true", help="also check ownership, modes and sha256 of every file")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_models)

    p = subparsers.add_parser("rollback", parents=[common], help="make an older model version current",
                              description="Point an environment at an older model version (verified first).")
    p.add_argument("-e", "--environment", required=True, metavar="ENV")
    p.add_argument("--to", metavar="VERSION", help="version to activate (default: the one before the current)")
    p.set_defaults(func=cmd_rollback)

    p = subparsers.add_parser(
        "compile", parents=[common], help="write the compiled files the daemon scores from",
        description=("Write the compiled baselines (.npz arrays beside the joblib files, in the\n"
                     "manifest with their sha256) of a version saved before they existed, so the\n"
                     "daemon and `stowaway replay --models` score without scikit-learn in the\n"
                     "process. Versions trained now have them already."))
    p.add_argument("-e", "--environment", action="append", metavar="ENV",
                   help="environment (repeatable; default: every environment in the store)")
    p.add_argument("--version", metavar="VERSION", help="version to compile (default: the current one)")
    p.set_defaults(func=cmd_compile)


def _dask_client(args):
    from dask.distributed import Client, LocalCluster

    if args.dask_scheduler:
        return Client(args.dask_scheduler), None
    cluster = LocalCluster(n_workers=args.dask_local or 2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    return Client(cluster), cluster


def cmd_train(args: argparse.Namespace) -> int:
    from model.retrain import retrain
    from model.store import ModelStore
    from model.windowstore import WindowStore

    if not args.windows:
        args.windows = os.path.join(args.models, "windows.db")
    if not os.path.exists(args.windows):
        print(f"stowaway train: no window store at {args.windows}", file=sys.stderr)
        return 2
    store = ModelStore(args.models, keep=args.keep)
    params = {"n_estimators": args.n_estimators, "threshold_quantile": args.threshold_quantile,
              "threshold_margin": args.threshold_margin}
    client = cluster = None
    backend = None if args.backend == "sequential" else args.backend
    n_jobs = 1 if args.backend == "sequential" else args.n_jobs
    if args.backend == "dask":
        client, cluster = _dask_client(args)
    reports = []
    try:
        with WindowStore(args.windows) as ws:
            envs = args.environment or ws.environments()
            if not envs:
                print("stowaway train: the window store holds no windows", file=sys.stderr)
                return 2
            for env in envs:
                summary = ws.summary(env)
                total = 1 + sum(1 for n in summary["per_image"].values() if n >= args.min_windows)
                bar = None
                if not args.no_progress:
                    from tqdm import tqdm
                    bar = tqdm(total=total, desc=f"train {env}", unit="model", file=sys.stderr)
                try:
                    report = retrain(ws, store, env, args.since, args.until, min_windows=args.min_windows,
                                     grouping=args.grouping, params=params, backend=backend, n_jobs=n_jobs,
                                     progress=(lambda _k: bar.update(1)) if bar else None)
                except ValueError as exc:
                    print(f"stowaway train: {env}: {exc}", file=sys.stderr)
                    return 1
                finally:
                    if bar:
                        bar.close()
                reports.append(report)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        for r in reports:
            print(r.to_text())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from model.store import ModelStore, UntrustedModelError

    store = ModelStore(args.models)
    envs = args.environment or store.environments()
    out = {}
    status = 0
    for env in envs:
        rows = store.describe(env)
        if args.verify:
            for row in rows:
                try:
                    store.verify(env, row["version"])
                    row["verified"] = True
                except (UntrustedModelError, OSError) as exc:
                    row["verified"] = False
                    row["error"] = str(exc)
                    status = 1
        out[env] = rows
    if args.json:
        print(json.dumps(out, indent=2))
        return status
    if not out:
        print(f"no models under {store.root}")
    for env, rows in out.items():
        print(f"{env}:")
        for r in rows:
            mark = "*" if r.get("current") else " "
            if "error" in r and "images" not in r:
                print(f" {mark} {r['version']}  UNREADABLE: {r['error']}")
                continue
            when = datetime.fromtimestamp(r["created"], timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
            extra = ""
            if args.verify:
                extra = "  verified" if r.get("verified") else f"  REFUSED: {r.get('error')}"
            print(f" {mark} {r['version']}  {when}  windows={r['windows_used']}  "
                  f"images={len(r['images'])}  sklearn={r['sklearn_version']}{extra}")
    return status


def cmd_rollback(args: argparse.Namespace) -> int:
    from model.store import ModelStore, UntrustedModelError

    store = ModelStore(args.models)
    try:
        before = store.current_version(args.environment)
        now = store.rollback(args.environment, args.to)
    except (ValueError, UntrustedModelError, OSError) as exc:
        print(f"stowaway rollback: {exc}", file=sys.stderr)
        return 1
    print(f"{args.environment}: {before} -> {now}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from model.compiled import CompileError
    from model.store import ModelStore, UntrustedModelError

    store = ModelStore(args.models)
    envs = args.environment or store.environments()
    if not envs:
        print(f"stowaway compile: no models under {store.root}", file=sys.stderr)
        return 2
    for env in envs:
        try:
            version = store.compile(env, args.version)
        except (CompileError, UntrustedModelError, OSError, ValueError) as exc:
            print(f"stowaway compile: {env}: {exc}", file=sys.stderr)
            return 1
        print(f"{env}: {version} compiled")
    return 0
