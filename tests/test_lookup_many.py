"""The batch engine's attribution (Inventory.pick_many / Joiner.attribute_many) equals the
per-record lookup (Inventory.lookup, Joiner._lookup) row by row: on every bundled recording's
Zeek logs, and on churn-style reuse of one address by many containers."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from scheduler.collect.osquery_results import OsqueryRow
from scheduler.collect.recording import Recording, demo_data_dir
from scheduler.collect.zeeklog import ParseStats
from scheduler.detect.inventory import Inventory
from scheduler.detect.join import Joiner
from scheduler.pipeline import ZEEK_STREAMS, ingest_fields

ROOT = Path(__file__).resolve().parents[1]


def _recordings() -> list[Path]:
    dirs = [d for d in sorted(demo_data_dir().iterdir()) if (d / "meta.json").exists()]
    dirs += [d for d in sorted((ROOT / "tests" / "data" / "misuse").iterdir())
             if (d / "meta.json").exists()]
    return dirs


def _expected(joiner: Joiner, host: str, orig: list[str], ts: list[float]) -> list[tuple]:
    out = []
    for a, t in zip(orig, ts):
        c = joiner._lookup(host, a, t) if a and t == t else None
        out.append((c.container_id if c else None,
                    bool(a) and (c is not None or joiner.in_container_subnet(a))))
    return out


def _got(joiner: Joiner, host: str, orig: list[str], ts: list[float]) -> list[tuple]:
    hid, holders, inside = joiner.attribute_many(host, np.array(orig, dtype=object),
                                                 np.array(ts, dtype=np.float64))
    return [(holders[h].container_id if h >= 0 else None, bool(i))
            for h, i in zip(hid.tolist(), inside.tolist())]


@pytest.mark.parametrize("rec_dir", _recordings(), ids=lambda d: d.name)
def test_attribute_many_equals_lookup_on_recordings(rec_dir: Path) -> None:
    rec = Recording(rec_dir)
    joiner = Joiner(Inventory(), hold_s=0.0, default_host=rec.host, inbound=False)
    for row in rec.iter_osquery_rows():
        joiner.inventory.observe(row)
    joiner.inventory.close_snapshots()
    n = 0
    for stream in ZEEK_STREAMS:
        recs = list(rec.iter_zeek(stream, ParseStats(), fields=ingest_fields(stream)))
        orig = [str(r.get("id.orig_h") or "") for r in recs]
        ts = [float(r["ts"]) if isinstance(r.get("ts"), float) else float("nan") for r in recs]
        for host in (rec.host, "", "another-sensor"):
            assert _got(joiner, host, orig, ts) == _expected(joiner, host, orig, ts), \
                (rec_dir.name, stream, host)
        n += len(recs)
    assert n > 0


def _inv_row(host: str, t: float, action: str, **cols: str) -> OsqueryRow:
    return OsqueryRow(table="container_inventory", action=action, columns=cols, host=host,
                      unix_time=t)


def _event(host: str, t: float, action: str, cid: str) -> OsqueryRow:
    return OsqueryRow(table="container_events", action="added",
                      columns={"time": str(int(t)), "time_nano": str(int(t * 1e9)),
                               "action": action, "container_id": cid, "image": "img"},
                      host=host, unix_time=t)


def test_pick_many_equals_lookup_under_churn() -> None:
    """Dozens of short-lived containers hand one address on (sometimes overlapping, some
    never destroyed, some known only from inventory rows or a snapshot that lost them), on
    two hosts; every time around each boundary and grace period is asked."""
    rnd = random.Random(13)
    inv = Inventory(grace_before=1.0, grace_after=5.0)
    t = 1000.0
    bounds = []
    for k in range(40):
        host = "h1" if k % 7 else "h2"
        cid = f"{k:064x}"
        start = t + rnd.choice([0.0, 0.3, 2.0, 6.0])
        if k % 5 == 0:      # inventory rows only (whole seconds), no events
            inv.observe(_inv_row(host, start, "added", id=cid, image="img", name=f"c{k}",
                                 ip_addresses="172.17.0.9", created=str(int(start)),
                                 state="running"))
        else:
            inv.observe(_event(host, start, "create", cid))
            inv.observe(_event(host, start + 0.1, "start", cid))
            inv.observe(_inv_row(host, start + 0.5, "added", id=cid, image="img",
                                 name=f"c{k}", ip_addresses="172.17.0.9", state="running"))
        end = start + rnd.uniform(0.5, 8.0)
        if k % 9 != 4:      # some are never destroyed
            inv.observe(_event(host, end, "die", cid))
            inv.observe(_event(host, end + 0.2, "destroy", cid))
        bounds += [start, start + 0.1, end, end + 0.2]
        t = end + rnd.choice([-1.0, 0.0, 0.5, 3.0])       # overlaps too
    inv.observe(_inv_row("h1", t + 50, "snapshot", id="f" * 64, image="other",
                         ip_addresses="172.17.0.10", state="running"))
    inv.close_snapshots()
    times = sorted({round(b + d, 6) for b in bounds
                    for d in (-6.0, -5.0, -1.0, -0.5, 0.0, 0.05, 1.0, 4.99, 5.0, 5.01)})
    times += [float("nan"), 0.0, 1e12]
    ts = np.array(times)
    for host in ("h1", "h2", "h3"):
        for addr in ("172.17.0.9", "172.17.0.10", "10.1.1.1"):
            pick, holders = inv.pick_many(host, addr, ts)
            got = [holders[p].container_id if p >= 0 else None for p in pick.tolist()]
            want = [(c.container_id if (c := inv.lookup(host, addr, x)) else None)
                    for x in times]
            assert got == want, (host, addr)
            pick, holders = inv.pick_any_host_many(addr, ts)
            got = [holders[p].container_id if p >= 0 else None for p in pick.tolist()]
            want = [(c.container_id if (c := inv.lookup_any_host(addr, x)) else None)
                    for x in times]
            assert got == want, ("any", addr)
    assert len(inv.holders("h1", "172.17.0.9")) > 20     # the case under test: heavy reuse


def _reader_codes(batch, name: str, idx: np.ndarray):
    """The column's (codes, uniques) at rows `idx`, as the engine would hand them on."""
    codes, uniques = batch.codes(name)
    return codes[idx], uniques


