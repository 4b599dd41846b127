"""T1614 classifier: positives, negatives, fixture commands, odd and huge inputs."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from datafiles import open_text, scenarios_dir
from osquery_ext import classifier
from osquery_ext.classifier import classify_command, match_domain

SCENARIOS = scenarios_dir()


# ---------------------------------------------------------------------------------- match_domain

@pytest.mark.parametrize("name,service,category", [
    ("ipinfo.io", "ipinfo", "ip_geolocation"),
    ("www.ipinfo.io", "ipinfo", "ip_geolocation"),
    ("IPINFO.IO.", "ipinfo", "ip_geolocation"),
    ("api.ipify.org", "ipify", "ip_echo"),
    ("api64.ipify.org", "ipify", "ip_echo"),
    ("checkip.amazonaws.com", "aws-checkip", "ip_echo"),
    ("myip.opendns.com", "opendns-myip", "dns_echo"),
    ("o-o.myaddr.l.google.com", "google-myaddr", "dns_echo"),
    ("whoami.akamai.net", "akamai-whoami", "dns_echo"),
    ("pro.ip-api.com", "ip-api", "ip_geolocation"),
])
def test_match_domain_positive(name: str, service: str, category: str) -> None:
    m = match_domain(name)
    assert m is not None
    assert (m.service, m.category) == (service, category)


@pytest.mark.parametrize("name", [
    "notipinfo.io", "ipinfo.io.evil.test", "ipinfo.iox", "amazonaws.com", "s3.amazonaws.com",
    "opendns.com", "resolver1.opendns.com", "google.com", "l.google.com", "example.com",
    "api.example.com", "", "io", "github.com",
])
def test_match_domain_negative(name: str) -> None:
    assert match_domain(name) is None


def test_match_domain_reports_listed_entry() -> None:
    m = match_domain("v4.ident.me")
    assert m is not None and m.domain == "ident.me" and m.name == "v4.ident.me"


# ------------------------------------------------------------------------------ classify_command

POSITIVES = [
    # (command, indicator, tool)
    ("curl ipinfo.io", "ipinfo.io", "curl"),
    ("curl -s https://www.ipinfo.io/json", "www.ipinfo.io", "curl"),
    ("docker run --rm alpine curl ipinfo.io", "ipinfo.io", "curl"),
    ("podman run --rm --network none alpine wget -qO- http://ipinfo.io/", "ipinfo.io", "wget"),
    ("kubectl exec -it web-0 -- curl -s ifconfig.me", "ifconfig.me", "curl"),
    (["wget", "-qO-", "http://ipinfo.io/"], "ipinfo.io", "wget"),
    (["busybox", "wget", "-qO-", "ifconfig.co"], "ifconfig.co", "wget"),
    (["/proc/self/exe", "wget", "-qO-", "http://icanhazip.com/"], "icanhazip.com", "wget"),
    ("/usr/bin/curl --url https://api.ipify.org?format=json", "api.ipify.org", "curl"),
    ("curl -H 'Host: ipinfo.io' http://34.117.59.81/", "ipinfo.io", "curl"),
    ("curl -x http://proxy:3128 https://api64.ipify.org", "api64.ipify.org", "curl"),
    ("sudo -u nobody env LANG=C curl -fsSL checkip.amazonaws.com", "checkip.amazonaws.com",
     "curl"),
    ("timeout 5 wget -T 3 -O - https://ipapi.co/json/", "ipapi.co", "wget"),
    ("nslookup ipinfo.io", "ipinfo.io", "nslookup"),
    ("nslookup myip.opendns.com resolver1.opendns.com", "myip.opendns.com", "nslookup"),
    ("dig +short myip.opendns.com @resolver1.opendns.com", "myip.opendns.com", "dig"),
    ("dig TXT o-o.myaddr.l.google.com @ns1.google.com", "o-o.myaddr.l.google.com", "dig"),
    ("dig -t txt -q o-o.myaddr.l.google.com @ns1.google.com +short", "o-o.myaddr.l.google.com",
     "dig"),
    ("host whoami.akamai.net", "whoami.akamai.net", "host"),
    ("drill myip.opendns.com @208.67.222.222", "myip.opendns.com", "drill"),
    ("openssl s_client -quiet -connect api.ipify.org:443 -servername api.ipify.org",
     "api.ipify.org", "openssl"),
    ("nc ipinfo.io 80", "ipinfo.io", "nc"),
    ("telnet ipinfo.io 80", "ipinfo.io", "telnet"),
    ("socat - TCP4:ipinfo.io:80", "ipinfo.io", "socat"),
    ("bash -c 'exec 3<>/dev/tcp/ipinfo.io/80; printf \"GET / HTTP/1.0\\r\\n\\r\\n\" >&3; cat <&3'",
     "ipinfo.io", "bash-dev-tcp"),
    ("""python3 -c "import urllib.request;print(urllib.request.urlopen('https://ipinfo.io/json').read())" """,
     "ipinfo.io", "python"),
    ("""python -c 'import requests; print(requests.get("http://ip-api.com/json").json())'""",
     "ip-api.com", "python"),
    ("""perl -MLWP::Simple -e 'print get("http://ip-api.com/json")'""", "ip-api.com", "perl"),
    ("""ruby -rnet/http -e 'puts Net::HTTP.get(URI("https://ifconfig.co/json"))'""",
     "ifconfig.co", "ruby"),
    ("""node -e "require('https').get('https://api.ipify.org', r => r.pipe(process.stdout))" """,
     "api.ipify.org", "node"),
    ("""php -r 'echo file_get_contents("https://ipwho.is/");'""", "ipwho.is", "php"),
    ('powershell -NoProfile -Command "(Invoke-WebRequest -UseBasicParsing ifconfig.me/ip).Content"',
     "ifconfig.me", "powershell"),
    ('pwsh -c "Invoke-RestMethod http://ip-api.com/json"', "ip-api.com", "powershell"),
    ("powershell iwr ipinfo.io", "ipinfo.io", "powershell"),
    ("powershell irm https://ipinfo.io/json", "ipinfo.io", "powershell"),
    ("powershell (New-Object Net.WebClient).DownloadString('http://checkip.dyndns.org')",
     "checkip.dyndns.org", "powershell"),
    ("powershell.exe -enc " + base64.b64encode(
        "Invoke-RestMethod -Uri https://ipinfo.io/json".encode("utf-16-le")).decode(),
     "ipinfo.io", "powershell"),
    ('sh -c "nslookup checkip.amazonaws.com; sleep 1"', "checkip.amazonaws.com", "nslookup"),
    ("sleep 1 && curl -s ipinfo.io | jq .country", "ipinfo.io", "curl"),
    ("x=$(curl -s ifconfig.me); echo $x", "ifconfig.me", "curl"),
    ('echo "$(wget -qO- icanhazip.com)"', "icanhazip.com", "wget"),
    ("echo `curl -s ident.me`", "ident.me", "curl"),
    ("echo 'curl ipinfo.io' | sh", "ipinfo.io", "curl"),
    ("echo ipinfo.io | xargs curl -s", "ipinfo.io", "curl"),
    ("watch -n 60 'curl -s ipinfo.io'", "ipinfo.io", "curl"),
    ("python3 - <<'EOF'\nimport urllib.request\n"
     "print(urllib.request.urlopen('http://ipinfo.io').read())\nEOF", "ipinfo.io", "python"),
    ("curl -s http://169.254.169.254/latest/meta-data/placement/availability-zone",
     "169.254.169.254/latest/meta-data/placement/", "curl"),
    ("curl -s http://169.254.169.254/latest/meta-data/placement/region",
     "169.254.169.254/latest/meta-data/placement/", "curl"),
    ('TOKEN=$(curl -sX PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 60"); '
     'curl -H "X-aws-ec2-metadata-token: $TOKEN" 169.254.169.254/latest/dynamic/instance-identity/document',
     "169.254.169.254/latest/dynamic/instance-identity/document", "curl"),
    ("curl -s http://[fd00:ec2::254]/latest/meta-data/placement/region",
     "fd00:ec2::254/latest/meta-data/placement/", "curl"),
    ("curl -s -H Metadata:true 'http://169.254.169.254/metadata/instance/compute/location?api-version=2021-02-01&format=text'",
     "169.254.169.254/metadata/instance/compute/location", "curl"),
    ('curl -H "Metadata-Flavor: Google" http://metadata.google.internal/computeMetadata/v1/instance/zone',
     "metadata.google.internal/computeMetadata/v1/instance/zone", "curl"),
    ("""python3 -c "import requests;print(requests.get('http://169.254.169.254/latest/meta-data/placement/region').text)" """,
     "169.254.169.254/latest/meta-data/placement/", "python"),
    ("ec2-metadata --availability-zone", "ec2-metadata --availability-zone", "ec2-metadata"),
    ("curl -s https://1.1.1.1/cdn-cgi/trace", "1.1.1.1/cdn-cgi/trace", "curl"),
    ("wget -qO- https://www.cloudflare.com/cdn-cgi/trace", "www.cloudflare.com/cdn-cgi/trace",
     "wget"),
    ("dig CH TXT whoami.cloudflare @1.1.1.1", "whoami.cloudflare", "dig"),
    ("getent hosts checkip.amazonaws.com", "checkip.amazonaws.com", "getent"),
    ("wget --header='Host: ipinfo.io' http://34.117.59.81/", "ipinfo.io", "wget"),
    ("cat <<EOF | sh\ncurl -s ipinfo.io\nEOF", "ipinfo.io", "curl"),
    ("bash <<'EOF'\nset -e\nwget -qO- ifconfig.me\nEOF", "ifconfig.me", "wget"),
    ('sh <<< "curl ipinfo.io"', "ipinfo.io", "curl"),
    ("printf 'curl -s api.ipify.org' | bash", "api.ipify.org", "curl"),
    ("echo -n ipinfo.io | xargs -I{} curl -s {}", "ipinfo.io", "curl"),
    ("printf 'GET / HTTP/1.1\\r\\nHost: ipinfo.io\\r\\n\\r\\n' | nc 34.117.59.81 80",
     "ipinfo.io", "nc"),
    ("curl -s 'https://dns.google/resolve?name=o-o.myaddr.l.google.com&type=TXT'",
     "o-o.myaddr.l.google.com", "curl"),
    # osquery's cmdline column: argv joined by spaces, the sh -c quoting lost.
    ("sh -c nslookup checkip.amazonaws.com; sleep 1", "checkip.amazonaws.com", "nslookup"),
]


@pytest.mark.parametrize("cmd,indicator,tool", POSITIVES,
                         ids=[str(p[0])[:60] for p in POSITIVES])
def test_positive(cmd, indicator: str, tool: str) -> None:
    m = classify_command(cmd)
    assert m.location_discovery, cmd
    assert m.indicator == indicator
    assert m.tool == tool
    assert m.service
    assert m.category in {"ip_geolocation", "ip_echo", "dns_echo", "cloud_metadata"}


NEGATIVES = [
    "echo ipinfo.io",
    'echo "curl ipinfo.io"',
    "printf 'see https://ipinfo.io for docs\\n'",
    "git clone https://github.com/ipinfo/python",
    "pip install ipinfo",
    "curl https://github.com/ipinfo/cli/releases/download/ipinfo-3.3.1/ipinfo_3.3.1_linux_amd64.tar.gz",
    "curl 'https://example.com/?u=ipinfo.io'",
    "curl https://example.com/ipinfo.io",
    "curl notipinfo.io",
    "curl -o ifconfig.me http://example.com/x",
    "wget -O /tmp/api.ipify.org.json http://example.com/",
    "cat /etc/ipinfo.io",
    "ls -l ipinfo.io",
    "vi ipinfo.io.conf",
    "grep -r ipinfo.io /var/log",
    """python3 -c "print('ipinfo.io')" """,
    "nslookup db.svc.internal",
    "dig @resolver1.opendns.com example.com",
    "nc -w 1 10.89.0.2 80",
    "nc ipinfo.io 22",
    "curl http://169.254.169.254/latest/meta-data/",
    "curl http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "curl http://example.com/latest/meta-data/placement/region",
    "wget -qO- http://172.17.0.3:8080/health",
    'wget -qO- "http://api.example.com/v1/items?page=5"',
    "sleep 2",
    "/usr/bin/runc init",
    "",
    [],
    ["sh", "-c", "echo ipinfo.io > /tmp/notes"],
    "powershell Get-ChildItem C:\\ipinfo.io",
    "echo https://www.cloudflare.com/cdn-cgi/trace",
    "cat <<EOF > /tmp/geo.sh\ncurl -s ipinfo.io\nEOF",
    "cat <<'EOF'\nwget -qO- ifconfig.me\nEOF",
    "curl https://www.cloudflare.com/",
    "dig CH TXT version.bind @1.1.1.1",
    "printf 'GET / HTTP/1.1\\r\\nHost: example.com\\r\\n\\r\\n' | nc 93.184.215.14 80",
    "curl -s 'https://example.com/search?q=ipinfo.io&name=ipinfo.io'",
]


@pytest.mark.parametrize("cmd", NEGATIVES, ids=[str(n)[:60] for n in NEGATIVES])
def test_negative(cmd) -> None:
    m = classify_command(cmd)
    assert m.location_discovery is False, m
    assert m.to_dict() == {"location_discovery": False, "indicator": "", "tool": "",
                           "service": "", "category": ""}


def test_to_dict_fields() -> None:
    d = classify_command("curl ipinfo.io").to_dict()
    assert d == {"location_discovery": True, "indicator": "ipinfo.io", "tool": "curl",
                 "service": "ipinfo", "category": "ip_geolocation"}


# ----------------------------------------------------------------------- input forms, odd input

def test_proc_cmdline_bytes_nul_separated() -> None:
    m = classify_command(b"wget\x00-qO-\x00http://ipinfo.io/\x00")
    assert m.location_discovery and m.tool == "wget"


def test_non_utf8_bytes_do_not_break_matching() -> None:
    m = classify_command(b"curl\x00-A\x00\xff\xfe\xc3(\x00ipinfo.io\x00")
    assert m.location_discovery and m.indicator == "ipinfo.io"
    # A name glued to invalid bytes is not the service's name.
    assert not classify_command(b"curl\x00\xffipinfo.io\x00").location_discovery
    assert not classify_command(b"\xff\xfe\xfd\x00\x80").location_discovery


def test_non_utf8_shell_text_bytes() -> None:
    assert classify_command(b"echo \xff; curl -s ifconfig.me").location_discovery


def test_nul_in_str_is_argv() -> None:
    assert classify_command("curl\0ipinfo.io").location_discovery
    assert not classify_command("echo\0ipinfo.io").location_discovery


def test_escaped_display_form() -> None:
    from osquery_ext.procfs import format_cmdline
    shown = format_cmdline(["sh", "-c", "set -e\ncurl -s ipinfo.io"])
    assert "\n" not in shown
    assert classify_command(shown).indicator == "ipinfo.io"
    assert not classify_command(format_cmdline(["sh", "-c", "set -e\necho ipinfo.io"])
                                ).location_discovery


def test_single_joined_argv_string() -> None:
    # osquery's cmdline column is argv joined by spaces; a one-element list holding it works.
    assert classify_command(["sh -c 'curl -s ipinfo.io'"]).location_discovery


def test_unbalanced_quotes_do_not_raise() -> None:
    assert classify_command("curl 'ipinfo.io").location_discovery
    assert not classify_command('echo "unterminated $(').location_discovery


def test_weird_types_do_not_raise() -> None:
    assert classify_command(None).location_discovery is False  # type: ignore[arg-type]
    assert classify_command([b"curl", b"ipinfo.io"]).location_discovery


def test_one_mib_command_line_with_early_indicator() -> None:
    big = "curl -s ipinfo.io; " + "echo " + "A" * (1 << 20)
    m = classify_command(big)
    assert m.location_discovery and m.indicator == "ipinfo.io"
    argv = ["sh", "-c", "wget -qO- ifconfig.me; : " + "x" * (1 << 20)]
    assert classify_command(argv).location_discovery
    raw = b"curl\x00ipinfo.io\x00" + b"B" * (1 << 20)
    assert classify_command(raw).location_discovery


def test_one_mib_benign_command_line_and_cap() -> None:
    # Dot-free and dot-rich megabyte strings are both negative (and finish: no quadratic regex).
    assert not classify_command("echo " + "a" * (1 << 20)).location_discovery
    assert not classify_command("echo " + "a." * (1 << 19)).location_discovery
    assert not classify_command("x" * (1 << 20) + " curl ipinfo.io").location_discovery


MB = 1 << 20


def _huge_positive_shapes(MB: int = MB) -> list[tuple[str, object]]:  # noqa: N803
    """1 MB command lines that contact ifconfig.me after (or among) a megabyte of padding: the
    whole line is scanned, there is no cap to hide behind (issue 9 item 7). Sized by `MB` so that
    bench/bench_classifier_long.py can time the same shapes at several sizes."""
    pad = "A" * MB
    many = []
    for i in range(MB // 8):
        many += ["-H", f"X{i}:y"]
    deep_dq = 'sh -c "echo ' + '\\"' * (MB // 2) + '; curl ifconfig.me"'
    return [
        ("long header before the host (argv)", ["curl", "-H", "X:" + pad, "ifconfig.me"]),
        ("long header before the host (text)", f"curl -H X:{pad} ifconfig.me"),
        ("long header before the host (raw)", b"curl\0-H\0X:" + pad.encode() + b"\0ifconfig.me\0"),
        ("long argument after the host", ["curl", "ifconfig.me", "-d", pad]),
        ("padding before the command", f": {pad}; wget -qO- http://ifconfig.me/"),
        ("many arguments before the host (argv)", ["curl", *many, "https://ifconfig.me/ip"]),
        ("many arguments before the host (text)", "curl " + " ".join(many) + " ifconfig.me"),
        ("many commands before", "true; " * (MB // 6) + "curl ifconfig.me"),
        ("long pipeline before", "cat x | " * (MB // 8) + "curl ifconfig.me"),
        ("deep double quoting", deep_dq),
        ("deep single quoting", "sh -c '" + "'\"'\"'" * (MB // 5) + "'; curl ifconfig.me"),
        ("deep $( nesting (unclosed)", "echo " + "$(" * (MB // 2) + " ; curl ifconfig.me"),
        ("deep $( nesting", "echo " + "$(echo " * (MB // 8) + "$(curl ifconfig.me" + ")" * (MB // 8 + 1)),
        ("deep backquote nesting", "echo `sh -c 'echo " * 4 + "A" * MB + "; curl ifconfig.me" + "'`" * 4),
        ("sh -c of a padded script", ["sh", "-c", f"echo {pad} >/dev/null\ncurl -s ifconfig.me"]),
        ("ANSI-C quoted padding", "echo $'" + "\\x41" * (MB // 4) + "'; curl ifconfig.me"),
        ("many heredocs", "cat <<E; " * (MB // 11) + "\n" + "E\n" * (MB // 11) + "curl ifconfig.me"),
        ("many heredocs on one command", "cat" + " <<E" * (MB // 8) + "\n" + "x\nE\n" * (MB // 8)
         + "curl ifconfig.me"),
        ("interpreter with many URLs", ["python3", "-c", "import urllib.request as u; x = '"
                                        + "http://a.example/ " * (MB // 18)
                                        + "'; u.urlopen('http://ifconfig.me')"]),
        ("interpreter with many metadata hosts", ["python3", "-c", "import urllib.request as u; "
                                                  + "x='169.254.169.254 ' * 0; " * (MB // 27)
                                                  + "u.urlopen('https://ifconfig.me')"]),
    ]


@pytest.mark.parametrize("what,cmd", _huge_positive_shapes(),
                         ids=[w for w, _ in _huge_positive_shapes()])
def test_one_mb_lookup_after_padding_is_found(what: str, cmd: object) -> None:
    size = (len(cmd) if isinstance(cmd, (str, bytes)) else sum(len(a) + 1 for a in cmd))
    assert size >= MB * 0.9, (what, size)
    m = classify_command(cmd)  # type: ignore[arg-type]
    assert m.location_discovery, what
    assert m.indicator.startswith("ifconfig.me"), (what, m)


@pytest.mark.parametrize("what,cmd", [
    ("dotted megabyte host", "curl http://" + "a." * (MB // 2) + "ifconfig.me"),
    ("megabyte of $'", "echo " + "$'" * (MB // 2)),
    ("megabyte of heredoc markers", "cat " + "<<" * (MB // 2)),
    ("megabyte of backquotes", "echo " + "`" * MB),
    ("megabyte of unclosed quotes", "echo \"" + "'" * MB),
    ("megabyte of metadata hosts", "echo " + "169.254.169.254 " * (MB // 16)),
    ("megabyte of URL-looking words", "python3 -c 'import socket' " + "http://a.b/ " * (MB // 12)),
])
def test_one_mb_odd_inputs_finish_negative(what: str, cmd: str) -> None:
    """Shapes that would cost quadratic time in a careless scanner; none names a lookup used as
    a host (a >253-character name is not a DNS name, so not a lookup)."""
    assert not classify_command(cmd).location_discovery, what


def test_ansi_c_quoting_is_read_like_bash() -> None:
    """$'...' (what the cmdline column writes for control characters) is decoded, so a host
    spelled with escapes is still the host."""
    assert classify_command("curl $'\\x69fconfig.me'").indicator == "ifconfig.me"
    assert classify_command("sh -c $'set -e\\ncurl -s ipinfo.io'").indicator == "ipinfo.io"
    assert classify_command("wget $'http://ip\\151nfo.io/'").location_discovery  # octal
    assert not classify_command("echo $'curl ipinfo.io'").location_discovery
    from osquery_ext.cmdline import format_cmdline
    argv = ["sh", "-c", "printf '\\033[2J'\ncurl -s ipinfo.io # it's"]
    assert classify_command(format_cmdline(argv)).indicator == "ipinfo.io"


def test_deep_nesting_is_bounded() -> None:
    cmd = "curl ipinfo.io"
    for _ in range(10):
        cmd = "sh -c " + json.dumps(cmd)
    classify_command(cmd)  # must return, whatever the verdict
    shallow = 'sh -c "sh -c \\"curl ipinfo.io\\""'
    assert classify_command(shallow).location_discovery


def test_reload_indicators_keeps_working() -> None:
    classifier.reload_indicators()
    assert classify_command("curl ipinfo.io").location_discovery


def test_split_url() -> None:
    assert classifier.split_url("http://user@ipinfo.io:8080/json?x=1") == ("ipinfo.io", "/json?x=1")
    assert classifier.split_url("ipinfo.io/json") == ("ipinfo.io", "/json")
    assert classifier.split_url("https://[fd00:ec2::254]/latest") == ("fd00:ec2::254", "/latest")
    assert classifier.split_url("/etc/hosts") is None
    assert classifier.split_url("-qO-") is None
    assert classifier.split_url("plainword") is None


# ------------------------------------------------------------------------------------- fixtures

def _ground_truth(scenario: str) -> dict:
    return json.loads((SCENARIOS / scenario / "ground_truth.json").read_text())


def _processes(scenario: str):
    with open_text(SCENARIOS / scenario / "processes.jsonl") as fh:
        for line in fh:
            yield json.loads(line)


@pytest.mark.parametrize("scenario", ["geo_lookup", "churn"])
def test_fixture_location_discovery_actions_positive(scenario: str) -> None:
    gt = _ground_truth(scenario)
    checked = 0
    for action in gt["malicious_actions"]:
        assert "location_discovery" in action["label"]
        cmds = [action["command"]] + [p["cmdline"] for p in action.get("process_evidence", [])
                                      if p.get("cmdline")]
        for cmd in cmds:
            m = classify_command(cmd)
            assert m.location_discovery, (action.get("id"), cmd)
            checked += 1
    assert checked >= (7 if scenario == "geo_lookup" else 40)


@pytest.mark.parametrize("scenario", ["geo_lookup", "churn"])
def test_fixture_positives_also_as_joined_cmdline(scenario: str) -> None:
    """osquery's cmdline column joins argv with spaces; the verdict must survive that."""
    for action in _ground_truth(scenario)["malicious_actions"]:
        for p in [{"cmdline": action["command"]}] + action.get("process_evidence", []):
            if p.get("cmdline"):
                joined = " ".join(p["cmdline"])
                assert classify_command(joined).location_discovery, joined


