"""Indicator data files: content, validation errors with file:line, Zeek copies byte-identical."""
from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from osquery_ext import indicators
from osquery_ext.indicators import IndicatorFileError

REPO = Path(__file__).resolve().parents[1]


def test_geo_services_content() -> None:
    geo = indicators.load_geo_services()
    assert len(geo) >= 60
    for must in ("ipinfo.io", "ip-api.com", "ifconfig.me", "ifconfig.co", "ipify.org",
                 "icanhazip.com", "checkip.amazonaws.com", "ipapi.co", "wtfismyip.com",
                 "ipecho.net", "ident.me", "myexternalip.com", "seeip.org", "geoplugin.net",
                 "freegeoip.app", "ipwho.is", "ipgeolocation.io", "db-ip.com",
                 "extreme-ip-lookup.com", "checkip.dyndns.org", "ipwhois.app", "ip.sb",
                 "myip.com", "myip.opendns.com", "o-o.myaddr.l.google.com", "whoami.akamai.net"):
        assert must in geo, must
    assert {s.category for s in geo.values()} == {"ip_geolocation", "ip_echo", "dns_echo"}
    assert geo["myip.opendns.com"].category == "dns_echo"
    assert geo["ipinfo.io"].service == "ipinfo"
    # No entry is shadowed by a shorter one (it would never be reported under its own name).
    for domain in geo:
        parts = domain.split(".")
        for i in range(1, len(parts) - 1):
            assert ".".join(parts[i:]) not in geo, domain
    # The returned dict is a copy: callers cannot poison the cache.
    geo.clear()
    assert indicators.load_geo_services()


def test_metadata_endpoints_content() -> None:
    eps = indicators.load_metadata_endpoints()
    clouds = {e.cloud for e in eps}
    assert {"aws", "azure", "gcp"} <= clouds
    lens = [len(e.path_prefix) for e in eps]
    assert lens == sorted(lens, reverse=True)
    assert any(e.matches("169.254.169.254", "/latest/meta-data/placement/availability-zone")
               for e in eps)
    assert any(e.matches("169.254.169.254", "/metadata/instance/compute/location") for e in eps)
    assert any(e.matches("metadata.google.internal", "/computeMetadata/v1/instance/zone")
               for e in eps)


def test_container_subnets() -> None:
    nets = indicators.load_container_subnets()
    assert ipaddress.ip_network("172.17.0.0/16") in nets
    assert ipaddress.ip_network("10.88.0.0/16") in nets
    assert indicators.in_container_subnet("172.17.0.3")
    assert indicators.in_container_subnet("10.88.0.2")
    assert not indicators.in_container_subnet("34.117.59.81")
    assert not indicators.in_container_subnet("10.0.0.2")
    assert not indicators.in_container_subnet("not-an-ip")
    assert not indicators.in_container_subnet("::1")
    assert indicators.in_container_subnet("::ffff:172.17.0.3")
    assert indicators.in_container_subnet(" [10.88.0.9] ")
    assert indicators.in_container_subnet("192.0.2.7", [ipaddress.ip_network("192.0.2.0/24")])
    assert not indicators.in_container_subnet("172.17.0.3", [])
    rows = indicators.load_container_subnet_rows()
    assert any(r.runtime == "docker" for r in rows)


def _write(tmp: Path, name: str, body: str) -> Path:
    for other in indicators.DATA_FILES:
        if not (tmp / other).exists():
            shutil.copy(indicators.DATA_DIR / other, tmp / other)
    (tmp / name).write_text(body)
    return tmp


@pytest.mark.parametrize("body,lineno,fragment", [
    ("#fields\tdomain\tservice\tcategory\nipinfo.io\tipinfo\n", 2, "expected 3"),
    ("#fields\tdomain\tservice\tcategory\nipinfo.io\tipinfo\tgeo\n", 2, "unknown category"),
    ("#fields\tdomain\tservice\tcategory\nIPINFO.IO\tipinfo\tip_echo\n", 2, "bad domain"),
    ("#fields\tdomain\tservice\tcategory\nipinfo.io\tipinfo\tip_echo\n"
     "ipinfo.io\tx\tip_echo\n", 3, "duplicate"),
    ("#fields\tdomain\tservice\tcategory\n# comment\n\nipinfo.io\tipinfo\tip_echo\n", 3, "blank"),
    ("#fields\tdomain\tservice\nipinfo.io\tipinfo\n", 1, "#fields header"),
    ("ipinfo.io\tipinfo\tip_echo\n", 1, "before the #fields"),
    ("#fields\tdomain\tservice\tcategory\nipinfo.io \tipinfo\tip_echo\n", 2, "whitespace"),
])
def test_bad_geo_rows_name_file_and_line(tmp_path: Path, body: str, lineno: int,
                                         fragment: str) -> None:
    _write(tmp_path, "geo_services.tsv", body)
    with pytest.raises(IndicatorFileError) as exc:
        indicators.parse_geo_services(tmp_path / "geo_services.tsv")
    assert exc.value.lineno == lineno
    assert str(exc.value).startswith(f"geo_services.tsv:{lineno}:")
    assert fragment in str(exc.value)


def test_bad_subnet_and_metadata_rows(tmp_path: Path) -> None:
    _write(tmp_path, "container_subnets.tsv",
           "#fields\tsubnet\truntime\tnote\n172.17.0.0/16\tdocker\tok\n172.17.0.1/16\tx\tbad\n")
    with pytest.raises(IndicatorFileError, match=r"container_subnets.tsv:3: bad subnet"):
        indicators.parse_container_subnets(tmp_path / "container_subnets.tsv")
    _write(tmp_path, "metadata_endpoints.tsv",
           "#fields\thost\tpath_prefix\tcloud\twhat\n169.254.169.254\tlatest\taws\tx\n")
    with pytest.raises(IndicatorFileError, match=r"metadata_endpoints.tsv:2: path_prefix"):
        indicators.parse_metadata_endpoints(tmp_path / "metadata_endpoints.tsv")
    with pytest.raises(IndicatorFileError, match="file not found"):
        indicators.parse_geo_services(tmp_path / "nope.tsv")