@pytest.mark.parametrize("rec_dir", _recordings()[:3] + [ROOT / "tests/data/misuse/spoof"],
                         ids=lambda d: d.name)
def test_attribute_many_and_geo_prefilter_with_reader_codes(rec_dir: Path) -> None:
    """Given the reader's (codes, uniques) of a subset of a batch's rows (uniques then include
    values no chosen row has), attribution and the geo prefilter equal the factorizing path."""
    from scheduler.collect.zeekbatch import iter_batches
    from scheduler.detect.geo_stock import GeoStockDetector

    rec = Recording(rec_dir)
    joiner = Joiner(Inventory(), hold_s=0.0, default_host=rec.host, inbound=False)
    for row in rec.iter_osquery_rows():
        joiner.inventory.observe(row)
    joiner.inventory.close_snapshots()
    geo = GeoStockDetector()
    rng = random.Random(7)
    used = 0
    for stream in ZEEK_STREAMS:
        for path in sorted((rec_dir / "zeek").glob(f"{stream}.log*")):
            for batch in iter_batches(path, stream, fields=ingest_fields(stream)):
                idx = np.array(sorted(rng.sample(range(len(batch)), max(1, len(batch) // 2))))
                orig = batch.column("id.orig_h")[idx]
                ts = batch.column("ts")[idx]
                used += bool(batch.dicts)
                for host in (rec.host, ""):
                    want = joiner.attribute_many(host, orig, ts)
                    got = joiner.attribute_many(host, orig, ts,
                                                codes=_reader_codes(batch, "id.orig_h", idx))
                    assert [holders[h].container_id if h >= 0 else None
                            for holders, h in ((got[1], h) for h in got[0].tolist())] == \
                        [want[1][h].container_id if h >= 0 else None for h in want[0].tolist()]
                    assert got[2].tolist() == want[2].tolist()

                def col(name: str):
                    return batch.column(name)[idx]

                def codes(name: str):
                    return _reader_codes(batch, name, idx)

                assert geo.rows_of_interest(stream, col, len(idx), codes).tolist() == \
                    geo.rows_of_interest(stream, col, len(idx)).tolist(), (path, stream)
    assert used, "no batch was read with dictionary codes"


def test_pick_many_of_one_running_holder_equals_lookup() -> None:
    """The common case has its own path (one container holds the address and still runs):
    times all after its start take it at once; times before its start, in its grace before or
    well before, and NaN go the general way. Each equals `lookup`."""
    inv = Inventory(grace_before=1.0, grace_after=5.0)
    cid = "a" * 64
    inv.observe(_event("h1", 100.0, "create", cid))
    inv.observe(_event("h1", 100.1, "start", cid))
    inv.observe(_inv_row("h1", 100.5, "added", id=cid, image="img", name="c",
                         ip_addresses="172.17.0.9", state="running"))
    inv.close_snapshots()
    for times in ([100.0, 150.0, 1e9], [100.2, 500.0], [99.5, 200.0], [10.0, 200.0],
                  [200.0, float("nan")], [90.0]):
        ts = np.array(times)
        pick, holders = inv.pick_many("h1", "172.17.0.9", ts)
        got = [holders[p].container_id if p >= 0 else None for p in pick.tolist()]
        want = [(c.container_id if (c := inv.lookup("h1", "172.17.0.9", x)) else None)
                for x in times]
        assert got == want, times
    assert got == [None]        # a time well before its start: nobody


def _per_address(joiner: Joiner, host: str, orig: np.ndarray, ts: np.ndarray
                 ) -> tuple[list[int], list[str], list[bool]]:
    """attribute_many's contract spelled out one address at a time (distinct addresses in
    first-appearance order, each one's holders listed in turn): the reference for its
    vectorised common case."""
    hid = [-1] * len(orig)
    inside = [False] * len(orig)
    holders: list[str] = []
    for addr in dict.fromkeys(orig.tolist()):
        if not addr:
            continue
        rows = [i for i, a in enumerate(orig.tolist()) if a == addr]
        t = ts[rows]
        pick, hs = joiner.inventory.pick_many(host, addr, t)
        miss = pick < 0
        if miss.any():
            p2, hs2 = joiner.inventory.pick_any_host_many(addr, t[miss])
            pick[miss] = np.where(p2 >= 0, p2 + len(hs), -1)
            hs = hs + hs2
        for r, p in zip(rows, pick.tolist()):
            hid[r] = p + len(holders) if p >= 0 else -1
            inside[r] = p >= 0 or joiner.in_container_subnet(addr)
        holders.extend(c.container_id for c in hs)
    return hid, holders, inside


def test_attribute_many_common_case_keeps_the_per_address_result() -> None:
    """Addresses held by one running container since before their rows are attributed all at
    once; among them, a reused address, rows before a holder's start, an empty and an outside
    address and a NaN time go one address at a time. The holder list and each row's index
    into it are exactly the per-address loop's (the engine groups by those codes)."""
    inv = Inventory(grace_before=1.0, grace_after=5.0)
    joiner = Joiner(inv, hold_s=0.0, default_host="h1", inbound=False)
    # 172.17.0.5 is reused: its first holder is destroyed at 400 and a second one created
    holders = (("0", "172.17.0.2", 100.0), ("1", "172.17.0.3", 100.0),
               ("2", "172.17.0.4", 300.0), ("3", "172.17.0.5", 100.0),
               ("9", "172.17.0.5", 400.5))
    for c, addr, start in holders:
        inv.observe(_event("h1", start, "create", c * 64))
    for c, addr, start in holders[:2] + holders[3:4]:     # a snapshot of what runs at 150
        inv.observe(_inv_row("h1", 150.0, "added", id=c * 64, image="img", name=f"c{c}",
                             ip_addresses=addr, state="running"))
    inv.observe(_event("h1", 400.0, "destroy", "3" * 64))
    for c, addr, start in holders:      # and of what runs at 401
        if c != "3":
            inv.observe(_inv_row("h1", 401.0, "added", id=c * 64, image="img", name=f"c{c}",
                                 ip_addresses=addr, state="running"))
    inv.close_snapshots()
    assert inv.sole_holder("h1", "172.17.0.2") is not None     # the common case is exercised
    assert inv.sole_holder("h1", "172.17.0.5") is None
    rng = random.Random(7)
    addrs = ["172.17.0.2", "172.17.0.3", "172.17.0.4", "172.17.0.5", "", "10.9.9.9"]
    for trial in range(30):
        n = rng.randint(1, 60)
        orig = np.array([rng.choice(addrs[: rng.randint(1, len(addrs))]) for _ in range(n)],
                        dtype=object)
        # times all after every start, some before a start (in its grace or not), some NaN
        kinds = ([rng.uniform(350.0, 600.0)], [rng.uniform(50.0, 600.0)],
                 [rng.uniform(350.0, 600.0), float("nan")])
        ts = np.array([rng.choice(kinds[trial % 3]) if trial % 3 != 1 else
                       rng.choice([rng.uniform(350.0, 600.0), rng.uniform(50.0, 350.0),
                                   rng.uniform(298.5, 300.0)]) for _ in range(n)])
        hid, holders, inside = joiner.attribute_many("h1", orig, ts)
        want = _per_address(joiner, "h1", orig, ts)
        assert (hid.tolist(), [c.container_id for c in holders], inside.tolist()) == want, trial
        assert _got(joiner, "h1", orig.tolist(), ts.tolist()) == \
            _expected(joiner, "h1", orig.tolist(), ts.tolist()), trial
