"""Indicator data shared by the Python side and the Zeek package.

The lists of IP-echo / IP-geolocation services, cloud-metadata location endpoints and container
address ranges live in ``osquery_ext/data/*.tsv`` in Zeek's Input-framework ASCII format, so the
osquery extension, the scheduler and the Zeek scripts all read one source of truth. This module
loads and validates those files (a bad row is reported with file name and line number, because a
silently skipped row is a silently missed detection) and exports byte-identical copies for the
Zeek package::

    python -m osquery_ext.indicators --export-zeek zeek_scripts/data
    python -m osquery_ext.indicators --check-zeek zeek_scripts/data   # exit 1 when they differ

Only the standard library is used: this runs on every host.
"""
from __future__ import annotations

import argparse
import functools
import ipaddress
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
GEO_SERVICES_FILE = "geo_services.tsv"
METADATA_ENDPOINTS_FILE = "metadata_endpoints.tsv"
CONTAINER_SUBNETS_FILE = "container_subnets.tsv"
DATA_FILES: tuple[str, ...] = (GEO_SERVICES_FILE, METADATA_ENDPOINTS_FILE, CONTAINER_SUBNETS_FILE)

CATEGORIES = frozenset({"ip_geolocation", "ip_echo", "dns_echo"})

_FIELDS: dict[str, tuple[str, ...]] = {
    GEO_SERVICES_FILE: ("domain", "service", "category"),
    METADATA_ENDPOINTS_FILE: ("host", "path_prefix", "cloud", "what"),
    CONTAINER_SUBNETS_FILE: ("subnet", "runtime", "note"),
}

# Lower-case DNS name: labels of letters, digits, '-' and '_' (the last for SRV-style names),
# at least one dot unless it is a single-label special name such as "whoami.cloudflare".
_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
                        r"(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)+$")
_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_SERVICE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class IndicatorFileError(ValueError):
    """A data file is malformed; the message names the file and the line."""

    def __init__(self, path: Path | str, lineno: int, message: str) -> None:
        self.path = Path(path)
        self.lineno = lineno
        super().__init__(f"{self.path.name}:{lineno}: {message}" if lineno
                         else f"{self.path.name}: {message}")


@dataclass(frozen=True, slots=True)
class GeoService:
    """One row of geo_services.tsv."""

    domain: str
    service: str
    category: str


@dataclass(frozen=True, slots=True)
class MetadataEndpoint:
    """One row of metadata_endpoints.tsv: a cloud-metadata URL prefix that reveals location."""

    host: str
    path_prefix: str
    cloud: str
    what: str

    def matches(self, host: str, path: str) -> bool:
        """True when ``host`` is this endpoint's host and ``path`` starts with the prefix."""
        return host == self.host and path.startswith(self.path_prefix)