def test_zeek_copies_are_byte_identical() -> None:
    zeek = REPO / "zeek_scripts" / "data"
    assert indicators.differing_files(zeek) == [], (
        "run: python -m osquery_ext.indicators --export-zeek zeek_scripts/data")
    for name in indicators.DATA_FILES:
        assert (zeek / name).read_bytes() == (indicators.DATA_DIR / name).read_bytes()


def test_export_and_check_cli(tmp_path: Path) -> None:
    out = tmp_path / "zeekdata"
    run = [sys.executable, "-m", "osquery_ext.indicators"]
    r = subprocess.run(run + ["--export-zeek", str(out)], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(indicators.DATA_FILES)
    r = subprocess.run(run + ["--check-zeek", str(out)], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    (out / "geo_services.tsv").write_bytes((out / "geo_services.tsv").read_bytes() + b"x\n")
    r = subprocess.run(run + ["--check-zeek", str(out)], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert r.returncode == 1 and "geo_services.tsv" in r.stderr


def test_export_refuses_invalid_data(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write(src, "geo_services.tsv", "#fields\tdomain\tservice\tcategory\nbad\n")
    with pytest.raises(IndicatorFileError):
        indicators.export_zeek(tmp_path / "out", data_dir=src)
    assert not (tmp_path / "out").exists()


def test_zeek_format_header() -> None:
    """Zeek's Input framework needs a #fields line of tab-separated names and no blank lines."""
    for name in indicators.DATA_FILES:
        lines = (indicators.DATA_DIR / name).read_text().splitlines()
        assert sum(1 for ln in lines if ln.startswith("#fields\t")) == 1
        assert all(ln.strip() for ln in lines)


# -- completeness against public lists (issue 10 item 9) -------------------------------------------
SOURCES_DIR = REPO / "tests" / "data" / "indicator_sources"
_SOURCE_LINE = re.compile(r"^# source ([a-z0-9_]+): (.*)$")


def _read_source(path: Path) -> tuple[list[str], dict[str, str]]:
    """(host names the list gives, {reviewed name: why geo_services.tsv does not list it})."""
    names: list[str] = []
    excluded: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, why = line.partition("\t")
        if why:
            excluded[name] = why
        else:
            names.append(name.split("/", 1)[0].lower())
    return names, excluded


def _row_for(host: str, domains: set[str]) -> str | None:
    """The geo_services.tsv row that matches `host` (equal, or `host` ends with "." + row)."""
    labels = host.rstrip(".").split(".")
    for i in range(len(labels)):
        if ".".join(labels[i:]) in domains:
            return ".".join(labels[i:])
    return None


def _recorded_sources() -> dict[str, set[str]]:
    """The "# source <key>: rows..." comment block of geo_services.tsv (continuation lines
    start with "#   ")."""
    out: dict[str, set[str]] = {}
    key = None
    for line in (indicators.DATA_DIR / "geo_services.tsv").read_text().splitlines():
        m = _SOURCE_LINE.match(line)
        if m:
            key = m.group(1)
            out[key] = set(m.group(2).split())
        elif key and line.startswith("#   "):
            out[key].update(line[4:].split())
        else:
            key = None
    return out


def _source_files() -> list[Path]:
    files = sorted(SOURCES_DIR.glob("*.txt"))
    assert len(files) >= 6, f"vendored indicator sources missing in {SOURCES_DIR}"
    return files


@pytest.mark.parametrize("path", _source_files(), ids=lambda p: p.stem)
def test_every_name_of_a_public_list_is_covered(path: Path) -> None:
    """Each vendored list (Sigma, CAPE, Cuckoo, capa, malcontent, Elastic, common tools, DNS
    echo names) is covered name by name; a name left out must say why."""
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert len(header) >= 2 and any("Format" in h for h in header), \
        f"{path.name}: provenance header (where the list comes from, format) missing"
    names, excluded = _read_source(path)
    assert names, path.name
    domains = set(indicators.load_geo_services())
    missing = [n for n in names if _row_for(n, domains) is None]
    assert not missing, f"{path.name}: not matched by geo_services.tsv: {missing}"
    for name, why in excluded.items():
        assert why.startswith("not listed: ") and len(why) > 25, (path.name, name)
    # and the classifier flags a plain lookup of each listed name
    from osquery_ext.classifier import classify_command
    for n in names:
        cat = indicators.load_geo_services()[_row_for(n, domains)].category
        cmd = f"dig +short {n}" if cat == "dns_echo" else f"curl -s https://{n}/"
        assert classify_command(cmd).location_discovery, (path.name, cmd)


def test_geo_services_records_its_sources() -> None:
    """The data file's comment block names, per source, exactly the rows that match its names,
    so a reader of geo_services.tsv sees where each row comes from (rows no source names are
    the maintainers' own)."""
    domains = set(indicators.load_geo_services())
    recorded = _recorded_sources()
    assert set(recorded) == {p.stem for p in _source_files()}
    for path in _source_files():
        names, _ = _read_source(path)
        gave = {_row_for(n, domains) for n in names}
        assert recorded[path.stem] == gave, (
            f"geo_services.tsv '# source {path.stem}:' should list {sorted(gave)}")
    assert len(domains) >= 300
