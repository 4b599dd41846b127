"""Verdicts per distinct command line (scheduler/detect/verdicts.py) and the osquery parse fast path.

The memo may only ever make the osquery path faster, never change what it decides: every command
line of every bundled recording (demo recordings, misuse recordings, the raw container scenarios)
goes through the memoised and the plain form of each per-command decision and must come out equal,
on the first call (a miss) and the second (a hit). The memo must stay bounded whatever a host
runs: a million distinct command lines leave it at its cap, with no growth in live memory blocks,
and over-long lines bypass it. The results parser's all-strings fast path must give the same
columns as the converting path.
"""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from scheduler.collect import osquery_results as oq
from scheduler.detect import misuse_patterns as pat
from scheduler.detect import rules
from scheduler.detect.verdicts import per_distinct

REPO = Path(__file__).resolve().parents[1]
PROCESS_TABLES = ("container_process_events", "container_processes")


def _results_logs() -> list[Path]:
    logs = sorted((REPO / "scheduler" / "demo_data").glob("*/osquery/osqueryd.results.log*"))
    logs += sorted((REPO / "tests" / "data" / "misuse").glob("*/osquery/osqueryd.results.log*"))
    return logs


def _process_inputs() -> tuple[set[tuple[str, str, str]], set[str]]:
    """(name, path, cmdline) of every process row of the bundled recordings, and every
    stdio_remote value."""
    procs: set[tuple[str, str, str]] = set()
    remotes: set[str] = set()
    for log in _results_logs():
        for row in oq.iter_results(log):
            if row.table in PROCESS_TABLES:
                c = row.columns
                procs.add((c.get("name", ""), c.get("path", ""), c.get("cmdline", "")))
                remotes.add(c.get("stdio_remote", ""))
    for f in sorted((REPO / "tests" / "data" / "container-scenarios").glob("*/processes.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                p = json.loads(line)
                argv = p.get("cmdline") or []
                procs.add((p.get("comm") or "", p.get("exe") or "", " ".join(argv)))
    return procs, remotes


@pytest.fixture(scope="module")
def inputs() -> tuple[set[tuple[str, str, str]], set[str]]:
    return _process_inputs()


def _both_forms_equal(fn: Callable[..., Any], args_list: list[tuple]) -> tuple[int, int]:
    """Every input through the memoised form twice and the plain form once; returns (inputs,
    inputs with a non-empty verdict)."""
    fn.cache_clear()
    fired = 0
    for args in args_list:
        plain = fn.uncached(*args)
        assert fn(*args) == plain, (fn.__name__, args)      # first call: a miss
        assert fn(*args) == plain, (fn.__name__, args)      # second call: from the memo
        fired += bool(plain[0] if isinstance(plain, tuple) else plain)
    info = fn.cache_info()
    assert info.hits >= len(args_list), info        # the second calls were answered by the memo
    return len(args_list), fired


def test_every_recorded_command_line_gets_the_same_verdict(inputs) -> None:
    procs, remotes = inputs
    triples = sorted(procs)
    cmdlines = sorted({c for _, _, c in triples})
    assert len(cmdlines) > 1000, len(cmdlines)      # the corpus really is the recordings
    n, fired = _both_forms_equal(rules.classify_command, [(c,) for c in cmdlines])
    assert fired >= 5, fired                        # geo_lookup's T1614 commands are in it
    n, fired = _both_forms_equal(pat.tunnel_match, [(c,) for c in cmdlines])
    assert fired >= 1, fired                        # the tunnel recording
    for fn in (pat.miner_match, pat.escape_match, pat.is_shell):
        n, fired = _both_forms_equal(fn, triples)
        assert fired >= 1, (fn.__name__, fired)     # the miner / escape recordings, shells
    assert {pat.parse_remote(r) for r in remotes} - {None}   # the reverse-shell recording


@pytest.mark.parametrize("args", [
    ("",), ("curl -s ipinfo.io",), ("curl -s https://ipinfo.io/country",),
    ("ssh -fNR 8080:localhost:80 u@203.0.113.9",), ("x" * 10_000 + " curl ipinfo.io",),
])
def test_crafted_command_lines_same_verdict(args: tuple[str]) -> None:
    for fn in (rules.classify_command, pat.tunnel_match):
        assert fn(*args) == fn.uncached(*args) == fn(*args)


def test_name_and_path_are_part_of_the_key() -> None:
    """The same command line under another program name or path is another input: a miner
    named only by comm/exe, a shell named only by comm."""
    cases = [(pat.miner_match, ("xmrig", "/opt/xmrig", "./run -o pool:3333")),
             (pat.miner_match, ("run", "/opt/run", "./run -o pool:3333")),
             (pat.is_shell, ("sh", "/bin/busybox", "./run -o pool:3333")),
             (pat.is_shell, ("run", "/opt/run", "./run -o pool:3333")),
             (pat.escape_match, ("kubectl", "/usr/bin/kubectl", "")),
             (pat.escape_match, ("ls", "/bin/ls", ""))]
    for fn in {f for f, _ in cases}:
        fn.cache_clear()
    for _ in range(2):
        verdicts = [fn(*args) for fn, args in cases]
        assert verdicts == [fn.uncached(*args) for fn, args in cases]
        assert verdicts[0] and not verdicts[1] and verdicts[2] and not verdicts[3] \
            and verdicts[4] and not verdicts[5], verdicts


def test_odd_arguments_take_the_plain_call() -> None:
    """None, bytes and lists are not what the engine passes, but the memo must not change what
    the plain function answers for them (or raise where it did not)."""
    for odd in (None, b"curl ipinfo.io", ["curl", "ipinfo.io"]):
        assert rules.classify_command(odd) == rules.classify_command.uncached(odd)


def test_memo_is_bounded_over_a_million_distinct_lines() -> None:
    fn = rules.classify_command
    fn.cache_clear()
    cap = fn.maxsize
    for i in range(cap):
        fn(f"/usr/bin/worker --job {i} --queue q{i % 7}")
    assert fn.cache_info().currsize == cap
    blocks = sys.getallocatedblocks()
    for i in range(1_000_000):
        fn(f"/usr/bin/worker --job {cap + i} --queue q{i % 7}")
    grown = sys.getallocatedblocks() - blocks
    info = fn.cache_info()
    assert info.currsize == cap, info
    assert info.misses >= 1_000_000 + cap, info     # every line was new: nothing was retained
    # An unbounded memo would keep ~3 blocks per line (key string, link, verdict): 3M blocks.
    assert grown < 20_000, grown
    fn.cache_clear()


def test_long_inputs_bypass_the_memo() -> None:
    fn = pat.escape_match
    fn.cache_clear()
    cmd = "mount /dev/sda1 /mnt " + "a" * fn.max_chars
    assert fn("mount", "/bin/mount", cmd) == fn.uncached("mount", "/bin/mount", cmd) != ""
    assert fn.cache_info().currsize == 0


def test_per_distinct_evicts_least_recently_used() -> None:
    calls: list[str] = []

    @per_distinct(maxsize=2, max_chars=100)
    def upper(s: str) -> str:
        calls.append(s)
        return s.upper()

    assert [upper(s) for s in ("a", "b", "a", "c", "a", "b")] == ["A", "B", "A", "C", "A", "B"]
    assert calls == ["a", "b", "c", "b"]            # "b" was evicted by "c", "a" kept (recent)
    assert upper.cache_info().currsize == 2
    with pytest.raises(ValueError):
        per_distinct(maxsize=0)


def test_other_arities_take_the_generic_front() -> None:
    """One and three parameters get a positional fast front; any other shape the generic one,
    which bounds by the summed lengths and passes keyword calls to the plain function."""
    calls: list[tuple] = []

    @per_distinct(maxsize=8, max_chars=10)
    def join(a: str, b: str = "-") -> str:
        calls.append((a, b))
        return a + b

    assert [join("ab", "cd"), join("ab", "cd"), join("ab", b="cd"), join("x" * 9, "yz")] == \
        ["abcd", "abcd", "abcd", "x" * 9 + "yz"]
    assert calls == [("ab", "cd"), ("ab", "cd"), ("x" * 9, "yz")]   # 1 hit; keyword, long: plain
    assert join.cache_info().currsize == 1
    with pytest.raises(TypeError):
        pat.tunnel_match(cmdline="ssh -D 1080 u@h")                 # the fast front: positional


# ---- the results parser's column fast path --------------------------------------------------

def _reference_columns(obj: dict) -> dict[str, str]:
    """The converting path every column took before the fast path."""
    return {str(k): oq._stringify(v) for k, v in obj.items()}


@pytest.mark.parametrize("obj", [
    {"pid": "1", "cmdline": "sh"},
    {"pid": 1, "cmdline": "sh"},
    {"ok": True, "no": False, "none": None, "f": 1.5, "nested": {"a": [1, "b"]}, "s": "x"},
    {1: "a", "b": "c"},
    {},
])
def test_columns_fast_path_equals_conversion(obj: dict) -> None:
    got = oq._columns(obj)
    assert got == _reference_columns(obj)
    assert all(type(k) is str and type(v) is str for k, v in got.items())
    assert got is not obj                           # a copy: rows never alias the decoded line


def test_columns_of_every_bundled_line_equal_conversion() -> None:
    n = 0
    for log in _results_logs():
        opener = gzip.open if log.suffix == ".gz" else open
        with opener(log, "rt", encoding="utf-8") as fh:
            for line in fh:
                obj = json.loads(line)
                rows = oq.parse_object(obj)
                if not rows:
                    continue
                payload = ([obj["columns"]] if "columns" in obj else obj.get("snapshot")
                           or obj["diffResults"].get("removed", []) + obj["diffResults"].get("added", []))
                assert [r.columns for r in rows] == [_reference_columns(p) for p in payload]
                n += len(rows)
    assert n > 10_000, n