@dataclass(frozen=True, slots=True)
class ContainerSubnet:
    """One row of container_subnets.tsv."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    runtime: str
    note: str


def data_path(name: str, data_dir: Path | None = None) -> Path:
    """Path of a packaged data file (``data_dir`` overrides the package directory, for tests)."""
    return (data_dir or DATA_DIR) / name


def iter_rows(path: Path, fields: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, values) for each data row of a Zeek-style TSV file.

    The ``#fields`` header must list exactly ``fields``; other ``#`` lines are comments. Blank
    lines are rejected rather than skipped because Zeek's reader warns on them.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IndicatorFileError(path, 0, "file not found") from None
    except UnicodeDecodeError as exc:
        raise IndicatorFileError(path, 0, f"not UTF-8: {exc}") from None
    header_seen = False
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#fields"):
            got = tuple(line.split("\t")[1:])
            if got != tuple(fields):
                raise IndicatorFileError(path, lineno, f"#fields header is {got!r}, expected "
                                         f"{tuple(fields)!r} (tab separated)")
            header_seen = True
            continue
        if line.startswith("#"):
            continue
        if not line.strip():
            raise IndicatorFileError(path, lineno, "blank line (Zeek's reader rejects it)")
        if not header_seen:
            raise IndicatorFileError(path, lineno, "data row before the #fields header")
        values = line.split("\t")
        if len(values) != len(fields):
            raise IndicatorFileError(path, lineno, f"expected {len(fields)} tab-separated fields "
                                     f"({', '.join(fields)}), got {len(values)}")
        if any(v != v.strip() or not v for v in values):
            raise IndicatorFileError(path, lineno, "empty field or stray whitespace")
        yield lineno, values
    if not header_seen:
        raise IndicatorFileError(path, 0, "no #fields header")


def parse_geo_services(path: Path) -> dict[str, GeoService]:
    """Read and validate geo_services.tsv into {domain: GeoService}."""
    out: dict[str, GeoService] = {}
    for lineno, (domain, service, category) in iter_rows(path, _FIELDS[GEO_SERVICES_FILE]):
        if not _DOMAIN_RE.match(domain):
            raise IndicatorFileError(path, lineno, f"bad domain {domain!r} (lower-case DNS name "
                                     "with at least two labels)")
        if not _SERVICE_RE.match(service):
            raise IndicatorFileError(path, lineno, f"bad service name {service!r}")
        if category not in CATEGORIES:
            raise IndicatorFileError(path, lineno, f"unknown category {category!r}; one of "
                                     f"{', '.join(sorted(CATEGORIES))}")
        if domain in out:
            raise IndicatorFileError(path, lineno, f"duplicate domain {domain!r}")
        out[domain] = GeoService(domain, service, category)
    if not out:
        raise IndicatorFileError(path, 0, "no rows")
    return out


def parse_metadata_endpoints(path: Path) -> list[MetadataEndpoint]:
    """Read and validate metadata_endpoints.tsv (longest prefix first, so the first match is
    the most specific)."""
    out: list[MetadataEndpoint] = []
    seen: set[tuple[str, str]] = set()
    for lineno, (host, prefix, cloud, what) in iter_rows(path, _FIELDS[METADATA_ENDPOINTS_FILE]):
        # Single-label names are allowed here: GCP answers on plain "metadata" too.
        host_ok = _DOMAIN_RE.match(host) or _LABEL_RE.match(host)
        if not host_ok:
            try:
                ipaddress.ip_address(host)
                host_ok = True
            except ValueError:
                pass
        if not host_ok:
            raise IndicatorFileError(path, lineno, f"bad host {host!r} (DNS name or IP address)")
        if not prefix.startswith("/"):
            raise IndicatorFileError(path, lineno, f"path_prefix {prefix!r} must start with '/'")
        if (host, prefix) in seen:
            raise IndicatorFileError(path, lineno, f"duplicate endpoint {host}{prefix}")
        seen.add((host, prefix))
        out.append(MetadataEndpoint(host, prefix, cloud, what))
    out.sort(key=lambda e: len(e.path_prefix), reverse=True)
    return out


def parse_container_subnets(path: Path) -> list[ContainerSubnet]:
    """Read and validate container_subnets.tsv."""
    out: list[ContainerSubnet] = []
    for lineno, (subnet, runtime, note) in iter_rows(path, _FIELDS[CONTAINER_SUBNETS_FILE]):
        try:
            net = ipaddress.ip_network(subnet, strict=True)
        except ValueError as exc:
            raise IndicatorFileError(path, lineno, f"bad subnet {subnet!r}: {exc}") from None
        out.append(ContainerSubnet(net, runtime, note))
    return out


@functools.lru_cache(maxsize=8)
def _geo_cached(path: Path) -> dict[str, GeoService]:
    return parse_geo_services(path)


@functools.lru_cache(maxsize=8)
def _metadata_cached(path: Path) -> tuple[MetadataEndpoint, ...]:
    return tuple(parse_metadata_endpoints(path))


@functools.lru_cache(maxsize=8)
def _subnets_cached(path: Path) -> tuple[ContainerSubnet, ...]:
    return tuple(parse_container_subnets(path))


def load_geo_services(data_dir: Path | None = None) -> dict[str, GeoService]:
    """{domain: GeoService} from geo_services.tsv (parsed once per process; a copy is returned)."""
    return dict(_geo_cached(data_path(GEO_SERVICES_FILE, data_dir)))


def load_metadata_endpoints(data_dir: Path | None = None) -> list[MetadataEndpoint]:
    """Metadata endpoints, longest path prefix first."""
    return list(_metadata_cached(data_path(METADATA_ENDPOINTS_FILE, data_dir)))


def load_container_subnet_rows(data_dir: Path | None = None) -> list[ContainerSubnet]:
    """container_subnets.tsv rows with their runtime and note."""
    return list(_subnets_cached(data_path(CONTAINER_SUBNETS_FILE, data_dir)))


def load_container_subnets(
        data_dir: Path | None = None) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The container address ranges as ip_network objects."""
    return [row.network for row in _subnets_cached(data_path(CONTAINER_SUBNETS_FILE, data_dir))]


