"""NetColumns' kept factorizations (`codes`) and the window grouping that reads them: a builder's
codes may repeat a value or hold values no row has, and every reader must give what hashing the
column would."""
from __future__ import annotations

import random

import numpy as np

from model.codes import distinct_codes, factorize, last_rows_in_first_order
from model.records import NET_FIELDS, NetColumns
from model.window_agg import NetWindowAgg, add_groups, columns_of
from model.records import NetRecord
from scheduler.detect.windowing import attributed_rows, sorted_codes


def _obj(values):
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def _coded_copy(cols: NetColumns, rng: random.Random) -> NetColumns:
    """The same columns with a builder's codes for every text column: values shuffled, some
    repeated under a second code, some no row has."""
    out = NetColumns(**{f: getattr(cols, f) for f in NET_FIELDS})
    for f in ("kind", "container_id", "image", "resp_h", "domain", "rcode", "host",
              "geo_service", "proto"):
        col = getattr(cols, f)
        distinct = sorted(set(col.tolist()))
        values = distinct + [rng.choice(distinct) for _ in range(2)] + ["never-seen"]
        rng.shuffle(values)
        where: dict[str, list[int]] = {}
        for i, v in enumerate(values):
            where.setdefault(v, []).append(i)
        codes = np.array([rng.choice(where[v]) for v in col.tolist()], dtype=np.int64)
        out.codes[f] = (codes, _obj(values))
    return out


def _records(rng: random.Random, n: int) -> list[NetRecord]:
    kinds = ["conn", "dns", "http", "ssl"]
    return [NetRecord(ts=1000.0 + i * 0.5, kind=rng.choice(kinds),
                      container_id=rng.choice(["", "c1", "c2", "c3"]),
                      image=rng.choice(["", "web", "db"]), orig_h="172.17.0.2",
                      resp_h=rng.choice(["", "10.0.0.1", "8.8.8.8", "1.2.3.4"]),
                      resp_p=rng.choice([0, 53, 80, 443]), proto=rng.choice(["tcp", "udp"]),
                      host=rng.choice(["", "h1"]),
                      domain=rng.choice(["", "a.example.com", "ipinfo.io", "x.y.z.example"]),
                      rcode=rng.choice(["", "NOERROR", "NXDOMAIN"]),
                      conn_state=rng.choice(["SF", "REJ", "S0"]),
                      geo_service=rng.choice(["", "", "", "ipinfo"]))
            for i in range(n)]


def test_sorted_codes_equals_unique_of_the_rows_with_repeated_and_unused_values():
    rng = random.Random(4)
    for _ in range(200):
        values = _obj([rng.choice("abcde") for _ in range(rng.randint(1, 7))])
        codes = np.array([rng.randrange(values.size) for _ in range(rng.randint(1, 40))])
        uniq, inv = sorted_codes(codes, values)
        want_u, want_inv = np.unique(values[codes].astype(str), return_inverse=True)
        assert uniq.tolist() == want_u.tolist()
        assert inv.tolist() == want_inv.tolist()


def test_attributed_rows_reads_the_builders_codes_as_the_column():
    rng = random.Random(5)
    cols = columns_of(_records(rng, 300))
    coded = _coded_copy(cols, rng)
    rows = np.array(rng.sample(range(300), 120), dtype=np.int64)
    for given in (None, rows):
        a_idx, a_codes, a_vals = attributed_rows(cols, given)
        b_idx, b_codes, b_vals = attributed_rows(coded, given)
        assert a_idx.tolist() == b_idx.tolist()
        assert a_vals[a_codes].tolist() == b_vals[b_codes].tolist()
        assert all(v != "" for v in b_vals[b_codes].tolist())


def test_add_groups_counts_the_same_with_the_builders_codes():
    rng = random.Random(6)
    for _ in range(20):
        cols = columns_of(_records(rng, 200))
        coded = _coded_copy(cols, rng)
        cuts = sorted(rng.sample(range(1, 200), 6))
        parts = np.split(np.arange(200), cuts)
        plain = [NetWindowAgg() for _ in parts]
        fast = [NetWindowAgg() for _ in parts]
        add_groups(cols, list(zip(plain, parts)))
        add_groups(coded, list(zip(fast, parts)))
        for a, b in zip(plain, fast):
            assert a.features() == b.features()
            assert (a.image, a.host, a.n, a.t_min, a.t_max) == (b.image, b.host, b.n, b.t_min,
                                                                b.t_max)
            assert a.to_json() == b.to_json()


def test_update_over_the_last_rows_in_first_order_equals_update_over_every_row():
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(0, 30)
        cids = _obj([rng.choice(["c1", "c2", "c3"]) for _ in range(n)])
        addrs = _obj([rng.choice(["10.0.0.1", "10.0.0.2"]) for _ in range(n)])
        names = [rng.choice("abcdef") for _ in range(n)]
        start = {("c2", "10.0.0.1"): "old"}
        want = dict(start)
        want.update(zip(zip(cids.tolist(), addrs.tolist()), names))
        # the builder's codes, a value repeated under two codes
        values = _obj(["c1", "c2", "c3", "c2"])
        codes = np.array([[0, 1, 2][["c1", "c2", "c3"].index(c)] if rng.random() < .5 else
                          {"c1": 0, "c2": 3, "c3": 2}[c] for c in cids.tolist()], dtype=np.int64)
        cc, _ = distinct_codes(codes, values)
        ac, na = distinct_codes(*factorize(addrs))
        rows = last_rows_in_first_order(cc * na + ac) if n else np.zeros(0, dtype=np.int64)
        got = dict(start)
        got.update(((cids[r], addrs[r]), names[r]) for r in rows.tolist())
        assert list(got.items()) == list(want.items())


def test_distinct_keys_by_table_and_by_sort_equal_np_unique():
    from model.codes import distinct_keys

    rng = np.random.default_rng(8)
    for span in (1, 5, 300, 10**6, 10**12):        # a table; np.unique past 4x the rows
        for n in (0, 1, 7, 500):
            keys = rng.integers(0, span, n)
            uk, first, last = distinct_keys(keys, last=True)
            want_u, want_first = np.unique(keys, return_index=True)
            want_last = [int(np.flatnonzero(keys == k)[-1]) for k in want_u]
            assert uk.tolist() == want_u.tolist()
            assert first.tolist() == want_first.tolist()
            assert last.tolist() == want_last
            assert distinct_keys(keys)[2] is None


def test_stable_order_is_numpys_stable_argsort() -> None:
    """The 16-bit radix path gives exactly `argsort(kind="stable")`: ties in row order."""
    from model.codes import stable_order

    rng = np.random.default_rng(4)
    for n, size in ((1, 10), (3, 1), (64, 6000), (65536, 5000), (70000, 3000), (5, 0)):
        codes = rng.integers(0, n, size).astype(np.int64)
        assert np.array_equal(stable_order(codes, n), np.argsort(codes, kind="stable")), n
