"""The batch engine path gives what the per-line engine gave.

* Every bundled recording: alerts (ids aside) and training feature windows equal the snapshot
  tools/engine_golden.py wrote from the per-line engine (tests/data/engine_golden/*.json).
* A batch with a geo hit, a Kubernetes API name, a NAT row, a held row and a non-container row
  among plain rows gives the same alerts, windows and counters through
  `Pipeline.feed_zeek_rows` / `Pipeline.dispatch` as `feed_zeek` row by row.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scheduler.collect.osquery_results import OsqueryRow
from scheduler.collect.zeekbatch import batch_from_records
from scheduler.config import Config
from scheduler.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]


def _golden_module() -> Any:
    spec = importlib.util.spec_from_file_location("engine_golden",
                                                  ROOT / "tools" / "engine_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GOLDEN = _golden_module()


@pytest.fixture(scope="module")
def baselines() -> Any:
    return GOLDEN.demo_baselines()


def _first_difference(want: list[Any], got: list[Any]) -> str:
    for i, (w, g) in enumerate(zip(want, got)):
        if w != g:
            return f"#{i}: want {json.dumps(w, sort_keys=True)[:600]}\n got {json.dumps(g, sort_keys=True)[:600]}"
    return f"lengths differ: want {len(want)}, got {len(got)}"


@pytest.mark.parametrize("name,rec_dir,kind", GOLDEN.recordings(), ids=lambda x: str(x)
                         if isinstance(x, str) else "")
def test_recording_equals_the_per_line_snapshot(name: str, rec_dir: Path, kind: str,
                                                baselines: Any) -> None:
    want = json.loads((GOLDEN.GOLDEN / f"{name}.json").read_text())
    got = json.loads(json.dumps(GOLDEN.snapshot(rec_dir, kind, baselines), sort_keys=True))
    for part in ("alerts", "windows"):
        assert got[part] == want[part], f"{name} {part}: {_first_difference(want[part], got[part])}"


def test_replay_alerts_do_not_depend_on_the_chunk(baselines: Any) -> None:
    """The replay's alerts are the same list, in the same (time) order, at any chunk: the
    chunk is a cost setting (scheduler.replay.CHUNK), and the snapshot above holds at every
    value. At 500, 8,000 and 16,000 items, geo_lookup's flushes emit its alerts in other orders."""
    from scheduler.collect.recording import demo_data_dir
    from scheduler.replay import replay

    rec = demo_data_dir() / "geo_lookup"
    runs = [replay(rec, Config(), baselines, chunk=c).alerts for c in (500, 8000, 16000)]
    small, *large = ([json.dumps(a.to_dict(), sort_keys=True) for a in r] for r in runs)
    assert len(small) >= 5
    assert all(small == other for other in large)


# ---- a mixed batch: fast rows around every kind of record row ---------------------------------
HOST = "h1"
T0 = 1_800_000_000.0
WEB = "a" * 64
UPLINK = "192.0.2.10"


def _events(cid: str, image: str, addr: str, t: float) -> list[OsqueryRow]:
    ev = [OsqueryRow(table="container_events", host=HOST, unix_time=t + dt, action="added",
                     columns={"time": str(int(t + dt)), "time_nano": str(int((t + dt) * 1e9)),
                              "action": a, "container_id": cid, "image": image, "name": "web"})
          for a, dt in (("create", 0.0), ("start", 0.1))]
    inv = OsqueryRow(table="container_inventory", host=HOST, unix_time=t + 1, action="added",
                     columns={"id": cid, "name": "web", "image": image, "state": "running",
                              "ip_addresses": addr, "created": str(int(t))})
    return ev + [inv]


