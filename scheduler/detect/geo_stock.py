"""T1614 location-discovery lookups from *stock* Zeek logs (sites that run Zeek without our package).

The Zeek package (``zeek_scripts/``) writes ``container_geo.log`` itself. Many sensors run plain
Zeek, so this module finds the same evidence in the logs every Zeek writes, with the same indicator
list and container subnets (``osquery_ext.indicators`` / ``osquery_ext.classifier``):

* ``http.log``: the Host header (port stripped) names a geolocation / IP-echo service -> ``http``;
  a request to a cloud instance-metadata location path -> ``http`` with category
  ``cloud_metadata``;
* ``dns.log``: the query names such a service (label-boundary match, so ``www.ipinfo.io`` counts and
  ``notipinfo.io`` does not; DNS tricks like ``myip.opendns.com`` are in the list) -> ``dns``; the
  answers are remembered per address for the answer's TTL (plus a grace period);
* ``ssl.log``: the SNI names a service -> ``tls``; no (or another) SNI to an address that a DNS
  answer for a listed name returned -> ``resolved_ip`` (HTTPS without SNI, domain fronting);
* ``conn.log``: any other connection to such an address -> ``resolved_ip``, unless the same uid was
  already reported from http/ssl (``conn_after_name=False``, the standalone reader's default; the
  pipeline reports it either way, so that reading order cannot change a verdict).

Only sources inside a container subnet count. Per-line work is kept small because logs are large:
only the needed columns are converted, and address and name verdicts are cached.

Design for streaming: :class:`GeoStockDetector` is fed one record at a time (``feed(stream, rec)``),
so a tailer can drive it; :func:`detect_directory` is the batch driver (dns first, so the address
cache is filled before ssl/conn are looked at; lookups are still checked against the DNS answer's
time window, so reading order cannot create anachronistic matches).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import sys
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from scheduler.collect.zeeklog import ParseStats, find_logs, iter_zeek_log

log = logging.getLogger(__name__)

#: Columns each stock log must provide to the detector (the fast path converts only these).
FIELDS: dict[str, tuple[str, ...]] = {
    "http": ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "method", "host",
             "uri", "user_agent"),
    "dns": ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "query",
            "qtype_name", "rcode_name", "answers", "TTLs"),
    "ssl": ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "server_name"),
    "conn": ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service"),
}
#: Reading order of :func:`detect_directory`.
STREAMS = ("dns", "http", "ssl", "conn")


@dataclass(slots=True)
class GeoDetection:
    """One location-discovery lookup seen on the wire (the stock-log twin of container_geo.log)."""

    ts: float
    uid: str
    orig_h: str
    orig_p: int | None
    resp_h: str | None
    resp_p: int | None
    method: str             # http | dns | tls | resolved_ip
    service: str            # e.g. "ipinfo", "opendns-myip", "aws-metadata"
    category: str           # ip_geolocation | ip_echo | dns_echo | cloud_metadata
    host: str               # HTTP Host, DNS query, TLS SNI, or the DNS name behind a resolved_ip
    uri: str | None = None
    user_agent: str | None = None
    log: str = ""           # file the evidence came from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Resolved:
    start: float
    expires: float
    name: str
    service: str
    category: str


@dataclass(frozen=True, slots=True)
class _Match:
    service: str
    category: str
    domain: str


def _default_indicators() -> tuple[list[Any], Callable[[str], Any], Callable[[str, str], Any],
                                   frozenset[str]]:
    """Subnets, matchers and metadata host names from the shared indicator modules (one source
    of truth with the osquery extension and, through zeek_scripts/data, the Zeek package)."""
    from osquery_ext import classifier, indicators

    # read now, not at the first record: a broken list fails at start (the lists are cached, so
    # match_domain reads this one)
    indicators.load_geo_services()
    hosts = frozenset(e.host.lower() for e in indicators.load_metadata_endpoints())
    return (list(indicators.load_container_subnets()), classifier.match_domain,
            classifier.match_metadata, hosts)


def strip_port(host: str) -> str:
    """HTTP Host header -> bare lower-case name: ``ipinfo.io:80`` -> ``ipinfo.io``,
    ``[2001:db8::1]:8080`` -> ``2001:db8::1``; a trailing dot is dropped."""
    h = host.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return h[1:end] if end > 0 else h
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


class GeoStockDetector:
    """Stateful detector over stock Zeek records; see the module docstring for the rules."""

    def __init__(self, subnets: Iterable[Any] | None = None,
                 match_domain: Callable[[str], Any] | None = None,
                 match_metadata: Callable[[str, str], Any] | None = None,
                 metadata_hosts: Iterable[str] | None = None,
                 ttl_grace: float = 60.0, max_ttl: float = 3600.0,
                 resolved_max: int = 100_000, memo_max: int = 200_000,
                 conn_after_name: bool = False) -> None:
        if subnets is None or match_domain is None or match_metadata is None:
            default_subnets, default_domain, default_metadata, default_hosts = \
                _default_indicators()
            subnets = default_subnets if subnets is None else subnets
            match_domain = default_domain if match_domain is None else match_domain
            if match_metadata is None:
                match_metadata = default_metadata
                metadata_hosts = default_hosts if metadata_hosts is None else metadata_hosts
        self.subnets = [ipaddress.ip_network(str(s), strict=False) for s in subnets]
        self._match_domain = match_domain
        self._match_metadata = match_metadata
        # None: unknown (a custom metadata matcher) -> no host prefilter for metadata requests.
        self._metadata_hosts = (frozenset(h.lower() for h in metadata_hosts)
                                if metadata_hosts is not None else None)
        self._host_memo: dict[str, bool] = {}
        self._http_memo: dict[Any, tuple[str, _Match | None, bool]] = {}
        self.ttl_grace = ttl_grace
        self.max_ttl = max_ttl
        self.resolved_max = resolved_max
        self.memo_max = memo_max
        self._addr_memo: dict[str, bool] = {}
        self._name_memo: dict[str, _Match | None] = {}
        # address -> DNS answers for listed names (time windows), oldest address first
        self.resolved: OrderedDict[str, list[_Resolved]] = OrderedDict()
        self._resolved_count = 0
        # uids already reported by a name (http/tls) or resolved_ip, and DNS (uid, query) pairs
        self._named_uids: OrderedDict[str, None] = OrderedDict()
        self._dns_seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        # Sources that stand for containers outside any container subnet: a host's uplink
        # address its containers are masqueraded to (the pipeline sets the NAT join's test).
        self.also_source: Callable[[str], bool] | None = None
        # True: a conn.log record to a resolved address is reported even when its uid was
        # already reported by name (http/ssl). The pipeline sets it: its verdicts must not
        # depend on which log it read first. Zeek writes the connection when it ends, after
        # the http/ssl record, while a replay sorted by time takes the connection (its start)
        # first; with the suppression the daemon lost the conn evidence the replay kept.
        # False (the standalone `detect_directory`, which reads dns, http, ssl, conn in that
        # order): one detection per lookup.
        self.conn_after_name = conn_after_name

    # -- verdict caches --------------------------------------------------------------------
    def is_container(self, addr: str | None) -> bool:
        """Is ``addr`` inside a container subnet? Cached: logs repeat the same few addresses."""
        if not addr:
            return False
        verdict = self._addr_memo.get(addr)
        if verdict is None:
            try:
                ip = ipaddress.ip_address(addr.split("%", 1)[0])
                mapped = getattr(ip, "ipv4_mapped", None)   # ::ffff:a.b.c.d counts as a.b.c.d
                if mapped is not None:
                    ip = mapped
                verdict = any(ip.version == net.version and ip in net for net in self.subnets)
            except ValueError:
                verdict = False
            if len(self._addr_memo) >= self.memo_max:
                self._addr_memo.clear()
            self._addr_memo[addr] = verdict
        if not verdict and self.also_source is not None:
            return self.also_source(addr)   # learnt as flows arrive: never memoised
        return verdict

    def match_name(self, name: str | None) -> _Match | None:
        """Label-boundary match of a DNS name / Host / SNI against the shared list (cached)."""
        if not name:
            return None
        key = name.strip().lower().rstrip(".")
        if key in self._name_memo:
            return self._name_memo[key]
        found = None
        m = self._match_domain(key) if key else None
        if m is not None:
            found = _Match(str(getattr(m, "service", "")), str(getattr(m, "category", "")),
                           str(getattr(m, "domain", key)))
        if len(self._name_memo) >= self.memo_max:
            self._name_memo.clear()
        self._name_memo[key] = found
        return found

    def _remember_uid(self, uid: str | None) -> None:
        if not uid:
            return
        self._named_uids[uid] = None
        if len(self._named_uids) > self.memo_max:
            self._named_uids.popitem(last=False)

    # -- early row filters (run on raw column text, before a record is built) -------------
    def prefilter(self, stream: str) -> dict[str, Callable[[str], bool]]:
        """Column predicates that drop rows which cannot produce a detection, so the reader
        skips building them. They never drop a row the rules would report."""
        if stream == "http":
            return {"id.orig_h": self.is_container, "host": self._host_interesting}
        if stream == "dns":
            return {"query": self._name_interesting}
        if stream == "ssl":
            return {"id.orig_h": self.is_container}
        if stream == "conn":
            return {"id.orig_h": self.is_container, "id.resp_h": self._resolved_known}
        return {}

    def rows_of_interest(self, stream: str, col: Callable[[str], Any], n: int,
                         codes: Callable[[str], Any] | None = None) -> Any:
        """The batch form of `prefilter`: a bool array, True for the rows of an `n`-row batch
        of `stream` that `feed` may report or keep state from (DNS answers, reported uids);
        False rows give [] and change nothing. `col(name)` is the batch's text column ("" when
        unset). Every verdict is taken once per distinct value of the batch. `codes(name)`,
        when given, returns that column's (codes, uniques) (`ZeekBatch.codes` at the rows) or
        None, so the values are not hashed again."""
        import numpy as np

        from scheduler.detect.join import per_unique

        def judge(name: str, fn: Callable[[Any], Any]) -> Any:
            return per_unique(col(name), fn, codes=codes(name) if codes is not None else None)

        def named(name: str) -> Any:
            return judge(name, lambda v: self.match_name(v) is not None)

        if stream == "dns":
            return named("query")
        if stream not in ("http", "ssl", "conn"):
            return np.ones(n, dtype=bool)
        source = judge("id.orig_h", self.is_container)
        if stream == "http":
            return source & judge("host", self._host_interesting)
        resolved = judge("id.resp_h", self._resolved_known)
        if stream == "ssl":
            return source & (named("server_name") | resolved)
        return source & resolved

    def _host_interesting(self, raw: str) -> bool:
        verdict = self._host_memo.get(raw)
        if verdict is None:
            host = strip_port(raw) if raw != "-" else ""
            verdict = bool(host) and (
                self.match_name(host) is not None
                or self._metadata_hosts is None or host in self._metadata_hosts)
            if len(self._host_memo) >= self.memo_max:
                self._host_memo.clear()
            self._host_memo[raw] = verdict
        return verdict

    def _name_interesting(self, raw: str) -> bool:
        return raw != "-" and self.match_name(raw) is not None

    def _resolved_known(self, raw: str) -> bool:
        return raw in self.resolved

    # -- DNS answer cache ------------------------------------------------------------------
    def remember_answers(self, ts: float, name: str, match: _Match, answers: list[Any] | None,
                         ttls: list[Any] | None) -> int:
        """Keep the addresses a DNS answer for a listed name returned, for TTL + grace seconds."""
        added = 0
        for i, answer in enumerate(answers or []):
            text = str(answer)
            try:
                ipaddress.ip_address(text)
            except ValueError:
                continue  # CNAME / TXT / PTR data, not an address
            ttl = 0.0
            if ttls and i < len(ttls) and ttls[i] is not None:
                try:
                    ttl = float(ttls[i])
                except (TypeError, ValueError):
                    ttl = 0.0
            expires = ts + min(max(ttl, 0.0), self.max_ttl) + self.ttl_grace
            entry = _Resolved(ts, expires, name, match.service, match.category)
            bucket = self.resolved.get(text)
            if bucket is None:
                bucket = self.resolved[text] = []
            else:
                self.resolved.move_to_end(text)
            bucket[:] = [e for e in bucket if e.expires >= ts or e.start > ts]
            bucket.append(entry)
            added += 1
            self._resolved_count += 1
        while self._resolved_count > self.resolved_max and self.resolved:
            _, old = self.resolved.popitem(last=False)
            self._resolved_count -= len(old)
        return added

    def resolved_for(self, addr: str | None, ts: float) -> _Resolved | None:
        """The DNS answer (for a listed name) that made ``addr`` known at time ``ts``, if any."""
        if not addr:
            return None
        bucket = self.resolved.get(addr)
        if not bucket:
            return None
        for entry in reversed(bucket):
            if entry.start - 1.0 <= ts <= entry.expires:
                return entry
        return None

    # -- per-stream rules ------------------------------------------------------------------
    def feed(self, stream: str, rec: dict[str, Any], source: str = "") -> list[GeoDetection]:
        """Dispatch one record of ``stream`` (http|dns|ssl|conn); other streams are ignored."""
        handler = self._handlers.get(stream)
        return handler(self, rec, source) if handler else []

    def on_http(self, rec: dict[str, Any], source: str = "") -> list[GeoDetection]:
        orig = rec.get("id.orig_h")
        if not self.is_container(orig):
            return []
        raw_host = rec.get("host")
        if not raw_host:
            return []
        host, m, maybe_metadata = self._http_host(raw_host)
        uri = rec.get("uri")
        if m is None:
            if not maybe_metadata:
                return []
            m = self._metadata_match(host, uri or "/")
            if m is None:
                return []
        self._remember_uid(rec.get("uid"))
        return [self._detection(rec, "http", m, host, source, uri=uri,
                                user_agent=rec.get("user_agent"))]

    def _http_host(self, raw_host: Any) -> tuple[str, _Match | None, bool]:
        """Host header -> (bare name, its list match, could it be a metadata endpoint); cached
        per header value: a deployment's requests name few hosts, over and over."""
        hit = self._http_memo.get(raw_host)
        if hit is None:
            host = strip_port(str(raw_host))
            hit = (host, self.match_name(host),
                   self._metadata_hosts is None or host in self._metadata_hosts)
            if len(self._http_memo) >= self.memo_max:
                self._http_memo.clear()
            self._http_memo[raw_host] = hit
        return hit

    def _metadata_match(self, host: str, uri: str) -> _Match | None:
        """Cloud instance-metadata location request (service ``<cloud>-metadata``)."""
        ep = self._match_metadata(host, uri)
        if ep is None:
            return None
        cloud = str(getattr(ep, "cloud", "") or "cloud")
        return _Match(f"{cloud}-metadata", "cloud_metadata", host)

    def on_dns(self, rec: dict[str, Any], source: str = "") -> list[GeoDetection]:
        query = rec.get("query")
        m = self.match_name(query)
        if m is None:
            return []
        if m.category != "dns_echo" and rec.get("answers"):
            # Any client's answer counts (a container's lookup often leaves through the
            # runtime's or the host's resolver); a DNS echo answer is the asker's own
            # public address, not a server of the service.
            self.remember_answers(float(rec.get("ts") or 0.0), str(query).lower(), m,
                                  rec.get("answers"), rec.get("TTLs"))
        if not self.is_container(rec.get("id.orig_h")):
            return []
        key = (str(rec.get("uid") or ""), str(query).lower())
        if key in self._dns_seen:
            return []  # the AAAA twin of an A query on the same socket: one lookup
        self._dns_seen[key] = None
        if len(self._dns_seen) > self.memo_max:
            self._dns_seen.popitem(last=False)
        return [self._detection(rec, "dns", m, str(query).lower(), source)]

    def on_ssl(self, rec: dict[str, Any], source: str = "") -> list[GeoDetection]:
        orig = rec.get("id.orig_h")
        if not self.is_container(orig):
            return []
        sni = rec.get("server_name")
        m = self.match_name(sni)
        if m is not None:
            self._remember_uid(rec.get("uid"))
            return [self._detection(rec, "tls", m, str(sni).lower(), source)]
        return self._resolved(rec, source)

    def on_conn(self, rec: dict[str, Any], source: str = "") -> list[GeoDetection]:
        if not self.conn_after_name and rec.get("uid") in self._named_uids:
            return []
        if not self.is_container(rec.get("id.orig_h")):
            return []
        return self._resolved(rec, source)

    def _resolved(self, rec: dict[str, Any], source: str) -> list[GeoDetection]:
        ts = float(rec.get("ts") or 0.0)
        entry = self.resolved_for(rec.get("id.resp_h"), ts)
        if entry is None:
            return []
        self._remember_uid(rec.get("uid"))
        m = _Match(entry.service, entry.category, entry.name)
        return [self._detection(rec, "resolved_ip", m, entry.name, source)]

    _handlers: dict[str, Callable[..., list[GeoDetection]]] = {
        "http": on_http, "dns": on_dns, "ssl": on_ssl, "conn": on_conn,
    }

    @staticmethod
    def _detection(rec: dict[str, Any], method: str, m: _Match, host: str, source: str,
                   uri: Any = None, user_agent: Any = None) -> GeoDetection:
        return GeoDetection(
            ts=float(rec.get("ts") or 0.0), uid=str(rec.get("uid") or ""),
            orig_h=str(rec.get("id.orig_h")), orig_p=rec.get("id.orig_p"),
            resp_h=rec.get("id.resp_h"), resp_p=rec.get("id.resp_p"), method=method,
            service=m.service, category=m.category, host=host, uri=uri, user_agent=user_agent,
            log=source)


