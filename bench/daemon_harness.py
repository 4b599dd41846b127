"""What the daemon benchmarks (bench_daemon_rss.py, bench_latency.py) share: the config of a
`stowaway run` daemon that follows an osqueryd results log and a Zeek dns.log in a scratch directory,
and that daemon as a subprocess which is stopped however the measurement ends.

One copy, so both benchmarks measure the same daemon set-up. Not named bench_*.py: `make bench`
runs those, this is only imported by them.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]


def write_config(t: Path, host: str, *, address_map: str, collect_interval_s: float,
                 merge_s: float | None = None) -> Path:
    """`t/stowaway.toml` for a daemon whose inputs, state and outputs all live in `t`:
    `t/osqueryd.results.log`, `t/zeek/dns.log`, `t/state.db`, `t/alerts.jsonl`, `t/models`.
    `merge_s` None keeps the shipped merge window."""
    detection = f"[detection]\nmerge_s = {merge_s}\n" if merge_s is not None else ""
    cfg = t / "stowaway.toml"
    cfg.write_text(f"""
host = "{host}"
state_db = "{t}/state.db"
[sources]
osquery_results_log = "{t}/osqueryd.results.log"
zeek_log_dir = "{t}/zeek"
zeek_streams = ["dns"]
address_map = "{address_map}"
[sinks]
jsonl = "{t}/alerts.jsonl"
[model]
dir = "{t}/models"
windows_db = "{t}/windows.sqlite"
{detection}[daemon]
collect_interval_s = {collect_interval_s}
""")
    return cfg


@contextmanager
def running_daemon(cfg: Path) -> Iterator[subprocess.Popen]:
    """`stowaway run --config cfg` from this checkout; SIGTERM (then kill after 30 s) on exit."""
    proc = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "run", "--config", str(cfg)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
