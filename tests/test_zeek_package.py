"""The Zeek package without Zeek: every script parses (zeekscript), zkg.meta is complete, the
Zeek input files say exactly what the Python indicator module says, the built-in subnets match
container_subnets.tsv, the btest pcaps come from their generator, and btest runs where Zeek is
installed (skipped with the reason elsewhere; a failure when STOWAWAY_REQUIRE_ZEEK=1) and fails
when a baseline changes."""
from __future__ import annotations

import configparser
import gzip
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zeekscript

from datafiles import scenario_dir
from osquery_ext import indicators

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "zeek_scripts"
ZEEK_DATA = SCRIPTS / "data"
TESTING = ROOT / "testing"
SCENARIOS = TESTING / "Traces" / "scenarios"
SHARED_FILES = ("geo_services.tsv", "metadata_endpoints.tsv", "container_subnets.tsv")


def _zeek_files() -> list[Path]:
    testing = [p for p in TESTING.rglob("*.zeek") if ".tmp" not in p.relative_to(TESTING).parts]
    return sorted(SCRIPTS.rglob("*.zeek")) + sorted(testing)


def _btest_input(text: str) -> str:
    """What btest hands Zeek as %INPUT: @TEST-START-FILE blocks are cut out."""
    return re.sub(r"^@TEST-START-FILE.*?^@TEST-END-FILE[^\n]*\n?", "", text,
                  flags=re.S | re.M)


def parse_errors(source: bytes) -> str | None:
    """None when the Zeek source parses cleanly, else zeekscript's description of the error."""
    import io

    script = zeekscript.Script(io.BytesIO(source))
    try:
        ok = script.parse()
    except zeekscript.error.ParserError as exc:  # no tree at all
        return f"hard parse error: {exc}"
    if ok and not script.has_error():
        return None
    line, lineno, msg = script.get_error()
    return f"line {lineno}: {msg} :: {line!r}"


# -- parsing -------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", _zeek_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_zeek_file_parses(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if path.is_relative_to(TESTING / "tests"):
        text = _btest_input(text)
    err = parse_errors(text.encode())
    assert err is None, f"{path}: {err}"


def test_package_has_scripts() -> None:
    names = {p.name for p in SCRIPTS.glob("*.zeek")}
    assert {"__load__.zeek", "main.zeek", "config.zeek", "input.zeek", "cluster.zeek"} <= names
    load = (SCRIPTS / "__load__.zeek").read_text()
    for mod in ("config", "input", "main", "cluster"):
        assert f"@load ./{mod}" in load
    for p in SCRIPTS.glob("*.zeek"):
        if p.name != "__load__.zeek":
            assert re.search(r"^module Stowaway;", p.read_text(), re.M), p


@pytest.mark.parametrize("snippet", [
    b"event zeek_init() { local x = ; }\n",
    b"module Stowaway;\nexport {\n  const a = 1 &redef;\n",          # unclosed export block
    b"event zeek_init()\n\t{\n\tprint \"x\"\n\t}\n",                   # missing semicolon
    b"global t: table[string] of count = { [\"a\"] = 1 \n",            # unclosed constructor
])
def test_broken_snippets_fail_to_parse(snippet: bytes) -> None:
    """The parse check can fail: syntax errors are reported, not silently accepted."""
    assert parse_errors(snippet) is not None


def test_valid_snippet_parses() -> None:
    assert parse_errors(b"module X;\nevent zeek_init() { print 1; }\n") is None


def test_zeek_script_cli_agrees() -> None:
    """`zeek-script parse -q` (the CLI CI could call) exits 0 on our scripts."""
    exe = Path(sys.executable).with_name("zeek-script")
    if not exe.exists():
        pytest.skip("zeek-script CLI not installed next to the interpreter")
    for path in sorted(SCRIPTS.glob("*.zeek")):
        res = subprocess.run([str(exe), "parse", "-q", str(path)], capture_output=True)
        assert res.returncode == 0, (path, res.stdout[-500:], res.stderr[-500:])


# -- zkg.meta ------------------------------------------------------------------------------------

def _meta() -> configparser.SectionProxy:
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(ROOT / "zkg.meta", encoding="utf-8")
    assert cp.has_section("package"), "zkg.meta must start with [package]"
    return cp["package"]