def iter_stream(detector: GeoStockDetector, stream: str, paths: Iterable[str | os.PathLike[str]],
                stats: ParseStats | None = None) -> Iterator[GeoDetection]:
    """Run one stock log stream's files through the detector."""
    fields = FIELDS[stream]
    feed = detector._handlers[stream]
    where = detector.prefilter(stream)
    for path in paths:
        source = str(path)
        for rec in iter_zeek_log(path, stats, fields=fields, where=where):
            yield from feed(detector, rec, source)


def detect_directory(directory: str | os.PathLike[str], detector: GeoStockDetector | None = None,
                     stats: ParseStats | None = None) -> list[GeoDetection]:
    """All lookups in one Zeek log directory (TSV or JSON, plain or .gz), in time order."""
    detector = detector if detector is not None else GeoStockDetector()
    found: list[GeoDetection] = []
    for stream in STREAMS:
        found.extend(iter_stream(detector, stream, find_logs(directory, stream), stats))
    found.sort(key=lambda d: (d.ts, d.uid, d.method))
    return found


def main(argv: list[str] | None = None) -> int:
    """``python -m scheduler.detect.geo_stock DIR [DIR ...]``: print detections as JSON lines."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", help="Zeek log directories")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stats = ParseStats()
    for d in args.dirs:
        for det in detect_directory(d, stats=stats):
            print(json.dumps(det.to_dict(), sort_keys=True))
    print(f"# files={stats.files} lines={stats.lines} records={stats.records} "
          f"prefiltered={stats.filtered} bad_lines={stats.bad_lines} "
          f"io_errors={stats.io_errors}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
