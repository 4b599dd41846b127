"""Normalised records: the contract between the scheduler (which collects and joins) and the model
(which turns them into feature windows).

The scheduler builds these from osquery results and Zeek logs after attributing each network record
to a container; the model never reads raw logs. Times are epoch seconds (float, UTC).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator


@dataclass(slots=True)
class ProcessRecord:
    """One process start inside a container (exec event or first poll sighting)."""

    ts: float
    container_id: str
    image: str
    pid: int
    ppid: int = 0
    name: str = ""          # comm / basename of the executable
    path: str = ""          # executable path
    cmdline: str = ""       # argv joined with spaces
    host: str = ""
    location_discovery: bool = False
    indicator: str = ""     # what the T1614 classifier matched, if anything


@dataclass(slots=True)
class NetRecord:
    """One Zeek record (conn, dns, http, ssl or container_geo) attributed to a container.

    `container_id` is "" when the source address lies in a container subnet but no known container
    held it at that time.
    """

    ts: float
    kind: str               # "conn" | "dns" | "http" | "ssl" | "geo"
    container_id: str
    image: str
    orig_h: str
    resp_h: str
    resp_p: int = 0
    orig_p: int = 0
    proto: str = ""         # tcp / udp / icmp
    uid: str = ""
    host: str = ""          # sensor or container host name
    domain: str = ""        # DNS query, HTTP Host, TLS SNI
    rcode: str = ""         # DNS rcode name (NOERROR, NXDOMAIN, ...)
    conn_state: str = ""
    bytes_out: int = 0      # orig_bytes (conn)
    bytes_in: int = 0       # resp_bytes (conn)
    uri: str = ""
    user_agent: str = ""
    geo_service: str = ""   # set when the destination is an IP-geolocation / IP-echo service
    attribution: str = ""   # the join that named the container: bridge_address | nat_flow |
                            # host_resolver (scheduler.detect.nat_join); "" when none did
    container_addr: str = ""  # NAT joins: the container's own address:port behind the host's


@dataclass(slots=True)
class LifecycleRecord:
    """A container lifecycle event from the runtime's event stream."""

    ts: float
    container_id: str
    image: str
    action: str             # create | start | die | destroy | restart | exec | ...
    name: str = ""
    host: str = ""
    exit_code: int | None = None


@dataclass(slots=True)
class ContainerInfo:
    """What the inventory knows about a container; used for age and grouping."""

    container_id: str
    image: str
    name: str = ""
    host: str = ""
    image_id: str = ""      # digest when known
    created: float | None = None
    environment: str = "default"
    ip_addresses: list[str] = field(default_factory=list)


@dataclass
class NetColumns:
    """Many NetRecords as columns (numpy arrays of equal length, rows in time order): what the
    batch engine hands to the feature windows, so a window counts a batch's rows at once instead
    of holding a NetRecord (~650 B) per row. Field meanings are NetRecord's; text columns are
    numpy object arrays of str, int columns int64."""

    ts: "object"            # np.ndarray float64
    kind: "object"          # object array of str
    container_id: "object"
    image: "object"
    orig_h: "object"
    resp_h: "object"
    resp_p: "object"        # int64
    orig_p: "object"        # int64
    proto: "object"
    uid: "object"
    host: "object"
    domain: "object"
    rcode: "object"
    conn_state: "object"
    bytes_out: "object"     # int64
    bytes_in: "object"      # int64
    uri: "object"
    user_agent: "object"
    geo_service: "object"
    attribution: "object"
    container_addr: "object"
    #: Factorizations of text columns the builder already had: name -> (codes, values), one code
    #: per row, `values[codes]` equal to the column. The batch engine gets them for free (the
    #: Zeek reader's dictionaries, attribution's holder index), and hashing a column again cost
    #: a tenth of its Zeek path. `values` may repeat a value or hold one no row has. Columns
    #: are never changed in place once built (`take` makes new ones and keeps no codes).
    codes: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ts)

    def coded(self, name: str, rows: "object" = None) -> tuple["object", "object"]:
        """(codes, values) of column `name` at `rows` (all when None): `values[codes]` equals
        the column there. From `codes` when the builder gave them (values may then repeat or be
        unused), else by hashing (model.codes.factorize: distinct values, first-seen order)."""
        known = self.codes.get(name)
        if known is not None:
            c, v = known
            return (c if rows is None else c[rows]), v
        from model.codes import factorize     # numpy and pyarrow: only for the batch engine

        col = getattr(self, name)
        return factorize(col if rows is None else col[rows])

    def record(self, i: int) -> NetRecord:
        """Row i as a NetRecord (evidence samples, rules): built only for the rows kept."""
        return NetRecord(*[_py(getattr(self, f)[i]) for f in NET_FIELDS])

    def records(self, idx: "object") -> list[NetRecord]:
        """Rows `idx` as NetRecords, a column at a time (`tolist` gives plain Python values):
        what `record` gives for each, for many rows at a fraction of the cost."""
        return [NetRecord(*vals) for vals in self.tuples(idx)]

    def tuples(self, idx: "object") -> "Iterator[tuple]":
        """Rows `idx` as tuples of NET_FIELDS values (`records` without the NetRecord: for
        what keeps many rows and reads few of them, as the windows' evidence samples)."""
        return zip(*[getattr(self, f)[idx].tolist() for f in NET_FIELDS])

    def take(self, idx: "object") -> "NetColumns":
        """The rows at `idx` (index array or boolean mask), in that order."""
        return NetColumns(**{f: getattr(self, f)[idx] for f in NET_FIELDS})

    def materialized(self) -> "NetColumns":
        """The same rows with every column a numpy array: a column that makes its rows when
        asked (the Zeek reader's DeferredText: uid, uri, user agent) is made now. For what
        keeps or writes every row (the daemon's close-lag queue)."""
        import numpy as np

        cols = {f: getattr(self, f) for f in NET_FIELDS}
        if all(isinstance(c, np.ndarray) for c in cols.values()):
            return self
        return NetColumns(**{f: c if isinstance(c, np.ndarray) else np.asarray(c)
                             for f, c in cols.items()}, codes=self.codes)


#: NetRecord's fields, in order (NetColumns has one column each).
NET_FIELDS: tuple[str, ...] = tuple(NetRecord.__dataclass_fields__)


def _py(v: "object") -> "object":
    """numpy scalars back to Python ones (a NetRecord's fields are plain str/int/float)."""
    item = getattr(v, "item", None)
    return item() if item is not None else v