def in_container_subnet(addr: str, subnets=None) -> bool:
    """True when ``addr`` (an IPv4/IPv6 address string) is in a container range.

    IPv4-mapped IPv6 addresses count as their IPv4 address. ``subnets`` defaults to container_subnets.tsv; anything that is not an address is False.
    """
    try:
        ip = ipaddress.ip_address(addr.strip().strip("[]").split("%", 1)[0])
    except (ValueError, AttributeError):
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:  # ::ffff:172.17.0.3 from a tcp6 socket
        ip = ip.ipv4_mapped
    nets = load_container_subnets() if subnets is None else subnets
    return any(ip.version == net.version and ip in net for net in nets)


def validate_all(data_dir: Path | None = None) -> None:
    """Parse every data file; raises IndicatorFileError on the first bad row."""
    parse_geo_services(data_path(GEO_SERVICES_FILE, data_dir))
    parse_metadata_endpoints(data_path(METADATA_ENDPOINTS_FILE, data_dir))
    parse_container_subnets(data_path(CONTAINER_SUBNETS_FILE, data_dir))


def export_zeek(dest: Path, data_dir: Path | None = None) -> list[Path]:
    """Validate, then write byte-identical copies of the data files into ``dest``."""
    validate_all(data_dir)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in DATA_FILES:
        target = dest / name
        target.write_bytes(data_path(name, data_dir).read_bytes())
        written.append(target)
    return written


def differing_files(dest: Path, data_dir: Path | None = None) -> list[str]:
    """Names of data files whose copy in ``dest`` is missing or not byte-identical."""
    out = []
    for name in DATA_FILES:
        copy = dest / name
        if not copy.is_file() or copy.read_bytes() != data_path(name, data_dir).read_bytes():
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m osquery_ext.indicators",
        description="Validate Stowaway's indicator files and keep the Zeek package's copies in "
                    "step with them (the Zeek scripts read zeek_scripts/data/*.tsv).")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--export-zeek", metavar="DIR", type=Path,
                       help="write byte-identical copies of the data files into DIR")
    group.add_argument("--check-zeek", metavar="DIR", type=Path,
                       help="exit 1 when DIR's copies differ from the data files")
    args = parser.parse_args(argv)
    try:
        if args.export_zeek:
            for path in export_zeek(args.export_zeek):
                print(f"wrote {path}")
            return 0
        validate_all()
        if args.check_zeek:
            diff = differing_files(args.check_zeek)
            if diff:
                print(f"out of date in {args.check_zeek}: {', '.join(diff)}; run "
                      f"python -m osquery_ext.indicators --export-zeek {args.check_zeek}",
                      file=sys.stderr)
                return 1
            print(f"{args.check_zeek}: up to date")
            return 0
    except IndicatorFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    geo = load_geo_services()
    print(f"ok: {len(geo)} geo services, {len(load_metadata_endpoints())} metadata endpoints, "
          f"{len(load_container_subnets())} container subnets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