def test_fixture_geo_lookup_indicators() -> None:
    gt = _ground_truth("geo_lookup")
    got = [classify_command(a["command"]).indicator for a in gt["malicious_actions"]]
    assert got == ["ipinfo.io", "ifconfig.me", "ipinfo.io", "api.ipify.org", "api.ipify.org",
                   "ipinfo.io", "icanhazip.com"]


def test_fixture_drift_actions_negative() -> None:
    gt = _ground_truth("drift")
    assert gt["malicious_actions"]
    for action in gt["malicious_actions"]:
        for key in ("command", "command_rewritten"):
            if action.get(key):
                assert not classify_command(action[key]).location_discovery, action[key]
        for p in action.get("process_evidence", []):
            assert not classify_command(p.get("cmdline") or []).location_discovery, p["cmdline"]


@pytest.mark.parametrize("scenario", ["benign", "drift", "benign_long"])
def test_fixture_benign_process_cmdlines_all_negative(scenario: str) -> None:
    n = 0
    distinct: set[str] = set()
    for rec in _processes(scenario):
        for key in ("cmdline", "cmdline_rewritten"):
            cmd = rec.get(key)
            if not cmd:
                continue
            k = json.dumps(cmd)
            if k in distinct:
                continue
            distinct.add(k)
            assert not classify_command(cmd).location_discovery, (scenario, cmd)
            assert not classify_command(" ".join(cmd)).location_discovery, (scenario, cmd)
            n += 1
    assert n > 10
    # The background's real traffic is in there: health checks and API calls.
    joined = "\n".join(distinct)
    assert "/health" in joined and "api.example.com" in joined


def test_fixture_geo_lookup_processes_only_actions_positive() -> None:
    """In geo_lookup, exactly the processes of the labelled actions are positive."""
    gt = _ground_truth("geo_lookup")
    action_cmds = {json.dumps(p["cmdline"]) for a in gt["malicious_actions"]
                   for p in a.get("process_evidence", [])} | {
        json.dumps(a["command"]) for a in gt["malicious_actions"]}
    positives = set()
    for rec in _processes("geo_lookup"):
        if rec.get("cmdline") and classify_command(rec["cmdline"]).location_discovery:
            positives.add(json.dumps(rec["cmdline"]))
    assert positives and positives <= action_cmds
