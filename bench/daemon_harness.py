"""What the daemon benchmarks (bench_daemon_rss.py, bench_latency.py, bench_daemon_ingest.py)
share: the config of a `stowaway run` daemon that follows an osqueryd results log and Zeek logs
(dns.log unless told otherwise) in a scratch directory, trained baselines in its model dir
(`train_models`: a deployed daemon has them, and loading them is part of its memory),
and that daemon as a subprocess which is stopped however the measurement ends.

One copy, so every daemon benchmark measures the same daemon set-up. Not named bench_*.py: `make bench`
runs those, this is only imported by them.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]


def write_config(t: Path, host: str, *, address_map: str, collect_interval_s: float,
                 merge_s: float | None = None, lag_s: float | None = None,
                 zeek_streams: tuple[str, ...] = ("dns",)) -> Path:
    """`t/stowaway.toml` for a daemon whose inputs, state and outputs all live in `t`:
    `t/osqueryd.results.log`, `t/zeek/<stream>.log` for each of `zeek_streams`, `t/state.db`,
    `t/alerts.jsonl`, `t/models`. `merge_s` / `lag_s` None keep the shipped merge window and
    daemon lag (an alert is written merge_s + lag_s after its first evidence)."""
    detection = f"[detection]\nmerge_s = {merge_s}\n" if merge_s is not None else ""
    lag = f"lag_s = {lag_s}\n" if lag_s is not None else ""
    cfg = t / "stowaway.toml"
    cfg.write_text(f"""
host = "{host}"
state_db = "{t}/state.db"
[sources]
osquery_results_log = "{t}/osqueryd.results.log"
zeek_log_dir = "{t}/zeek"
zeek_streams = {json.dumps(list(zeek_streams))}
address_map = "{address_map}"
[sinks]
jsonl = "{t}/alerts.jsonl"
[model]
dir = "{t}/models"
windows_db = "{t}/windows.sqlite"
{detection}[daemon]
collect_interval_s = {collect_interval_s}
{lag}""")
    return cfg


def train_models(t: Path, images: Sequence[str], *, windows_per_image: int = 60,
                 environment: str = "default", window_s: float = 60.0) -> str:
    """Baselines for `images` in `t/models`, as `stowaway train` would leave them: one
    EnvironmentBaselines fitted on synthetic windows (`windows_per_image` each, enough for an
    image model of its own at the default min_windows of 50; counts shaped like a quiet
    service) and saved with ModelStore (joblib + compiled files). Returns the version.

    Training imports scikit-learn in this (the bench's) process, never in the daemon's."""
    import numpy as np

    from model.baseline import EnvironmentBaselines
    from model.features import FEATURE_INDEX, FEATURE_NAMES, FeatureWindows
    from model.store import ModelStore

    rng = np.random.default_rng(0)
    parts = []
    for k, image in enumerate(sorted(set(images))):
        n = windows_per_image
        X = np.zeros((n, len(FEATURE_NAMES)))
        for feat, lam in (("dns_queries", 2 + k % 5), ("distinct_domains", 2), ("outbound_conns", 3),
                          ("processes_started", 1 + k % 3), ("http_requests", k % 4),
                          ("distinct_remote_addrs", 2)):
            X[:, FEATURE_INDEX[feat]] = rng.poisson(lam, n)
        X[:, FEATURE_INDEX["container_age_s"]] = np.arange(n) * window_s
        starts = 1_790_000_000.0 + np.arange(n) * window_s
        parts.append(FeatureWindows(X=X, container_id=[f"train{k}"] * n, image=[image] * n,
                                    host=["bench"] * n, window_start=starts,
                                    window_end=starts + window_s, environment=environment,
                                    name=[f"train-{k}"] * n, executables=[("sh", "wget")] * n))
    fw = FeatureWindows.concat(parts)
    models = t / "models"
    models.mkdir(mode=0o700, exist_ok=True)
    eb = EnvironmentBaselines(environment).fit(fw)
    return ModelStore(models).save(eb, window_s=window_s,
                                   training_range=(float(fw.window_start.min()),
                                                   float(fw.window_end.max())))


@contextmanager
def running_daemon(cfg: Path, log_path: Path | None = None) -> Iterator[subprocess.Popen]:
    """`stowaway run --config cfg` from this checkout (its stderr to `log_path` if given);
    SIGTERM (then kill after 30 s) on exit."""
    err = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "run", "--config", str(cfg)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log_path is not None:
            err.close()
