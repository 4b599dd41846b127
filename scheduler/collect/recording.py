"""Recordings: a directory of osquery results and Zeek logs that can be replayed as if live.

Format (docs/recordings.md, docs/architecture.md)::

    <recording>/
      meta.json                       {"name", "host", "environment", "source", "time_range": [s, e]}
      osquery/osqueryd.results.log[.gz]
      zeek/<stream>.log[.gz]          conn, dns, http, ssl, container_geo (TSV or JSON), others kept
      ground_truth.json               optional labels (shared-fixture schema)

The same reader serves the demo, `stowaway replay`, the tests and `emulate --record`, so a recording
made on a live host and one converted from the shared fixtures look identical to the pipeline.

`python -m scheduler.collect.recording build-demo --fixtures ../shared/fixtures/container-scenarios
--out scheduler/demo_data` converts the shared fixture scenarios (see `convert_scenario`).
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from scheduler.collect import osquery_results as oqr
from scheduler.collect.osquery_results import OsqueryRow, ParseStats

log = logging.getLogger(__name__)

ZEEK_STREAMS: tuple[str, ...] = ("conn", "dns", "http", "ssl", "container_geo")
RESULTS_NAME = "osqueryd.results.log"
DEMO_SCENARIOS: tuple[str, ...] = ("benign_long", "geo_lookup", "churn", "drift", "benign")


@dataclass(slots=True)
class RecordingMeta:
    """meta.json. `time_range` is [start, end] in epoch seconds (UTC)."""

    name: str
    host: str
    environment: str = "default"
    source: str = ""
    time_range: list[float] = field(default_factory=lambda: [0.0, 0.0])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RecordingMeta":
        tr = data.get("time_range") or [0.0, 0.0]
        return cls(name=str(data.get("name", "")), host=str(data.get("host", "")),
                   environment=str(data.get("environment", "default")),
                   source=str(data.get("source", "")),
                   time_range=[float(tr[0]), float(tr[1])])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first_existing(*paths: Path) -> Path | None:
    for p in paths:
        if p.exists():
            return p
    return None


FIXTURE_MARKERS = ("containers.json", "processes.jsonl", "processes.jsonl.gz", "events.jsonl")


def is_fixture_layout(path: str | Path) -> bool:
    """A scenario directory in the fixture layout (containers.json, events.jsonl, processes.jsonl,
    zeek/): what a capture lab writes, which `convert_scenario` turns into a recording."""
    p = Path(path)
    return (p / "containers.json").is_file() and any((p / m).is_file() for m in FIXTURE_MARKERS[1:])


def recording_problem(path: str | Path) -> str | None:
    """Why `path` cannot be replayed as a recording, in one line naming it; None when it can.

    Checked before anything is written, so a wrong argument leaves no empty output behind."""
    p = Path(path)
    if not p.exists():
        return f"{p}: no such directory"
    if not p.is_dir():
        return f"{p}: not a directory (a recording is a directory with meta.json)"
    if (p / "meta.json").is_file():
        try:
            json.loads((p / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            return f"{p / 'meta.json'}: unreadable ({exc})"
        return None
    if is_fixture_layout(p):
        return (f"{p}: a fixture-layout scenario, not a recording; convert it first: "
                f"stowaway convert {p} <out-dir>")
    return f"{p}: not a recording (no meta.json; see docs/recordings.md)"


class Recording:
    """Read access to one recording directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path}: not a recording (no meta.json)")
        self.meta = RecordingMeta.from_dict(json.loads(meta_path.read_text()))

    def __repr__(self) -> str:
        return f"Recording({str(self.path)!r}, name={self.meta.name!r})"

    @property
    def name(self) -> str:
        return self.meta.name or self.path.name

    @property
    def host(self) -> str:
        return self.meta.host

    def osquery_log(self) -> Path | None:
        """The results log (plain or gzip), or None when the recording has no osquery part."""
        d = self.path / "osquery"
        return _first_existing(d / RESULTS_NAME, d / (RESULTS_NAME + ".gz"))

    def osquery_files(self) -> list[Path]:
        """The results log and the rotated files before it, oldest first (see
        `osquery_result_files`): a host's day is osqueryd.results.log.N ... .1 and the current."""
        return osquery_result_files(self.path / "osquery")

    def zeek_logs(self) -> dict[str, Path]:
        """stream name -> its current log (`<stream>.log`, else `.log.gz`, else the newest rotated
        `<stream>.<stamp>.log[.gz]`) for every stream present."""
        return {stream: files[-1] for stream, files in self.zeek_files().items()}

    def zeek_files(self) -> dict[str, list[Path]]:
        """stream name -> all its files, rotated ones first (oldest name first), current last."""
        return zeek_files_in(self.path / "zeek")

    def zeek_log(self, stream: str) -> Path | None:
        return self.zeek_logs().get(stream)

    def ground_truth(self) -> dict[str, Any] | None:
        p = self.path / "ground_truth.json"
        return json.loads(p.read_text()) if p.exists() else None

    def iter_osquery_rows(self, stats: ParseStats | None = None) -> Iterator[OsqueryRow]:
        """Every result row in log order (which is unixTime order for a recording), rotated
        files first, oldest first."""
        stats = stats if stats is not None else ParseStats()
        for p in self.osquery_files():
            yield from oqr.iter_results(p, stats)

    def stream_files(self, stream: str) -> list[Path]:
        """The files of one Zeek stream to read, in reading order: all of them, rotated ones
        first, except that when both `x.log` and `x.log.gz` exist (a copy kept both ways) only
        the plain one is read."""
        files = self.zeek_files().get(stream, [])
        names = {p.name for p in files}
        return [p for p in files if not (p.name.endswith(".gz") and p.name[:-3] in names)]

    def iter_zeek(self, stream: str, stats: Any = None,
                  fields: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
        """Records of one Zeek stream as dicts (Zeek field names), malformed lines skipped;
        `fields` limits the keys (and the parsing work) to those names; the files as
        `stream_files` lists them."""
        for p in self.stream_files(stream):
            yield from iter_zeek_records(p, stats, fields)


def zeek_files_in(directory: str | Path) -> dict[str, list[Path]]:
    """stream name -> all its files in a Zeek log directory, rotated ones first (by name: Zeek's
    `conn.2026-12-01-00-00-00.log` and zeekctl's `conn.00:00:00-01:00:00.log.gz` stamps sort in
    time order within a day), then `<stream>.log.gz`, then the current `<stream>.log`."""
    d = Path(directory)
    out: dict[str, list[Path]] = {}
    if not d.is_dir():
        return out
    for p in d.iterdir():
        name = p.name
        if not p.is_file() or not (name.endswith(".log") or name.endswith(".log.gz")):
            continue
        out.setdefault(name.split(".", 1)[0], []).append(p)

    def order(p: Path) -> tuple[int, str]:
        name = p.name
        stream = name.split(".", 1)[0]
        if name == f"{stream}.log":
            return (2, name)
        if name == f"{stream}.log.gz":
            return (1, name)
        return (0, name)
    return {k: sorted(v, key=order) for k, v in sorted(out.items())}


# Compressions a rotation may use that this reader cannot open (osqueryd's own logger_rotate
# zstd-compresses every rotated file but the newest): named, never read as garbage lines.
UNREADABLE_COMPRESSION = (".zst", ".bz2", ".xz")


def _osquery_rotation_key(name: str) -> tuple[int, int, str] | None:
    """Sort key of a results-log file name, oldest first; None for a file that is no part of it.

    `osqueryd.results.log-20261201[.gz]` (logrotate dateext) sort by their stamp;
    `osqueryd.results.log.N[.gz]` (osqueryd's logger_rotate, logrotate's default) by N, the
    highest being the oldest (numerically: .10 is older than .9); then the current file."""
    if not name.startswith(RESULTS_NAME) or name.endswith(UNREADABLE_COMPRESSION):
        return None
    rest = name[len(RESULTS_NAME):]
    if rest.endswith(".gz"):
        rest = rest[:-3]
    if rest == "":
        return (2, 0, name)
    if rest.startswith("-") and len(rest) > 1:
        return (0, 0, rest)
    if rest.startswith(".") and rest[1:].isdigit():
        return (1, -int(rest[1:]), name)
    return None


def osquery_result_files(directory: str | Path) -> list[Path]:
    """Readable results-log files in `directory`, oldest first; when a file exists both plain
    and gzipped (a copy kept both ways) only the plain one. Files compressed with
    `UNREADABLE_COMPRESSION` are left out: `unreadable_osquery_files` names them."""
    d = Path(directory)
    if not d.is_dir():
        return []
    keyed = [(k, p) for p in d.iterdir()
             if p.is_file() and (k := _osquery_rotation_key(p.name)) is not None]
    names = {p.name for _, p in keyed}
    keyed = [(k, p) for k, p in keyed if not (p.name.endswith(".gz") and p.name[:-3] in names)]
    return [p for _, p in sorted(keyed, key=lambda kp: (kp[0], kp[1].name))]


def unreadable_osquery_files(directory: str | Path) -> list[Path]:
    """Rotated results logs in a compression this reader cannot open (osqueryd's `.zst`)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.name.startswith(RESULTS_NAME)
                  and p.name.endswith(UNREADABLE_COMPRESSION))


def list_recordings(root: str | Path) -> list[Recording]:
    """All recordings directly under `root` (e.g. scheduler/demo_data)."""
    root = Path(root)
    return [Recording(p) for p in sorted(root.iterdir()) if (p / "meta.json").exists()]


def demo_data_dir() -> Path:
    """Where the bundled demo recordings live (installed with the package)."""
    return Path(__file__).resolve().parents[1] / "demo_data"


# ---- Zeek reading -------------------------------------------------------------------------------

def iter_zeek_records(path: str | Path, stats: Any = None,
                      fields: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """Zeek log records via the Zeek developer's `scheduler.collect.zeeklog` when present.

    Falls back to a small built-in TSV/JSON reader so recordings stay readable while that module is
    being written (same skip-and-count behaviour for malformed lines).
    """
    try:
        from scheduler.collect import zeeklog  # type: ignore[attr-defined]
        iter_zeek_log = zeeklog.iter_zeek_log
    except (ImportError, AttributeError):
        return _fallback_iter_zeek(Path(path), stats)
    return iter_zeek_log(path, stats, fields=fields)


def _fallback_iter_zeek(path: Path, stats: Any) -> Iterator[dict[str, Any]]:
    fields: list[str] | None = None
    sep = "\t"
    with oqr.open_text(path) as handle:
        for lineno, raw in enumerate(handle, start=1):
            line = raw.rstrip("\n")
            if not line:
                continue
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    _count_bad(stats, f"{path}:{lineno}: malformed JSON Zeek line skipped")
                    continue
                if isinstance(obj, dict):
                    yield obj
                continue
            if line.startswith("#"):
                if line.startswith("#separator"):
                    sep = line.split(" ", 1)[1].encode().decode("unicode_escape")
                elif line.startswith("#fields"):
                    fields = line.split(sep)[1:]
                continue
            values = line.split(sep)
            if fields is None or len(values) != len(fields):
                _count_bad(stats, f"{path}:{lineno}: malformed Zeek TSV line skipped")
                continue
            yield {k: v for k, v in zip(fields, values) if v not in ("-", "(empty)")}


def _count_bad(stats: Any, message: str) -> None:
    log.warning("%s", message)
    if stats is None:
        return
    if hasattr(stats, "malformed"):
        stats.malformed += 1
    elif isinstance(stats, dict):
        stats["malformed"] = stats.get("malformed", 0) + 1


# ---- writing ------------------------------------------------------------------------------------

class RecordingWriter:
    """Create a recording: meta.json, the osquery results log and Zeek logs.

    Results lines are written through a gzip stream when `compress` is set (the demo data is kept
    small this way); readers accept both.
    """

    def __init__(self, path: str | Path, meta: RecordingMeta, compress: bool = True) -> None:
        self.path = Path(path)
        self.meta = meta
        self.compress = compress
        (self.path / "osquery").mkdir(parents=True, exist_ok=True)
        (self.path / "zeek").mkdir(parents=True, exist_ok=True)
        name = RESULTS_NAME + (".gz" if compress else "")
        target = self.path / "osquery" / name
        for stale in (self.path / "osquery" / RESULTS_NAME, self.path / "osquery" / (RESULTS_NAME + ".gz")):
            if stale.exists():
                stale.unlink()
        if compress:
            # mtime=0: reproducible bytes, so rebuilding the demo data gives no spurious diff
            self._raw = open(target, "wb")
            self._out = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=9, mtime=0)
        else:
            self._raw = None
            self._out = open(target, "wb")
        self.lines = 0

    def write_line(self, line: str) -> None:
        self._out.write(line.encode("utf-8") + b"\n")
        self.lines += 1

    def write_lines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write_line(line)

    def add_zeek_log(self, src: str | Path, stream: str | None = None, compress: bool = True) -> Path:
        """Copy a Zeek log in (gzip-compressing plain ones when `compress`)."""
        src = Path(src)
        base = src.name[:-3] if src.name.endswith(".gz") else src.name
        if stream is not None:
            base = f"{stream}.log"
        if src.name.endswith(".gz"):
            dst = self.path / "zeek" / (base + ".gz")
            shutil.copyfile(src, dst)
        elif compress:
            dst = self.path / "zeek" / (base + ".gz")
            with open(src, "rb") as fin, open(dst, "wb") as raw, \
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as fout:
                shutil.copyfileobj(fin, fout)
        else:
            dst = self.path / "zeek" / base
            shutil.copyfile(src, dst)
        return dst

    def write_ground_truth(self, data: dict[str, Any]) -> None:
        (self.path / "ground_truth.json").write_text(json.dumps(data, indent=1) + "\n")

    def close(self) -> None:
        self._out.close()
        if self._raw is not None:
            self._raw.close()
        (self.path / "meta.json").write_text(json.dumps(self.meta.to_dict(), indent=1) + "\n")

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---- converter: shared fixture scenario -> recording -------------------------------------------
#
# The shared fixtures hold what a host-view recorder saw (podman events, podman inspect, /proc
# samples) and what Zeek logged. The converter writes the rows the Stowaway osquery extension would
# have produced for that host into an osqueryd results log:
#   container_events          <- events.jsonl (podman verbs normalised: died->die, remove->destroy,
#                                exec_died->exec_die); batched `diffResults` lines per interval
#   container_process_events  <- processes.jsonl, one row per distinct argv in exec_history;
#                                per-row differential lines
#   container_processes       <- processes.jsonl, processes alive at each snapshot time; snapshots
#   container_inventory       <- containers.json (+ raw/inspect_raw.jsonl for config flags);
#                                snapshots every `inventory_interval`, listing every container that
#                                existed during the interval (ones gone by then with state
#                                exited/removed), so a 23 ms `--rm` container is still reported
# All addresses are the rewritten ("Docker-like") ones. unixTime is the query time: the event time
# rounded up to the query interval, as osqueryd would log it.

DEFAULT_HOST = "lab-host-1"
DEFAULT_ENVIRONMENT = "lab"
ZEEK_COPY = ("conn", "dns", "http", "ssl", "files", "x509", "weird", "notice", "container_geo")


def parse_rfc3339_ns(value: str) -> int:
    """Epoch nanoseconds from podman's RFC3339 time with up to 9 fractional digits."""
    text = value.strip()
    tz = "+00:00"
    if text.endswith("Z"):
        text = text[:-1]
    else:
        for sign in ("+", "-"):
            idx = text.rfind(sign)
            if idx > 10:
                text, tz = text[:idx], text[idx:]
                break
    frac = "0"
    if "." in text:
        text, frac = text.split(".", 1)
    base = datetime.fromisoformat(text + tz)
    nanos = int((frac + "000000000")[:9])
    return int(base.timestamp()) * 1_000_000_000 + nanos


def _ceil_to(ts: float, interval: float) -> int:
    return int(math.ceil(ts / interval) * interval)


def _rewrite_map(address_map: list[dict[str, str]]) -> list[tuple[str, str, bool]]:
    """(original prefix or address, rewritten, is_subnet) in first-match-wins order."""
    out = []
    for entry in address_map:
        orig, new = entry["original"], entry["rewritten"]
        if orig.endswith("/32"):
            out.append((orig[:-3], new, False))
        else:
            net = orig.split("/", 1)[0]
            out.append((net.rsplit(".", 1)[0] + ".", new.rsplit(".", 1)[0] + ".", True))
    return out


def rewrite_text(text: str, rules: list[tuple[str, str, bool]]) -> str:
    """Apply the fixtures' address rewrite to IPv4 literals in a command line."""
    import re

    def repl(m: "re.Match[str]") -> str:
        ip = m.group(0)
        for orig, new, is_subnet in rules:
            if not is_subnet and ip == orig:
                return new
            if is_subnet and ip.startswith(orig):
                return new + ip[len(orig):]
        return ip

    return re.sub(r"(?<![\d.])\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\d.])", repl, text)


def _argv_text(argv: Any) -> str:
    if isinstance(argv, list):
        return " ".join(str(a) for a in argv)
    return str(argv or "")


def _classifier() -> Any:
    try:
        from osquery_ext.classifier import classify_command
        return classify_command
    except ImportError as exc:
        raise SystemExit(f"osquery_ext.classifier is needed to convert fixtures: {exc}") from exc


def _cgroup_path(line: str) -> str:
    parts = (line or "").split(":", 2)
    return parts[2] if len(parts) == 3 else line or ""


def _proc_name(comm: str, argv: list[str]) -> str:
    """comm, except busybox re-exec's `exe`: then the applet name from argv[0]."""
    if comm in ("exe", "") and argv:
        return os.path.basename(str(argv[0]))
    return comm


def _load_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:  # type: ignore[operator]
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _inspect_flags(src: Path) -> dict[str, dict[str, str]]:
    """Configuration columns per container id from raw/inspect_raw.jsonl (where inspect ran)."""
    path = src / "raw" / "inspect_raw.jsonl"
    out: dict[str, dict[str, str]] = {}
    if not path.exists():
        return out
    for rec in _load_jsonl(path):
        ins = rec.get("inspect") or {}
        cid = ins.get("Id") or ins.get("ID") or ""
        if not cid or cid in out:
            continue
        hc = ins.get("HostConfig") or {}
        binds = [str(b) for b in (hc.get("Binds") or [])]
        mounts = [str(m.get("Source", "")) for m in (ins.get("Mounts") or []) if isinstance(m, dict)]
        sources = [b.split(":", 1)[0] for b in binds] + mounts
        labels = (ins.get("Config") or {}).get("Labels") or {}
        out[cid] = {
            "privileged": "1" if hc.get("Privileged") else "0",
            "network_mode": str(hc.get("NetworkMode") or ""),
            "pid_mode": str(hc.get("PidMode") or ""),
            "ipc_mode": str(hc.get("IpcMode") or ""),
            "runtime_socket_mounted": "1" if any(s.endswith((".sock",)) and ("docker" in s or "podman" in s
                                                  or "containerd" in s) for s in sources) else "0",
            "host_root_mounted": "1" if any(s == "/" for s in sources) else "0",
            "labels": json.dumps(labels, sort_keys=True),
        }
    return out


def _inventory_row(c: dict[str, Any], state: str, flags: dict[str, str]) -> dict[str, str]:
    created = c.get("created_ts") or 0
    started = c.get("started_ts") or 0
    row = {
        "id": c["id"], "name": c.get("name", ""), "image": c.get("image", ""),
        "image_id": c.get("image_id") or "", "state": state,
        "created": str(int(created)), "started": str(int(started)),
        "ip_addresses": c.get("ip_address", "") or "", "networks": c.get("network", "") or "",
        "privileged": "0", "network_mode": "bridge", "pid_mode": "private", "ipc_mode": "",
        "runtime_socket_mounted": "0", "host_root_mounted": "0", "labels": "{}",
        "pod_name": "", "pod_namespace": "", "pid": str(c.get("pid") or 0), "runtime": "podman",
        "source": "api",
    }
    row.update({k: v for k, v in flags.items() if v != ""})
    return row


def _container_state_at(c: dict[str, Any], t: float) -> str | None:
    """State of a fixture container at time t, or None if it did not exist during (t-iv, t]."""
    created = c.get("created_ts") or c.get("started_ts")
    if created is None or created > t:
        return None
    removed = c.get("removed_ts")
    finished = c.get("finished_ts")
    if removed is not None and removed <= t:
        return "removed"
    # benign_long's restart: `finished` is the last died event; the container ran again after it
    restarts = c.get("restarts") or []
    if finished is not None and finished <= t:
        if any(r.get("start_ts", 0) > finished for r in restarts):
            return "running"
        return "exited"
    return "running"


def convert_scenario(src: str | Path, out: str | Path, host: str = DEFAULT_HOST,
                     environment: str = DEFAULT_ENVIRONMENT, event_interval: float = 5.0,
                     inventory_interval: float = 10.0, process_interval: float = 30.0,
                     zeek_format: str = "tsv") -> dict[str, int]:
    """Build a recording from one shared-fixture scenario directory. Returns line/row counts."""
    src, out = Path(src), Path(out)
    classify = _classifier()
    containers_doc = json.loads((src / "containers.json").read_text())
    containers: list[dict[str, Any]] = containers_doc["containers"]
    window = containers_doc.get("window") or {}
    rules = _rewrite_map(containers_doc.get("address_map") or [])
    flags = _inspect_flags(src)
    by_id = {c["id"]: c for c in containers}
    lines: list[tuple[int, int, str]] = []   # (unixTime, tiebreak, line)
    counts = {"container_events": 0, "container_process_events": 0, "container_processes": 0,
              "container_inventory": 0}
    seq = 0

    def add(unix_time: int, line: str) -> None:
        nonlocal seq
        seq += 1
        lines.append((unix_time, seq, line))

    # container_events
    buckets: dict[int, list[dict[str, Any]]] = {}
    t_min, t_max = float(window.get("start", 0) or 0), float(window.get("end", 0) or 0)
    for ev in _load_jsonl(src / "events.jsonl"):
        etype = ev.get("Type", "container")
        if etype not in ("container", "image"):
            continue
        tns = parse_rfc3339_ns(ev["Time"])
        if etype == "image":
            cid, name, image = "", "", ev.get("Name", "")
        else:
            cid, name, image = ev.get("ID", ""), ev.get("Name", ""), ev.get("Image", "")
        exit_code = ev.get("ContainerExitCode")
        row = {"time": str(tns // 1_000_000_000), "time_nano": str(tns),
               "action": oqr.normalise_action(ev.get("Status", "")), "container_id": cid, "name": name,
               "image": image, "exit_code": "" if exit_code is None else str(exit_code),
               "runtime": "podman"}
        buckets.setdefault(_ceil_to(tns / 1e9, event_interval), []).append(row)
        counts["container_events"] += 1
    for ut in sorted(buckets):
        rows = sorted(buckets[ut], key=lambda r: int(r["time_nano"]))
        add(ut, oqr.batched_line("container_events", host, ut, rows))

    # processes
    procs_path = src / "processes.jsonl"
    if not procs_path.exists():
        procs_path = src / "processes.jsonl.gz"
    procs = list(_load_jsonl(procs_path))
    cache: dict[str, Any] = {}

    def classified(argv: list[str]) -> dict[str, str]:
        key = "\0".join(argv)
        if key not in cache:
            m = classify(argv)
            cache[key] = {"location_discovery": "1" if m.location_discovery else "0",
                          "indicator": m.indicator or "", "tool": m.tool or ""}
        return cache[key]

    for p in procs:
        final_argv = p.get("cmdline_rewritten") or [rewrite_text(str(a), rules) for a in p.get("cmdline") or []]
        history = p.get("exec_history") or [{"comm": p.get("comm"), "cmdline": p.get("cmdline"),
                                             "exe": p.get("exe"), "seen_at": p.get("ts")}]
        last_argv: list[str] | None = None
        for h in history:
            orig_argv = [str(a) for a in (h.get("cmdline") or [])]
            if orig_argv == last_argv:
                continue  # comm-only change (busybox `exe` -> applet): the same execve
            last_argv = orig_argv
            argv = final_argv if orig_argv == (p.get("cmdline") or []) else \
                [rewrite_text(a, rules) for a in orig_argv]
            ts = float(h.get("seen_at") or p["ts"])
            cls = classified(argv)
            row = {"time": str(int(ts)), "time_nano": str(int(round(ts * 1e9))), "pid": str(p["pid"]),
                   "ppid": str(p.get("ppid", 0)), "uid": str(p.get("uid", 0)),
                   "name": _proc_name(str(h.get("comm") or p.get("comm") or ""), argv),
                   "cmdline": _argv_text(argv), "path": str(h.get("exe") or p.get("exe") or ""),
                   "container_id": p.get("container_id", ""),
                   "container_name": p.get("container_name", ""), "image": p.get("image", ""),
                   "runtime": "podman", **cls}
            add(_ceil_to(ts, event_interval),
                oqr.differential_line("container_process_events", host, _ceil_to(ts, event_interval),
                                      "added", row))
            counts["container_process_events"] += 1

    start = t_min or min(float(p["ts"]) for p in procs)
    end = t_max or max(float(p.get("last_seen", p["ts"])) for p in procs)
    t = _ceil_to(start, process_interval)
    while t <= end + process_interval:
        alive = [p for p in procs if float(p.get("first_seen", p["ts"])) <= t <= float(p.get("last_seen", p["ts"]))]
        rows = []
        for p in alive:
            argv = p.get("cmdline_rewritten") or [rewrite_text(str(a), rules) for a in p.get("cmdline") or []]
            rows.append({"pid": str(p["pid"]), "ppid": str(p.get("ppid", 0)),
                         "name": _proc_name(str(p.get("comm") or ""), argv), "path": str(p.get("exe") or ""),
                         "cmdline": _argv_text(argv), "uid": str(p.get("uid", 0)),
                         "start_time": str(int(float(p.get("start_time") or p["ts"]))),
                         "container_id": p.get("container_id", ""), "runtime": "podman", "pod_uid": "",
                         "netns": str(p.get("netns_inode") or ""),
                         "container_name": p.get("container_name", ""), "image": p.get("image", ""),
                         "cgroup_path": _cgroup_path(p.get("cgroup", "")), **classified(argv)})
        if rows:
            add(t, oqr.snapshot_line("container_processes", host, t, rows))
            counts["container_processes"] += len(rows)
        t += process_interval

    # inventory snapshots
    c_start = min(float(c.get("created_ts") or c.get("started_ts") or start) for c in containers)
    t = _ceil_to(min(start, c_start), inventory_interval)
    prev = t - inventory_interval
    while t <= end + inventory_interval:
        rows = []
        for c in containers:
            state = _container_state_at(c, t)
            if state is None:
                continue
            gone_at = c.get("removed_ts")
            if state == "removed" and gone_at is not None and gone_at <= prev:
                continue  # removed before this interval: no longer reported
            rows.append(_inventory_row(c, state, flags.get(c["id"], {})))
        if rows:
            add(t, oqr.snapshot_line("container_inventory", host, t, rows))
            counts["container_inventory"] += len(rows)
        prev, t = t, t + inventory_interval

    # write
    lines.sort(key=lambda x: (x[0], x[1]))
    out.mkdir(parents=True, exist_ok=True)
    meta = RecordingMeta(
        name=containers_doc.get("scenario") or src.name, host=host, environment=environment,
        source=(f"converted from shared fixtures container-scenarios/{src.name} "
                f"(scheduler/recording.py convert_scenario)"),
        time_range=[round(start, 3), round(end, 3)])
    with RecordingWriter(out, meta, compress=True) as writer:
        writer.write_lines(line for _, _, line in lines)
        zdir = src / "zeek" / ("json" if zeek_format == "json" else "")
        for stream in ZEEK_COPY:
            for cand in (zdir / f"{stream}.log", zdir / f"{stream}.log.gz"):
                if cand.exists():
                    writer.add_zeek_log(cand, stream)
                    break
        gt = src / "ground_truth.json"
        if gt.exists():
            writer.write_ground_truth(json.loads(gt.read_text()))
    counts["lines"] = len(lines)
    counts["containers"] = len(by_id)
    return counts


def build_demo(fixtures: str | Path, out: str | Path,
               scenarios: Iterable[str] = DEMO_SCENARIOS, **kwargs: Any) -> dict[str, dict[str, int]]:
    """Convert the demo scenarios; returns counts per scenario."""
    fixtures, out = Path(fixtures), Path(out)
    result = {}
    for name in scenarios:
        src = fixtures / name
        if not src.is_dir():
            log.warning("fixture scenario %s missing, skipped", src)
            continue
        dst = out / name
        if dst.exists():
            shutil.rmtree(dst)
        result[name] = convert_scenario(src, dst, **kwargs)
        log.info("%s: %s", name, result[name])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scheduler.collect.recording",
                                     description="Recordings: convert shared fixtures, inspect.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-demo", help="convert fixture scenarios into recordings")
    b.add_argument("--fixtures", default="tests/data/container-scenarios")
    b.add_argument("--out", default=str(demo_data_dir()))
    b.add_argument("--scenario", action="append", help="only these (repeatable)")
    b.add_argument("--host", default=DEFAULT_HOST)
    b.add_argument("--zeek-format", choices=("tsv", "json"), default="tsv")
    c = sub.add_parser("convert", help="convert one scenario directory")
    c.add_argument("src")
    c.add_argument("out")
    c.add_argument("--host", default=DEFAULT_HOST)
    c.add_argument("--zeek-format", choices=("tsv", "json"), default="tsv")
    s = sub.add_parser("show", help="summarise a recording")
    s.add_argument("path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.cmd == "build-demo":
        res = build_demo(args.fixtures, args.out, scenarios=args.scenario or DEMO_SCENARIOS,
                         host=args.host, zeek_format=args.zeek_format)
        print(json.dumps(res, indent=1))
        return 0 if res else 1
    if args.cmd == "convert":
        print(json.dumps(convert_scenario(args.src, args.out, host=args.host,
                                          zeek_format=args.zeek_format), indent=1))
        return 0
    rec = Recording(args.path)
    stats = ParseStats()
    tables: dict[str, int] = {}
    for row in rec.iter_osquery_rows(stats):
        tables[row.table] = tables.get(row.table, 0) + 1
    print(json.dumps({"meta": rec.meta.to_dict(), "osquery_rows": tables,
                      "malformed": stats.malformed,
                      "zeek": {k: str(v) for k, v in rec.zeek_logs().items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