def test_zkg_meta_fields() -> None:
    meta = _meta()
    assert meta.get("script_dir") == "zeek_scripts"
    assert (ROOT / meta["script_dir"] / "__load__.zeek").is_file()
    assert meta.get("summary", "").strip()
    assert meta.get("description", "").strip()
    tags = [t.strip() for t in meta.get("tags", "").split(",") if t.strip()]
    assert "T1614" in tags and len(tags) >= 3
    depends = [d.strip() for d in meta.get("depends", "").strip().splitlines() if d.strip()]
    zeek_dep = [d for d in depends if d.split()[0] == "zeek"]
    assert zeek_dep, depends
    m = re.fullmatch(r"zeek\s+>=\s*(\d+)\.(\d+)(?:\.\d+)?", zeek_dep[0])
    assert m and (int(m.group(1)), int(m.group(2))) == (6, 0), zeek_dep
    test_cmd = meta.get("test_command", "")
    assert "btest" in test_cmd and "testing" in test_cmd
    assert (TESTING / "btest.cfg").is_file()
    for cfg in meta.get("config_files", "").split():
        assert (ROOT / cfg).is_file(), cfg
        assert cfg.startswith(meta["script_dir"] + "/")


# -- data files: Python and Zeek agree --------------------------------------------------------

def read_like_zeek(path: Path) -> tuple[list[str], list[list[str]]]:
    """Rows as Zeek's ASCII input reader sees them: '#fields' names the columns, other '#'
    lines and blank lines are skipped, values are tab separated."""
    names: list[str] = []
    rows: list[list[str]] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.rstrip("\r")
        if line.startswith("#fields\t"):
            names = line.split("\t")[1:]
            continue
        if not line or line.startswith("#"):
            continue
        rows.append(line.split("\t"))
    return names, rows


@pytest.mark.parametrize("name", SHARED_FILES)
def test_zeek_copies_are_byte_identical(name: str) -> None:
    assert (ZEEK_DATA / name).read_bytes() == indicators.data_path(name).read_bytes(), (
        f"run: python -m osquery_ext.indicators --export-zeek zeek_scripts/data ({name})")


@pytest.mark.parametrize("name", SHARED_FILES + ("container_addresses.tsv",))
def test_zeek_input_rows_complete(name: str) -> None:
    """Zeek's reader drops a line whose columns run short (e.g. an empty trailing field), so
    every data row must fill every column."""
    names, rows = read_like_zeek(ZEEK_DATA / name)
    assert names, f"{name}: no #fields header"
    for row in rows:
        assert len(row) == len(names) and all(v != "" for v in row), (name, row)


def test_geo_services_agree() -> None:
    names, rows = read_like_zeek(ZEEK_DATA / "geo_services.tsv")
    zeek = {}
    for row in rows:
        rec = dict(zip(names, row))
        key = rec["domain"]
        assert key not in zeek, f"duplicate table index {key} (Zeek keeps the last one)"
        assert key == key.lower().rstrip("."), key
        zeek[key] = (rec["service"], rec["category"])
    py = {d: (g.service, g.category) for d, g in indicators.load_geo_services().items()}
    assert zeek == py
    for must in ("ipinfo.io", "ifconfig.me", "ipify.org", "icanhazip.com",
                 "checkip.amazonaws.com", "myip.opendns.com"):
        assert must in zeek, must


def test_metadata_endpoints_agree() -> None:
    names, rows = read_like_zeek(ZEEK_DATA / "metadata_endpoints.tsv")
    zeek = [tuple(dict(zip(names, r))[k] for k in ("host", "path_prefix", "cloud")) for r in rows]
    assert len(set((h, p) for h, p, _ in zeek)) == len(zeek), "duplicate (host, path_prefix)"
    py = [(e.host, e.path_prefix, e.cloud) for e in indicators.load_metadata_endpoints()]
    assert sorted(zeek) == sorted(py)


def _record_fields(source: str, type_name: str) -> list[str]:
    m = re.search(rf"type {type_name}: record \{{(.*?)\}};", source, re.S)
    assert m, type_name
    return re.findall(r"^\s*(\w+)\s*:", m.group(1), re.M)


@pytest.mark.parametrize("file_name,types", [
    ("geo_services.tsv", ("GeoIdx", "GeoVal")),
    ("metadata_endpoints.tsv", ("MetaIdx", "MetaVal")),
    ("container_addresses.tsv", ("AddrIdx", "ContainerVal")),
])
def test_input_records_name_file_columns(file_name: str, types: tuple[str, str]) -> None:
    """The input framework maps record fields to columns by name: each must exist."""
    source = (SCRIPTS / "input.zeek").read_text()
    names, _ = read_like_zeek(ZEEK_DATA / file_name)
    for t in types:
        for fld in _record_fields(source, t):
            assert fld in names, (file_name, t, fld, names)


