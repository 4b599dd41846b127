"""What the daemon benchmarks (bench_daemon_rss.py, bench_latency.py, bench_daemon_ingest.py)
share: the config of a `stowaway run` daemon that follows an osqueryd results log and Zeek logs
(dns.log unless told otherwise) in a scratch directory,
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
from typing import Iterator

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