def _nat_row() -> OsqueryRow:
    cols = {"event": "new", "protocol": "tcp", "container_address": "172.17.0.5",
            "container_port": "41000", "remote_address": "198.51.100.201", "remote_port": "80",
            "nat_address": UPLINK, "nat_port": "40000", "nat_remote_address": "198.51.100.201",
            "nat_remote_port": "80", "container_id": WEB, "conntrack_id": "7",
            "start_time": str(T0 + 100.0), "end_time": "", "time": str(int(T0 + 100))}
    return OsqueryRow(table="container_nat_flows", host=HOST, unix_time=T0 + 100,
                      action="added", columns=cols)


def _http(t: float, orig: str, host: str, uid: str, orig_p: int = 50000,
          resp: str = "10.0.0.9") -> dict[str, Any]:
    return {"ts": t, "uid": uid, "id.orig_h": orig, "id.orig_p": orig_p, "id.resp_h": resp,
            "id.resp_p": 80, "method": "GET", "host": host, "uri": "/", "user_agent": "Wget"}


def _conn(t: float, orig: str, uid: str) -> dict[str, Any]:
    return {"ts": t, "uid": uid, "id.orig_h": orig, "id.orig_p": 50000, "id.resp_h": "10.0.0.9",
            "id.resp_p": 80, "proto": "tcp", "service": "http", "orig_bytes": 80,
            "resp_bytes": 200, "conn_state": "SF"}


def _records() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    http, conn = [], []
    for k in range(400):
        t = T0 + 5.0 + k * 0.75                  # crosses several windows
        http.append(_http(t, "172.17.0.5", "svc.internal:8080", f"H{k}"))
        if k % 4 == 0:
            conn.append(_conn(t + 0.01, "172.17.0.5", f"C{k}"))
    http[60] = _http(http[60]["ts"], "172.17.0.5", "ipinfo.io", "Hgeo")           # geo hit
    http[120] = _http(http[120]["ts"], "172.17.0.5", "kubernetes.default.svc", "Hk8s")
    http[130] = _http(T0 + 100.003, UPLINK, "198.51.100.201", "Hnat", 40000,
                      "198.51.100.201")                                        # NAT row
    http[200] = _http(http[200]["ts"], "172.17.0.77", "svc.internal", "Hheld")  # held row
    http[210] = _http(http[210]["ts"], "10.1.1.1", "svc.internal", "Hout")      # not ours
    http.sort(key=lambda r: r["ts"])
    return http, conn


def _pipeline() -> tuple[Pipeline, list[Any]]:
    p = Pipeline(Config(), host=HOST)
    for row in _events(WEB, "web:1", "172.17.0.5", T0):
        p.inventory.observe(row)
    p.joiner.observe_nat(_nat_row())
    p.hold_s = 3600.0
    windows: list[Any] = []
    p.window_sink = windows.append
    return p, windows


def _outcome(p: Pipeline, windows: list[Any], alerts: list[Any]) -> dict[str, Any]:
    out = []
    for a in alerts:
        d = a.to_dict()
        for k in ("id", "@timestamp"):
            d.pop(k, None)
        out.append(d)
    from model.features import FeatureWindows

    fw = FeatureWindows.concat(windows)
    return {"alerts": out, "stats": p.stats.to_dict(), "join": repr(p.joiner.stats),
            "names": sorted(p.misuse._names.items()), "data_time": p.data_time,
            "windows": [(fw.container_id[i], float(fw.window_start[i]),
                         [round(float(x), 9) for x in fw.X[i]]) for i in range(len(fw))]}


def _run(batched: bool, min_rows: int = 1) -> dict[str, Any]:
    http, conn = _records()
    p, windows = _pipeline()
    p.batch_min_rows = min_rows
    items = sorted([(r["ts"], 0, "http", j, r) for j, r in enumerate(http)]
                   + [(r["ts"], 1, "conn", j, r) for j, r in enumerate(conn)])
    hb, cb = batch_from_records("http", "http.log", http), batch_from_records("conn", "conn.log", conn)
    alerts: list[Any] = []
    for chunk in range(0, len(items), 97):       # flushes in between, as the replay does
        part = items[chunk:chunk + 97]
        if batched:
            p.dispatch(("zrow", (hb if s == "http" else cb, j)) for _, _, s, j, _ in part)
        else:
            for _, _, s, _, r in part:
                p.feed_zeek(s, dict(r))
        alerts += p.flush()
    alerts += p.flush(force=True)
    return _outcome(p, windows, alerts)