def _zeek_default_subnets() -> set[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    text = (SCRIPTS / "config.zeek").read_text()
    m = re.search(r"option container_subnets: set\[subnet\] = \{([^}]*)\};", text)
    assert m, "config.zeek must declare `option container_subnets: set[subnet] = {...};`"
    return {ipaddress.ip_network(s.strip()) for s in m.group(1).split(",") if s.strip()}


def test_zeek_default_subnets_match_tsv() -> None:
    defaults = _zeek_default_subnets()
    assert defaults == {ipaddress.ip_network("172.17.0.0/16"), ipaddress.ip_network("10.88.0.0/16")}
    rows = indicators.load_container_subnet_rows()
    by_net = {r.network: r.runtime for r in rows}
    assert by_net[ipaddress.ip_network("172.17.0.0/16")] == "docker"
    assert by_net[ipaddress.ip_network("10.88.0.0/16")] == "podman"
    # What Zeek ends up using (built-in set + the shipped file, first column) is what Python uses.
    names, file_rows = read_like_zeek(ZEEK_DATA / "container_subnets.tsv")
    assert names[0] == "subnet"
    from_file = {ipaddress.ip_network(r[0]) for r in file_rows}
    assert defaults | from_file == set(indicators.load_container_subnets())


def test_address_map_header() -> None:
    names, rows = read_like_zeek(ZEEK_DATA / "container_addresses.tsv")
    assert names == ["ip", "container_id", "container_name", "image"]
    assert rows == []  # shipped empty; the scheduler writes the real one


# -- btest material --------------------------------------------------------------------------

def _load_module(name: str, path: Path):
    """A helper script of testing/ (not a package) imported by path."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_traces_come_from_generator(tmp_path: Path) -> None:
    """The committed pcaps are exactly what testing/Traces/make_traces.py builds."""
    mod = _load_module("make_traces", TESTING / "Traces" / "make_traces.py")
    assert mod.main(["make_traces", str(tmp_path)]) == 0
    for name in mod.TRACES:
        assert (tmp_path / name).read_bytes() == (TESTING / "Traces" / name).read_bytes(), name


def test_every_btest_has_baseline() -> None:
    for test in sorted((TESTING / "tests").glob("*.zeek")):
        text = test.read_text()
        for out in re.findall(r"btest-diff (\S+)", text):
            base = TESTING / "Baseline" / f"tests.{test.stem}" / out
            assert base.is_file(), base
        for trace in re.findall(r"\$TRACES/(\S+)", text):
            assert (TESTING / "Traces" / trace).is_file(), trace
        for trace in re.findall(r"\$SCENARIOS/(\S+)", text):
            assert (SCENARIOS / trace).is_file(), trace
        for script in re.findall(r"\$SCRIPTS/(\S+)", text):
            assert (TESTING / "scripts" / script).is_file(), script


@pytest.mark.parametrize("scenario", ("benign", "benign_long", "churn", "drift", "geo_lookup"))
def test_vendored_scenarios_match_fixtures(scenario: str) -> None:
    """The labels and address maps are what vendor.py derives from the scenario's ground truth
    and containers.json (tests/data holds them), and the btests' scenario pcaps are the fixture
    captures where the data root has the captures (STOWAWAY_FIXTURES=<full fixtures checkout>;
    tests/data keeps no pcaps, the btests' copies are the repository's only ones)."""
    vendor = _load_module("vendor", SCENARIOS / "vendor.py")
    src = scenario_dir(scenario)
    if (src / "scenario.pcap").is_file() or (src / "scenario.pcap.gz").is_file():
        assert gzip.decompress((SCENARIOS / f"{scenario}.pcap.gz").read_bytes()) == \
            vendor.pcap_bytes(src)
    containers = json.loads((src / "containers.json").read_text())
    assert (SCENARIOS / f"{scenario}.addresses.tsv").read_text() == \
        vendor.tsv(vendor.ADDRESS_FIELDS, vendor.address_rows(containers))
    truth = json.loads((src / "ground_truth.json").read_text())
    _, rows = read_like_zeek(SCENARIOS / "labels.tsv")
    mine = [tuple(r) for r in rows if r[0] == scenario]
    # drift's actions are behaviour drift, not location discovery: no labelled lookups.
    assert mine == (vendor.evidence_rows(scenario, truth) if scenario in vendor.LABELLED else [])


def test_labels_cover_the_ground_truth() -> None:
    """geo_lookup's 7 actions and churn's 40 containers are all labelled."""
    names, rows = read_like_zeek(SCENARIOS / "labels.tsv")
    labels = [dict(zip(names, r)) for r in rows]
    geo = {r["action"] for r in labels if r["scenario"] == "geo_lookup"}
    assert geo == {f"A{i}" for i in range(1, 8)}
    churn = [r for r in labels if r["scenario"] == "churn"]
    assert len({r["container_ip"] for r in churn}) == 40
    assert {r["host"] for r in churn} == {"checkip.amazonaws.com"}


def _fake_logs(tmp_path: Path, labels: list[dict[str, str]], drop: int | None) -> tuple[Path, Path]:
    """container_geo.log / notice.log as the package writes them for ``labels`` (one notice
    per row), without the row ``drop``."""
    geo = ["#fields\tts\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tmethod\tservice\thost"
           "\tcontainer_id\tcontainer_name\timage"]
    notice = ["#fields\tts\tnote\tsrc\tmsg"]
    for i, r in enumerate(labels):
        if i == drop:
            continue
        ts = f"{1000 + i}.0"
        geo.append("\t".join((ts, r["container_ip"], r["orig_p"], r["resp_h"], r["resp_p"],
                              r["method"], "svc", r["host"], "-", "-", "-")))
        notice.append("\t".join((ts, "Stowaway::Container_Geo_Lookup", r["container_ip"],
                                 f"container {r['container_ip']} looked up its location via svc (x)")))
    (tmp_path / "g.log").write_text("\n".join(geo) + "\n")
    (tmp_path / "n.log").write_text("\n".join(notice) + "\n")
    return tmp_path / "g.log", tmp_path / "n.log"


def test_label_checker_fails_on_a_missing_row(tmp_path: Path) -> None:
    checker = _load_module("check_labels", TESTING / "scripts" / "check_labels.py")
    labels_path = SCENARIOS / "labels.tsv"
    labels = [r for r in checker.read_zeek_tsv(labels_path) if r["scenario"] == "geo_lookup"]
    g, n = _fake_logs(tmp_path, labels, drop=None)
    assert checker.main([str(labels_path), "geo_lookup", str(g), str(n)]) == 0
    assert checker.main(["--with-map", str(labels_path), "geo_lookup", str(g), str(n)]) == 1
    g, n = _fake_logs(tmp_path, labels, drop=3)
    assert checker.main([str(labels_path), "geo_lookup", str(g), str(n)]) == 1


def _zeek_or_skip() -> None:
    """Skip only where Zeek is truly absent. CI (.ci/run) installs Zeek and sets
    STOWAWAY_REQUIRE_ZEEK=1, which turns a missing zeek into a failure instead."""
    missing = [b for b in ("zeek", "zeek-cut") if shutil.which(b) is None]
    if not missing:
        return
    if os.environ.get("STOWAWAY_REQUIRE_ZEEK") == "1":
        pytest.fail(f"STOWAWAY_REQUIRE_ZEEK=1 but {', '.join(missing)} not on PATH")
    pytest.skip(f"{', '.join(missing)} not on PATH: install Zeek >= 6.0 to run the btest suite")


def run_btest(testing: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """btest from the venv, with the venv's bin first on PATH: the tests call btest-diff,
    which pip installs next to btest, not on the system PATH."""
    bindir = Path(sys.executable).parent
    btest = shutil.which("btest", path=str(bindir)) or shutil.which("btest")
    assert btest, "btest is not installed (pip install btest)"
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("TEST_DIFF_CANONIFIER", None)
    return subprocess.run([btest, "-c", "btest.cfg", *args], cwd=testing, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_btest_suite() -> None:
    _zeek_or_skip()
    res = run_btest(TESTING, "-d", "-j", "2")
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-4000:]
    assert "failed" not in res.stdout + res.stderr, res.stdout[-6000:] + res.stderr[-4000:]


def test_btest_fails_on_changed_baseline(tmp_path: Path) -> None:
    """A baseline that no longer matches Zeek's output fails the suite: one line of a copy of
    the http_host baseline is perturbed and btest must report the test as failed."""
    _zeek_or_skip()
    copy = tmp_path / "testing"
    shutil.copytree(TESTING, copy, ignore=shutil.ignore_patterns(".tmp", ".btest.failed.dat",
                                                                 "scenarios"))
    # The copy's PACKAGE path (testing/../zeek_scripts) must still reach the package.
    (tmp_path / "zeek_scripts").symlink_to(SCRIPTS)
    base = copy / "Baseline" / "tests.http_host" / "geo.out"
    ok = run_btest(copy, "tests.http_host")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    text = base.read_text()
    perturbed = text.replace("\tipinfo\t", "\tipinfo-perturbed\t", 1)
    assert perturbed != text, f"{base}: no ipinfo row to perturb"
    base.write_text(perturbed)
    bad = run_btest(copy, "tests.http_host")
    assert bad.returncode != 0, bad.stdout + bad.stderr
    assert "tests.http_host ... failed" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
