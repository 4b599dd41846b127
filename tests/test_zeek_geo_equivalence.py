"""The Zeek package's container_geo.log and the stock-log detector give the same alerts.

Why: the demo recordings now carry what the real package wrote (scheduler/demo_data/regen_zeek.py
ran `zeek -r` with zeek_scripts/ over the vendored scenario pcaps). Sites without the package
rely on scheduler/detect/geo_stock.py reading conn/dns/http/ssl; both paths must name the same
containers and images, or one of them is wrong. Each recording is replayed three ways:

* ``package``: container_geo.log + conn.log only (the stock dns/http/ssl logs removed), so every
  network T1614 verdict comes from the package's own records;
* ``stock``: container_geo.log removed (a sensor without the package);
* ``both``: the recording as shipped.

The (rule, container id, image) of alerts carrying network evidence must agree, and the
package's evidence must be container_geo records (method, service, the map's image).
"""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from scheduler.replay import replay

DEMO = Path(__file__).resolve().parents[1] / "scheduler" / "demo_data"


def _variant(src: Path, dst: Path, drop: tuple[str, ...]) -> Path:
    shutil.copytree(src, dst)
    for stream in drop:
        p = dst / "zeek" / f"{stream}.log.gz"
        if p.exists():
            p.unlink()
    return dst


def _network_keys(alerts: list) -> set[tuple[str, str, str]]:
    """(rule, container id, image) of the alerts that carry network-side evidence."""
    return {(a.rule, a.container.id, a.container.image) for a in alerts
            if any(e.get("side") == "network" for e in a.evidence)}


def _geo_rows(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt") as fh:
        lines = fh.read().splitlines()
    fields = next(ln for ln in lines if ln.startswith("#fields")).split("\t")[1:]
    return [dict(zip(fields, ln.split("\t"))) for ln in lines if ln and not ln.startswith("#")]


@pytest.mark.parametrize("scenario,containers", [("geo_lookup", 4), ("churn", 40)])
def test_package_and_stock_logs_alert_alike(tmp_path: Path, scenario: str, containers: int
                                            ) -> None:
    src = DEMO / scenario
    geo_log = src / "zeek" / "container_geo.log.gz"
    assert geo_log.exists(), "regenerate with scheduler/demo_data/regen_zeek.py"
    rows = _geo_rows(geo_log)
    assert rows and all(r["container_id"] not in ("", "-") and r["image"] not in ("", "-")
                        for r in rows), "the package should attribute every row from the map"

    package = replay(_variant(src, tmp_path / "package", ("dns", "http", "ssl")))
    stock = replay(_variant(src, tmp_path / "stock", ("container_geo",)))
    both = replay(src)

    pk, st, bo = (_network_keys(r.alerts) for r in (package, stock, both))
    loc = {k for k in st if k[0] == "location_discovery"}
    assert len({k[1] for k in loc}) == containers
    assert {k for k in pk if k[0] == "location_discovery"} == loc
    assert {k for k in bo if k[0] == "location_discovery"} == loc
    assert bo == st

    # The package path's network evidence is the container_geo record itself.
    mapped = {r["container_id"]: r["image"] for r in rows}
    for a in package.alerts:
        if a.rule != "location_discovery":
            continue
        geo = [e for e in a.evidence if e.get("side") == "network" and e.get("kind") == "geo"]
        assert geo, f"{a.container.name}: no container_geo evidence"
        assert all(e["method"] in ("dns", "http", "tls", "resolved_ip") and e["service"]
                   for e in geo)
        assert all(e["summary"].startswith("container_geo ") for e in geo)
        assert all(f"image={mapped[a.container.id]}" in e["summary"] for e in geo)
    # Without the package no evidence can be a container_geo record.
    assert not any(e.get("kind") == "geo" for a in stock.alerts for e in a.evidence)