@pytest.mark.parametrize("min_rows", [1, 3])
def test_mixed_batch_equals_row_by_row(min_rows: int) -> None:
    """min_rows 1: every run takes the batch path; 3: the shortest runs take records."""
    want, got = _run(False), _run(True, min_rows)
    rules = {a["rule"] for a in want["alerts"]}
    assert "location_discovery" in rules and want["windows"], rules   # the case under test
    assert want["stats"]["nets_unattributed"] >= 1 and "net_nat=1" in want["join"]
    for key in want:
        assert got[key] == want[key], key


def test_feed_zeek_rows_slice_and_index_forms_agree() -> None:
    http, _ = _records()
    outs = []
    for rows in (slice(None), np.arange(len(http))):
        p, windows = _pipeline()
        p.batch_min_rows = 1
        p.feed_zeek_rows(batch_from_records("http", "http.log", http), rows)
        outs.append(_outcome(p, windows, p.flush(force=True)))
    assert outs[0] == outs[1]
    assert outs[0]["stats"]["zeek_records"] == len(http)


_HTTP_FIELDS = ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "method", "host",
                "uri", "user_agent")
_HTTP_TYPES = ("time", "string", "addr", "port", "addr", "port", "string", "string", "string",
               "string")


def _http_log(path: Path, records: list[dict[str, Any]]) -> Path:
    """`records` as a Zeek TSV http.log (the reader then keeps its text columns
    dictionary-encoded, as it does for a sensor's logs)."""
    lines = ["#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)",
             "#unset_field\t-", "#path\thttp", "#fields\t" + "\t".join(_HTTP_FIELDS),
             "#types\t" + "\t".join(_HTTP_TYPES)]
    lines += ["\t".join(f"{r[f]:.6f}" if f == "ts" else str(r[f]) for f in _HTTP_FIELDS)
              for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_whole_batch_is_read_through_views_and_left_as_it_was(tmp_path: Path) -> None:
    """Rows that are a whole batch in order are read as views of its columns (`_whole`); the
    result is the one of the same rows fed in two parts (index arrays, copies), and nothing is
    written through the views: the batch's columns are as the reader made them."""
    from scheduler.collect.zeekbatch import iter_batches
    from scheduler.pipeline import _whole, ingest_fields

    n = 10
    assert _whole(np.arange(n), n) == slice(0, n)
    for rows in (np.arange(1, n), np.arange(n)[::-1], np.r_[0, 2:n, 1], np.arange(n - 1)):
        assert isinstance(_whole(rows, n), np.ndarray)
    http, _ = _records()
    log = _http_log(tmp_path / "http.log", http)
    outs = []
    for parts in ([np.arange(len(http))], np.array_split(np.arange(len(http)), 2)):
        p, windows = _pipeline()
        p.batch_min_rows = 1
        (batch,) = iter_batches(log, "http", fields=ingest_fields("http"))
        assert len(batch) == len(http) and "host" in batch.dicts      # read dictionary-encoded
        before = {k: v.copy() for k, v in batch.columns.items()}
        for rows in parts:
            p.feed_zeek_rows(batch, rows)
        outs.append(_outcome(p, windows, p.flush(force=True)))
        for k, v in before.items():
            assert [str(x) for x in v] == [str(x) for x in batch.columns[k]], k
    assert outs[0] == outs[1]
    assert outs[0]["stats"]["zeek_records"] == len(http) and outs[0]["windows"]
    assert {a["rule"] for a in outs[0]["alerts"]} >= {"location_discovery"}
