"""T1614 location-discovery classifier for host names and command lines.

Why this shape: it runs on every exec on every host, so the common case (a command that names no
IP-echo / geolocation service and no cloud-metadata host) must cost one regex pass and a few dict
lookups. Only when such a name appears is the command parsed properly, to tell
``curl ipinfo.io`` (yes) from ``echo ipinfo.io`` or ``git clone https://github.com/ipinfo/python``
(no): a network-capable tool or network code must use the name as a *host*, not a path or data.

Inputs accepted by :func:`classify_command`:
  * an argv list (``["wget", "-qO-", "http://ipinfo.io/"]``),
  * a shell string (``sh -c "..."`` wrapping, pipes, ``;``/``&&`` chains, ``$(...)``, heredocs),
  * bytes as read from ``/proc/<pid>/cmdline`` (NUL separated, possibly not UTF-8).
The whole command line is scanned, however long: an attacker who pads ``curl -H X:<70 KB>
ifconfig.me`` must not get past a scan cap. Time stays linear in the length instead: every pass
(prefilter, tokenizer, per-tool argument walks, program-text scans) is a single left-to-right
walk or a regex without nested quantifiers, names longer than a DNS name (253) are not looked up,
and nesting is followed :data:`_MAX_DEPTH` levels deep (``sh -c``, ``$(...)``, backquotes,
wrapped command strings), each level re-reading at most the text it got. Below that depth a listed
service name is flagged on its own (tool ``nested``): nobody nests command substitutions five
deep around a geolocation service's name by accident, and following the nesting further would
cost time quadratic in the length. ``bench/bench_classifier_long.py`` measures it.

The service list is ``osquery_ext/data/geo_services.tsv`` and ``metadata_endpoints.tsv`` (the
same files the Zeek package reads). One rule lives in code because it is a path on any host:
Cloudflare's ``/cdn-cgi/trace`` (answers with the client's ``ip=`` and ``loc=``).

Verdicts: ``indicator`` is the host name as used (``www.ipinfo.io``) or host + matched prefix
for URL rules; ``category`` is ip_geolocation, ip_echo, dns_echo or cloud_metadata.
"""
from __future__ import annotations

import base64
import binascii
import functools
import re
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

from osquery_ext import indicators

_MAX_DEPTH = 4
_MAX_DNS_NAME = 253

CATEGORY_METADATA = "cloud_metadata"


@dataclass(frozen=True, slots=True)
class DomainMatch:
    """A host name that belongs to a listed service (``domain`` is the listed entry)."""

    name: str
    domain: str
    service: str
    category: str


@dataclass(frozen=True, slots=True)
class CommandMatch:
    """Verdict on one command line. Empty strings when ``location_discovery`` is False."""

    location_discovery: bool = False
    indicator: str = ""
    tool: str = ""
    service: str = ""
    category: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


NO_MATCH = CommandMatch()


# --------------------------------------------------------------------------------------------
# Indicator tables (loaded once)

@dataclass(frozen=True, slots=True)
class _Tables:
    geo: dict[str, indicators.GeoService]
    metadata: tuple[indicators.MetadataEndpoint, ...]
    metadata_hosts: frozenset[str]


@functools.lru_cache(maxsize=1)
def _tables() -> _Tables:
    geo = indicators.load_geo_services()
    meta = tuple(indicators.load_metadata_endpoints())
    return _Tables(geo, meta, frozenset(e.host for e in meta))


def reload_indicators() -> None:
    """Forget the cached tables (after editing the data files in a long-running process)."""
    _tables.cache_clear()
    for fn in (indicators._geo_cached, indicators._metadata_cached, indicators._subnets_cached):
        fn.cache_clear()


def _clean_host(name: str) -> str:
    return name.strip().strip("[]").rstrip(".").lower()


def match_domain(name: str) -> DomainMatch | None:
    """The listed service ``name`` belongs to, matching on label boundaries, or None.

    ``ipinfo.io`` and ``www.ipinfo.io`` match the entry ``ipinfo.io``; ``notipinfo.io`` and
    ``ipinfo.io.evil.test`` do not. Case and one trailing dot are ignored.
    """
    if not name or len(name) > _MAX_DNS_NAME + 3:  # not a DNS name (and costly to walk)
        return None
    host = _clean_host(name)
    if len(host) > _MAX_DNS_NAME:
        return None
    geo = _tables().geo
    svc = geo.get(host)
    i = host.find(".")
    while svc is None and i != -1:
        svc = geo.get(host[i + 1:])
        i = host.find(".", i + 1)
    if svc is None:
        return None
    return DomainMatch(host, svc.domain, svc.service, svc.category)


def match_metadata(host: str, path: str) -> indicators.MetadataEndpoint | None:
    """The cloud-metadata location endpoint a URL (host + path) hits, or None."""
    host = _clean_host(host)
    t = _tables()
    if host not in t.metadata_hosts:
        return None
    path = path or "/"
    low = path.lower()
    for ep in t.metadata:  # longest prefix first
        if ep.host == host and (path.startswith(ep.path_prefix)
                                or low.startswith(ep.path_prefix.lower())):
            return ep
    return None


# --------------------------------------------------------------------------------------------
# Prefilter

# Dotted names and IPv4 literals. Possessive quantifiers keep this linear on long dot-free words.
_CANDIDATE = re.compile(r"(?<![a-z0-9_-])[a-z0-9_-]++(?:\.[a-z0-9_-]++)+")
# Indicators the candidate regex cannot see: the IPv6 metadata address, GCP's single-label
# "metadata" host, the EC2 metadata helpers and PowerShell's base64 -EncodedCommand.
_SPECIAL_TRIGGERS = ("fd00:ec2::254", "computemetadata", "ec2-metadata", "ec2metadata",
                     "powershell", "pwsh", "cdn-cgi/trace")


def _has_candidate(low: str) -> bool:
    """Cheap test: could ``low`` (lower-cased text) name any indicator at all?"""
    t = _tables()
    geo = t.geo
    for m in _CANDIDATE.finditer(low):
        name = m.group()
        if len(name) > _MAX_DNS_NAME:
            continue  # longer than any DNS name: not a host (and costly to walk)
        if name in t.metadata_hosts:
            return True
        i = -1
        while True:
            if name[i + 1:] in geo:
                return True
            i = name.find(".", i + 1)
            if i == -1:
                break
    return any(s in low for s in _SPECIAL_TRIGGERS)


# --------------------------------------------------------------------------------------------
# Shell-ish tokenizer

@dataclass(slots=True)
class _Segment:
    argv: list[str]
    prev: "_Segment | None" = None        # the previous command when this one reads a pipe
    stdin_text: str | None = None         # heredoc / here-string body


_SEPARATORS = frozenset(";&|\n()")
# Runs of characters with no shell meaning, consumed in one step (keeps long text fast).
_PLAIN_RUN = re.compile(r"[^\s'\"\\$`;&|()<>#]+")
_DQ_RUN = re.compile(r'[^"\\$`]+')
_KEYWORDS_DROP = frozenset({"if", "then", "else", "elif", "do", "while", "until", "!", "{", "}",
                            "time", "exec", "fi", "done", "esac", "[[", "function"})
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\+?=")


# What _find_closing must look at: quotes, backslashes and parentheses; anything else is skipped
# in one regex step (keeps megabytes of ordinary text inside $(...) fast).
_PAREN_STOP = re.compile(r"['\"\\()]")
_DQ_STOP = re.compile(r'["\\]')


def _find_closing(s: str, i: int) -> int:
    """Index of the ``)`` matching a ``$(`` whose body starts at ``i`` (or len when unclosed)."""
    depth = 1
    n = len(s)
    while True:
        m = _PAREN_STOP.search(s, i)
        if m is None:
            return n
        i = m.start()
        c = s[i]
        if c == "'":
            j = s.find("'", i + 1)
            if j == -1:
                return n
            i = j + 1
        elif c == '"':
            i += 1
            while True:
                q = _DQ_STOP.search(s, i)
                if q is None:
                    return n
                if s[q.start()] == "\\":
                    i = q.start() + 2
                    continue
                i = q.start() + 1
                break
        elif c == "\\":
            i += 2
        elif c == "(":
            depth += 1
            i += 1
        else:
            depth -= 1
            if depth == 0:
                return i
            i += 1


def _take_dollar_paren(script: str, i: int, subs: list[str], word: list[str]) -> int:
    """A ``$(...)`` starting at ``i``: its body is a command of its own (to ``subs``) and its text
    stays in the current word. Returns the index after the closing parenthesis."""
    j = _find_closing(script, i + 2)
    subs.append(script[i + 2:j])
    word.append(script[i:j + 1])
    return j + 1


def _take_backquoted(script: str, i: int, subs: list[str]) -> int:
    """A backquoted command starting at ``i`` (unclosed: to the end): its body to ``subs``, nothing
    to the word. Returns the index after the closing backquote."""
    j = script.find("`", i + 1)
    j = len(script) if j == -1 else j
    subs.append(script[i + 1:j])
    return j + 1


_ANSI_C_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f",
                  "v": "\v", "e": "\x1b", "E": "\x1b", "\\": "\\", "'": "'", '"': '"',
                  "?": "?"}
_ANSI_C_RUN = re.compile(r"[^'\\]+")
_HEX = frozenset("0123456789abcdefABCDEF")
_ANSI_C_WIDTH = {"x": 2, "u": 4, "U": 8}


def _take_ansi_c(script: str, i: int, word: list[str]) -> int:
    """The body of a bash ANSI-C quote ``$'...'`` starting at ``i`` (after ``$'``), decoded to
    ``word`` as bash does (``\\n``, ``\\xHH``, ``\\NNN`` octal, ``\\uHHHH``, ``\\'`` ...): the cmdline
    column writes control characters this way, and ``curl $'\\x69pinfo.io'`` is ``curl ipinfo.io``.
    Unclosed: to the end. Returns the index after the closing quote."""
    n = len(script)
    while i < n:
        m = _ANSI_C_RUN.match(script, i)
        if m:
            word.append(m.group())
            i = m.end()
            continue
        if script[i] == "'":
            return i + 1
        # a backslash escape
        e = script[i + 1:i + 2]
        if e in _ANSI_C_SIMPLE:
            word.append(_ANSI_C_SIMPLE[e])
            i += 2
        elif e in _ANSI_C_WIDTH:
            j = i + 2
            end = min(n, j + _ANSI_C_WIDTH[e])
            while j < end and script[j] in _HEX:
                j += 1
            if j == i + 2:
                word.append("\\" + e)
            else:
                code = int(script[i + 2:j], 16)
                word.append(chr(code) if code <= 0x10FFFF else "\ufffd")
            i = j
        elif e and e in "01234567":
            j = i + 1
            end = min(n, i + 4)
            while j < end and script[j] in "01234567":
                j += 1
            word.append(chr(int(script[i + 1:j], 8) & 0xFF))
            i = j
        elif e == "c" and i + 2 < n:
            word.append(chr(ord(script[i + 2]) & 0x1F))
            i += 3
        else:
            word.append("\\" + e)
            i += 2
    return n


def _ansi_c_decoded(text: str) -> str:
    """``text`` with every ``$'...'`` replaced by what it decodes to, so that the prefilter sees
    ``ipinfo.io`` in ``curl $'\\x69pinfo.io'``. Linear: one pass."""
    out: list[str] = []
    i = 0
    while True:
        j = text.find("$'", i)
        if j == -1:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        i = _take_ansi_c(text, j + 2, out)


def split_shell(script: str) -> tuple[list[_Segment], list[str]]:
    """Split shell text into simple commands, plus the bodies of ``$(...)``/backticks.

    Not a full shell grammar; it errs on the side of finding every command word: unquoted
    ``; & | && || newline ( )`` end a command, quotes are removed, heredoc bodies are attached to
    their command as stdin. Unbalanced quotes run to the end of the text instead of failing.
    """
    segments: list[_Segment] = []
    subs: list[str] = []
    argv: list[str] = []
    word: list[str] = []
    in_word = False
    pending_heredocs: list[tuple[str, _Segment | None, bool]] = []
    unassigned = 0  # pending_heredocs[unassigned:] still wait for their command to end
    pipe_prev: _Segment | None = None
    stdin_for_current: str | None = None
    i, n = 0, len(script)

    def end_word() -> None:
        nonlocal in_word
        if in_word:
            argv.append("".join(word))
            word.clear()
            in_word = False

    def end_segment(op: str) -> _Segment | None:
        nonlocal argv, pipe_prev, stdin_for_current
        end_word()
        seg = None
        if argv:
            seg = _Segment(argv, pipe_prev, stdin_for_current)
            segments.append(seg)
        stdin_for_current = None
        pipe_prev = seg if op == "|" else None
        argv = []
        return seg

    while i < n:
        c = script[i]
        m = _PLAIN_RUN.match(script, i)
        if m:
            word.append(m.group())
            in_word = True
            i = m.end()
            continue
        if c == "'":
            j = script.find("'", i + 1)
            j = n if j == -1 else j
            word.append(script[i + 1:j])
            in_word = True
            i = j + 1
            continue
        if c == '"':
            i += 1
            in_word = True
            while i < n and script[i] != '"':
                m = _DQ_RUN.match(script, i)
                if m:
                    word.append(m.group())
                    i = m.end()
                    continue
                d = script[i]
                if d == "\\" and i + 1 < n and script[i + 1] in '"\\$`\n':
                    word.append(script[i + 1])
                    i += 2
                    continue
                if d == "$" and script.startswith("$(", i):
                    i = _take_dollar_paren(script, i, subs, word)
                    continue
                if d == "`":
                    i = _take_backquoted(script, i, subs)
                    continue
                word.append(d)
                i += 1
            i += 1
            continue
        if c == "\\":
            if i + 1 < n and script[i + 1] != "\n":
                word.append(script[i + 1])
                in_word = True
            i += 2
            continue
        if c == "$" and script.startswith("$'", i):
            i = _take_ansi_c(script, i + 2, word)
            in_word = True
            continue
        if c == "$" and script.startswith("$(", i) and not script.startswith("$((", i):
            i = _take_dollar_paren(script, i, subs, word)
            in_word = True
            continue
        if c == "`":
            i = _take_backquoted(script, i, subs)
            continue
        if c == "#" and not in_word:
            j = script.find("\n", i)
            i = n if j == -1 else j
            continue
        if c == "<" and script.startswith("<<", i) and not script.startswith("<<<", i):
            end_word()
            j = i + 2
            strip_tabs = False
            if j < n and script[j] == "-":
                strip_tabs = True
                j += 1
            while j < n and script[j] in " \t":
                j += 1
            k = j
            while k < n and not script[k].isspace() and script[k] not in ";&|()<>":
                k += 1
            delim = script[j:k].strip("'\"\\")
            pending_heredocs.append((delim, None, strip_tabs))
            i = k
            continue
        if c == "<" and script.startswith("<<<", i):
            end_word()
            i += 3
            while i < n and script[i] in " \t":
                i += 1
            # The here-string's word (up to an unquoted blank or operator) becomes stdin.
            j = i
            quote = ""
            while j < n:
                d = script[j]
                if quote:
                    if d == quote:
                        quote = ""
                elif d in "'\"":
                    quote = d
                elif d.isspace() or d in ";&|()":
                    break
                j += 1
            stdin_for_current = script[i:j].strip("'\"")
            i = j
            continue
        if c in _SEPARATORS:
            if c == "&" and (in_word and word and word[-1] in "<>"):
                word.append(c)
                i += 1
                continue
            if c == "&" and script.startswith("&>", i):
                end_word()
                word.append("&>")
                in_word = True
                i += 2
                continue
            op = c
            if script.startswith("||", i) or script.startswith("&&", i):
                op = script[i:i + 2]
            seg = end_segment(op)
            if seg is not None and unassigned < len(pending_heredocs):
                # only the heredocs opened since the last command ended are this command's
                for k in range(unassigned, len(pending_heredocs)):
                    d, _tgt, st = pending_heredocs[k]
                    pending_heredocs[k] = (d, seg, st)
                unassigned = len(pending_heredocs)
            i += len(op)
            if c == "\n" and pending_heredocs:
                i = _read_heredocs(script, i, pending_heredocs)
                pending_heredocs = []
                unassigned = 0
            continue
        if c in " \t\r":
            end_word()
            i += 1
            continue
        word.append(c)
        in_word = True
        i += 1
    seg = end_segment("")
    if seg is not None and pending_heredocs:
        pending_heredocs = [(d, seg if tgt is None else tgt, s) for d, tgt, s in pending_heredocs]
    return segments, subs


def _read_heredocs(script: str, i: int, pending: list[tuple[str, _Segment | None, bool]]) -> int:
    """Attach heredoc bodies starting at ``i`` to their commands; return the index after them.
    A command's bodies are joined once at the end (many heredocs on one command stay linear)."""
    bodies: dict[int, tuple[_Segment, list[str]]] = {}
    for delim, seg, strip_tabs in pending:
        body: list[str] = []
        while i < len(script):
            j = script.find("\n", i)
            line = script[i:] if j == -1 else script[i:j]
            i = len(script) if j == -1 else j + 1
            if (line.lstrip("\t") if strip_tabs else line) == delim:
                break
            body.append(line)
        if seg is not None:
            bodies.setdefault(id(seg), (seg, []))[1].append("\n".join(body))
    for seg, texts in bodies.values():
        text = "\n".join(texts)
        seg.stdin_text = text if seg.stdin_text is None else seg.stdin_text + "\n" + text
    return i


# --------------------------------------------------------------------------------------------
# Tool knowledge

_SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "fish", "csh", "tcsh",
                     "hush", "su", "runuser", "rbash"})
_HTTP_TOOLS = frozenset({"curl", "wget", "wget2", "fetch", "aria2c", "http", "https", "xh",
                         "httpie", "lynx", "links", "elinks", "w3m", "axel", "lwp-request", "get",
                         "head", "lwp-download", "certutil", "bitsadmin", "curlie", "hurl"})
_DNS_TOOLS = frozenset({"nslookup", "dig", "host", "drill", "kdig", "delv", "resolvectl",
                        "systemd-resolve", "getent", "adig", "dnsget", "dog", "doggo", "q"})
_RAW_TOOLS = frozenset({"nc", "ncat", "netcat", "nc.openbsd", "nc.traditional", "telnet",
                        "socat", "pwncat"})
_INTERPRETERS: dict[str, str] = {}
for _name, _fam in (("python", "python"), ("python2", "python"), ("python3", "python"),
                    ("pypy", "python"), ("pypy3", "python"), ("perl", "perl"),
                    ("ruby", "ruby"), ("node", "node"), ("nodejs", "node"), ("deno", "node"),
                    ("bun", "node"), ("php", "php"), ("lua", "lua"), ("luajit", "lua"),
                    ("tclsh", "tcl"), ("awk", "awk"), ("gawk", "awk"), ("busybox-awk", "awk"),
                    ("jrunscript", "java"), ("osascript", "osascript"), ("rscript", "r")):
    _INTERPRETERS[_name] = _fam
_POWERSHELL = frozenset({"powershell", "pwsh", "powershell_ise"})
_METADATA_TOOLS = frozenset({"ec2-metadata", "ec2metadata"})
# Commands that run another command given later on their argv.
_WRAPPERS = frozenset({"env", "sudo", "doas", "nohup", "timeout", "nice", "ionice", "stdbuf",
                       "setsid", "time", "command", "builtin", "exec", "chroot", "nsenter",
                       "unshare", "ip", "xargs", "watch", "strace", "ltrace", "taskset", "chrt",
                       "flock", "docker", "podman", "nerdctl", "kubectl", "oc", "crictl", "ctr",
                       "lxc-attach", "lxc", "runc", "crun", "ssh", "firejail", "proxychains",
                       "proxychains4", "torsocks", "tsocks", "catchsegv", "script", "busybox",
                       "toybox", "then", "do", "cmd", "start", "faketime", "unbuffer",
                       "systemd-run", "setpriv", "capsh", "gosu", "su-exec", "tini", "dumb-init",
                       "sg", "newgrp", "chpst", "s6-setuidgid", "numactl", "cpulimit", "trickle",
                       "parallel", "entr"})
_RUNNABLE = (_SHELLS | _HTTP_TOOLS | _DNS_TOOLS | _RAW_TOOLS | frozenset(_INTERPRETERS)
             | _POWERSHELL | _METADATA_TOOLS | {"openssl"})

# Options that take a separate value, per tool (so an output file named "ifconfig.me" is not read
# as a host). Clusters like wget's ``-qO-`` are handled: a value char takes the rest or next word.
_CURL_SHORT_VALUE = frozenset("oduAebcwxXTKDEFmryYzCUQPtH")
_WGET_SHORT_VALUE = frozenset("oaOiBtTwQPUelDARIXY")
_LONG_VALUE = frozenset({
    "--output", "--data", "--data-raw", "--data-binary", "--data-urlencode", "--data-ascii",
    "--header", "--user", "--user-agent", "--referer", "--cookie", "--cookie-jar", "--write-out",
    "--proxy", "--request", "--upload-file", "--config", "--dump-header", "--cert", "--key",
    "--cacert", "--capath", "--max-time", "--connect-timeout", "--retry", "--resolve",
    "--connect-to", "--output-document", "--append-output", "--output-file", "--input-file",
    "--tries", "--timeout", "--wait", "--directory-prefix", "--execute", "--post-data",
    "--body-data", "--method", "--form", "--interface", "--local-port", "--limit-rate",
    "--max-filesize", "--oauth2-bearer", "--proxy-user", "--range", "--time-cond", "--trace",
    "--trace-ascii", "--netrc-file", "--dns-servers", "--doh-url", "--post-file", "--load-cookies",
    "--save-cookies", "--user-agent", "--bind-address", "--password", "--http-user",
    "--http-password", "--ca-certificate", "--certificate", "--private-key", "--ciphers",
    "--retry-delay", "--retry-max-time", "--speed-limit", "--speed-time", "--expect100-timeout"})

_NET_CODE = re.compile(
    r"urllib|urlopen|urlretrieve|requests|http\.client|httplib|httpx|aiohttp|pycurl|socket"
    r"|getaddrinfo|gethostbyname|dns\.|resolver|lwp|http::tiny|io::socket|net::http|net::dns"
    r"|open-uri|uri\.open|uri\(|open\(\s*['\"]https?:|fetch\(|https?\.(?:get|request)"
    r"|require\(\s*['\"](?:node:)?(?:https?|net|dns|axios|node-fetch|undici)['\"]\)|axios"
    r"|undici|file_get_contents|curl_|fsockopen|get_headers|fopen\(|stream_socket"
    r"|invoke-webrequest|invoke-restmethod|\biwr\b|\birm\b|webclient|downloadstring"
    r"|downloaddata|downloadfile|httpclient|webrequest|resolve-dnsname|start-bitstransfer"
    r"|test-netconnection|\btnc\b"
    r"|net\.sockets|system\.net\.dns|getresponse|\bcurl\b|\bwget\b|/inet/tcp|/dev/tcp"
    r"|tcpsocket|\bhttp\.|net\.connect|https\.|dns\.resolve|deno\.connect|\bxmlhttp"
    r"|winhttp|msxml2|os\.system|subprocess|popen|system\(|exec\(")
_URL_IN_TEXT = re.compile(r"[a-z][a-z0-9+.-]{1,15}://([^\s'\"`<>(){}|;,\\]+)")


def _basename(arg0: str) -> str:
    name = arg0.rsplit("/", 1)[-1].rsplit("\\", 1)[-1].lower()
    if name.endswith(".exe"):
        name = name[:-4]
    return name


_VERSIONED_INTERP = re.compile(r"^(python|pypy|perl|ruby|node|nodejs|php|lua)[0-9][0-9.]*$")


def _interp_family(name: str) -> str | None:
    fam = _INTERPRETERS.get(name)
    if fam:
        return fam
    # python3.11, perl5.36, ruby3.1, node18, php8.2
    m = _VERSIONED_INTERP.match(name)
    return _INTERPRETERS.get(m.group(1)) if m else None


def _is_runnable(name: str) -> bool:
    return name in _RUNNABLE or _interp_family(name) is not None


# --------------------------------------------------------------------------------------------
# Host extraction

def split_url(token: str) -> tuple[str, str] | None:
    """(host, path) of a URL-ish token (``http://h/p``, ``h/p``, ``h:443``), or None.

    A bare token must look like a host: it must not start with ``/ . ~ $ @ -`` and its host part
    must contain a dot (or be a bracketed IPv6 literal).
    """
    t = token.strip().strip("'\"")
    if not t:
        return None
    sep = t.find("://")
    if sep != -1:
        rest = t[sep + 3:]
    else:
        if t[0] in "/.~$@-+=<>&|%!*?#" or "=" in t.split("/", 1)[0]:
            return None
        rest = t
    k = len(rest)
    for ch in "/?#":
        p = rest.find(ch)
        if p != -1 and p < k:
            k = p
    authority, path = rest[:k], rest[k:] or "/"
    if "@" in authority:
        authority = authority.rsplit("@", 1)[1]
    if authority.startswith("["):
        end = authority.find("]")
        host = authority[1:end if end != -1 else len(authority)]
    elif authority.count(":") > 1:
        host = authority  # unbracketed IPv6 literal
    else:
        host = authority.split(":", 1)[0]
    host = host.lower().rstrip(".")
    if not host or (sep == -1 and "." not in host and ":" not in host):
        return None
    if path[:1] != "/":
        path = "/" + path
    return host, path


# Cloudflare answers /cdn-cgi/trace on every site it fronts (and on 1.1.1.1) with the client's
# ip= and loc= (country): a location lookup through any Cloudflare host, so it is a path rule.
CDN_TRACE_PATH = "/cdn-cgi/trace"


_DOH_NAME = re.compile(r"[?&](?:name|hostname|q)=([a-z0-9_.-]+)", re.IGNORECASE)


def _match_url(host: str, path: str, tool: str) -> CommandMatch | None:
    dm = match_domain(host)
    if dm is not None:
        return CommandMatch(True, dm.name, tool, dm.service, dm.category)
    # DNS over HTTPS (dns.google/resolve?name=o-o.myaddr.l.google.com&type=TXT): only the
    # DNS-echo names count in a query string; other service names there are just data.
    if "=" in path:
        for m in _DOH_NAME.finditer(path):
            dm = match_domain(m.group(1))
            if dm is not None and dm.category == "dns_echo":
                return CommandMatch(True, dm.name, tool, dm.service, dm.category)
    if path.startswith(CDN_TRACE_PATH):
        return CommandMatch(True, f"{host}{CDN_TRACE_PATH}", tool, "cloudflare-trace",
                            "ip_geolocation")
    ep = match_metadata(host, path)
    if ep is not None:
        return CommandMatch(True, f"{host}{ep.path_prefix}", tool, f"{ep.cloud}-metadata",
                            CATEGORY_METADATA)
    return None


def _match_host(name: str, tool: str) -> CommandMatch | None:
    dm = match_domain(name)
    if dm is not None:
        return CommandMatch(True, dm.name, tool, dm.service, dm.category)
    return None


def _operands(argv: Sequence[str], short_value: frozenset[str]) -> Iterable[tuple[str, str]]:
    """Yield (option-or-'', value) pairs: operands with '' and option values with the option."""
    i = 1
    n = len(argv)
    while i < n:
        a = argv[i]
        i += 1
        if a == "--":
            for rest in argv[i:]:
                yield "", rest
            return
        if a.startswith("--"):
            if "=" in a:
                opt, val = a.split("=", 1)
                yield opt, val
            elif a in _LONG_VALUE or a == "--url":
                if i < n:
                    yield a, argv[i]
                    i += 1
            continue
        if a.startswith("-") and len(a) > 1:
            for k in range(1, len(a)):
                if a[k] in short_value:
                    val = a[k + 1:]
                    if not val and i < n:
                        val = argv[i]
                        i += 1
                    yield "-" + a[k], val
                    break
            continue
        yield "", a


def _check_http(argv: Sequence[str], tool: str) -> CommandMatch | None:
    short = _CURL_SHORT_VALUE if tool != "wget" else _WGET_SHORT_VALUE
    for opt, val in _operands(argv, short):
        if opt in ("", "--url"):
            hp = split_url(val)
            if hp:
                m = _match_url(hp[0], hp[1], tool)
                if m:
                    return m
        elif opt in ("-H", "--header") and val.lower().startswith("host:"):
            m = _match_host(val[5:].strip().split(":", 1)[0], tool)
            if m:
                return m
    return None


def _check_dns(argv: Sequence[str], tool: str) -> CommandMatch | None:
    for a in argv[1:]:
        if not a or a[0] in "-+@":
            if a.startswith("-q") and len(a) > 2 and "=" not in a:
                a = a[2:]
            elif "=" in a and a.startswith(("-name=", "--name=")):
                a = a.split("=", 1)[1]
            else:
                continue
        m = _match_host(a, tool)
        if m:
            return m
    return None


def _check_openssl(argv: Sequence[str]) -> CommandMatch | None:
    if "s_client" not in argv and "s_time" not in argv:
        return None
    tool = "openssl"
    for i, a in enumerate(argv):
        if a in ("-connect", "-servername", "-host", "-proxy") and i + 1 < len(argv):
            val = argv[i + 1]
        elif i > 1 and not a.startswith("-") and argv[i - 1] in ("s_client", "s_time"):
            val = a
        else:
            continue
        hp = split_url(val)
        if hp:
            m = _match_url(hp[0], hp[1], tool)
            if m:
                return m
    return None


_WEB_PORTS = frozenset({"80", "443", "8080", "8443", "http", "https", "www"})


def _check_raw(argv: Sequence[str], tool: str) -> CommandMatch | None:
    if tool == "socat":
        for a in argv[1:]:
            parts = a.split(":")
            if len(parts) >= 3 and parts[0].upper().startswith(("TCP", "OPENSSL", "SSL", "UDP")):
                m = _match_host(parts[1], tool)
                if m:
                    return m
        return None
    hosts = [a for a in argv[1:] if a and a[0] != "-"]
    hit = None
    for h in hosts:
        hit = _match_host(h.split(":", 1)[0], tool)
        if hit:
            port_ok = any(p in _WEB_PORTS for p in hosts) or (":" in h and h.rsplit(":", 1)[1]
                                                                in _WEB_PORTS)
            return hit if port_ok else None
    return None


_HOST_HEADER = re.compile(r"(?:^|\\n|\n|\r)host:[ \t]*([a-z0-9_.-]+)", re.IGNORECASE)


def _host_header(request: str | None, tool: str) -> CommandMatch | None:
    """``printf 'GET / HTTP/1.1\\r\\nHost: ipinfo.io...' | nc 34.117.59.81 80``: the HTTP
    request piped into a raw socket names the service even when the address is a literal."""
    if not request:
        return None
    for m in _HOST_HEADER.finditer(request):
        res = _match_host(m.group(1), tool)
        if res:
            return res
    return None


def _dev_tcp(tokens: Iterable[str]) -> CommandMatch | None:
    """bash's ``/dev/tcp/<host>/<port>`` redirections."""
    for a in tokens:
        for marker in ("/dev/tcp/", "/dev/udp/"):
            p = a.find(marker)
            if p != -1:
                host = a[p + len(marker):].split("/", 1)[0]
                m = _match_host(host, "bash-dev-tcp")
                if m:
                    return m
    return None


def _scan_code(code: str, tool: str, context: str = "") -> CommandMatch | None:
    """Find a service used as a host in program text (python -c, perl -e, PowerShell ...).

    The text (or ``context``, e.g. ``perl -MLWP::Simple``) must show network use: printing a
    service's name is not contacting it.
    """
    low = code.lower()
    if not (_NET_CODE.search(low) or (context and _NET_CODE.search(context.lower()))):
        return None
    spans = []
    for m in _URL_IN_TEXT.finditer(low):
        spans.append((m.start(), m.end()))
        hp = split_url(m.group())
        if hp:
            res = _match_url(hp[0], hp[1], tool)
            if res:
                return res
    t = _tables()
    k = 0  # spans and candidates both run left to right: one pointer, not a search per name
    path_end = -1  # where the path after the last metadata host ends (reused while ahead)
    for m in _CANDIDATE.finditer(low):
        s = m.start()
        while k < len(spans) and spans[k][1] <= s:
            k += 1
        if k < len(spans) and spans[k][0] <= s:
            continue  # inside a URL already looked at
        if s > 0 and low[s - 1] in "/\\.@=?&%":
            continue  # a path, a file name, a query value, not a host
        name = m.group()
        if name in t.metadata_hosts:
            if path_end < m.end():
                p = _PATH_END.search(low, m.end())
                path_end = p.start() if p else len(low)
            # endpoint prefixes are short: a bounded slice keeps many hosts linear
            path = low[m.end():min(path_end, m.end() + _MAX_PATH)]
            res = _match_url(name, path or "/", tool)
        else:
            res = _match_host(name, tool)
        if res:
            return res
    return None


_PATH_END = re.compile(r"[ '\"`)\n;,]")
_MAX_PATH = 512


_CODE_OPTS: dict[str, tuple[str, ...]] = {
    "python": ("-c",), "perl": ("-e", "-E"), "ruby": ("-e",), "node": ("-e", "-p", "--eval",
                                                                       "--print"),
    "php": ("-r",), "lua": ("-e",), "tcl": (), "awk": (), "java": ("-e",), "osascript": ("-e",),
    "r": ("-e",),
}


def _interpreter_code(argv: Sequence[str], fam: str) -> str | None:
    opts = _CODE_OPTS.get(fam, ())
    for i in range(1, len(argv)):
        a = argv[i]
        if fam == "awk" and not a.startswith("-"):
            return a  # the program is awk's first operand
        if a in opts and i + 1 < len(argv):
            return argv[i + 1]
        # python -uc 'code', perl -le 'code', python -c'code' (not perl -Mfeature, python -Wx)
        if (a.startswith("-") and not a.startswith("--") and len(a) > 2
                and a[1] not in "MmIWXx" and a[1:].replace("'", "").isalnum()):
            for o in opts:
                ch = o[1]
                k = a.find(ch, 1)
                if k != -1:
                    rest = a[k + 1:]
                    if rest:
                        return rest
                    if i + 1 < len(argv):
                        return argv[i + 1]
        if fam in ("node",) and a.startswith(("--eval=", "--print=")):
            return a.split("=", 1)[1]
    return None


def _powershell_code(argv: Sequence[str]) -> str:
    parts: list[str] = []
    i = 1
    n = len(argv)
    while i < n:
        a = argv[i]
        low = a.lower()
        if low in ("-encodedcommand", "-enc", "-e", "-ec", "-en", "-encoded", "-encodedcommand:"):
            if i + 1 < n:
                parts.append(_decode_ps(argv[i + 1]))
                i += 2
                continue
        if low in ("-executionpolicy", "-ep", "-windowstyle", "-w", "-file", "-f", "-version",
                   "-inputformat", "-outputformat", "-configurationname", "-workingdirectory",
                   "-wd"):
            i += 2
            continue
        parts.append(a)
        i += 1
    return " ".join(parts)


def _decode_ps(b64: str) -> str:
    try:
        raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=False)
    except (binascii.Error, ValueError):
        return b64
    try:
        return raw.decode("utf-16-le")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace")


def _metadata_tool(argv: Sequence[str], tool: str) -> CommandMatch | None:
    flags = {"-z", "--availability-zone", "-r", "--region", "--placement"}
    args = [a.lower() for a in argv[1:]]
    if not args or any(a in flags or a.startswith("--availability-zone") for a in args):
        return CommandMatch(True, f"{tool} {' '.join(argv[1:3])}".strip(), tool, "aws-metadata",
                            CATEGORY_METADATA)
    return None


# --------------------------------------------------------------------------------------------
# Command analysis

def _shell_script(argv: Sequence[str]) -> tuple[str | None, str | None]:
    """(script, joined rest) of ``sh -c SCRIPT`` / ``bash -lc SCRIPT`` / ``su -c SCRIPT user``.

    The joined rest (everything after ``-c``) is the script when the command line was flattened
    by joining argv with spaces, as osquery's ``cmdline`` column does: ``sh -c nslookup x; ...``.
    """
    for i in range(1, len(argv)):
        a = argv[i]
        if a in ("-c", "--command") or (a.startswith("-") and not a.startswith("--")
                                         and "c" in a[1:] and a[1:].isalpha()):
            if i + 1 >= len(argv):
                return None, None
            rest = " ".join(argv[i + 1:]) if len(argv) > i + 2 else None
            return argv[i + 1], rest
        if a.startswith("--command="):
            return a.split("=", 1)[1], None
    return None, None


def _unwrap(argv: list[str]) -> tuple[list[str], bool]:
    """Strip wrappers (env, sudo, timeout, docker run IMAGE, busybox ...) down to the command.

    Returns (argv, via_xargs). Unknown wrappers' operands are searched for the first word that
    is itself a runnable tool, which is how ``docker run --rm alpine curl ipinfo.io`` reaches
    ``curl ipinfo.io``.
    """
    via_xargs = False
    for _ in range(8):
        # Drop leading variable assignments and shell keywords.
        k = 0
        while k < len(argv) and (_ASSIGN.match(argv[k]) or argv[k] in _KEYWORDS_DROP):
            k += 1
        if k:
            argv = argv[k:]
        if not argv:
            return argv, via_xargs
        name = _basename(argv[0])
        if name == "exe" and argv[0].startswith("/proc/") and len(argv) > 1:
            argv = argv[1:]
            continue
        if name not in _WRAPPERS or _is_runnable(name) and name not in ("busybox", "toybox"):
            return argv, via_xargs
        if name == "xargs":
            via_xargs = True
        for j in range(1, len(argv)):
            if _is_runnable(_basename(argv[j])):
                argv = argv[j:]
                break
        else:
            return argv, via_xargs
    return argv, via_xargs


def _piped_text(prev: _Segment | None) -> str | None:
    """What a pipeline feeds the next command when that is visible in the text: the arguments
    of ``echo``/``printf`` or a heredoc given to ``cat``."""
    if prev is None or not prev.argv:
        return None
    name = _basename(prev.argv[0])
    if name in ("echo", "printf"):
        return " ".join(a for a in prev.argv[1:] if not (a.startswith("-") and len(a) <= 3))
    if name == "cat" and prev.stdin_text:
        return prev.stdin_text
    return None


def _classify_argv(argv: list[str], depth: int, prev: _Segment | None = None,
                   stdin_text: str | None = None) -> CommandMatch | None:
    """Verdict for one simple command (argv after quote removal)."""
    if not argv:
        return None
    piped_from = prev.argv if prev is not None else None
    orig = argv
    argv, via_xargs = _unwrap(argv)
    if not argv:
        return None
    if via_xargs and piped_from:
        argv = list(argv) + [a for a in piped_from[1:] if not a.startswith("-")]
    name = _basename(argv[0])
    res: CommandMatch | None = None
    if name in _HTTP_TOOLS:
        res = _check_http(argv, "wget" if name == "wget2" else name)
    elif name in _DNS_TOOLS:
        res = _check_dns(argv, name)
    elif name == "openssl":
        res = _check_openssl(argv) or _host_header(_piped_text(prev), "openssl")
    elif name in _RAW_TOOLS:
        res = _check_raw(argv, name) or _host_header(_piped_text(prev), name)
    elif name in _SHELLS:
        script, joined = _shell_script(argv)
        if script is None and stdin_text:
            script = stdin_text
        if script is None:
            script = _piped_text(prev)
        if script is not None and depth < _MAX_DEPTH:
            res = _classify_text(script, depth + 1)
            if res is None and joined:
                res = _classify_text(joined, depth + 1)
        elif script is not None:
            res = _nested_name(script)
    elif name in _POWERSHELL:
        code = _powershell_code(argv)
        if stdin_text:
            code += "\n" + stdin_text
        res = _scan_code(code, "powershell")
    elif name in _METADATA_TOOLS:
        res = _metadata_tool(argv, name)
    else:
        fam = _interp_family(name)
        if fam is not None:
            code = _interpreter_code(argv, fam)
            if code is None:
                if stdin_text:
                    code = stdin_text
                else:
                    code = _piped_text(prev)
            if code:
                res = _scan_code(code, fam, " ".join(argv[:8]))
    if res is None:
        res = _dev_tcp(orig)
    if res is None and depth < _MAX_DEPTH and name in _WRAPPERS:
        # Wrappers that take a command as one string: watch 'curl ...', ssh host 'curl ...'.
        for a in argv[1:]:
            if (" " in a or "\n" in a) and _has_candidate(a.lower()):
                res = _classify_text(a, depth + 1)
                if res:
                    break
    return res


def _nested_name(text: str) -> CommandMatch | None:
    """Verdict on text nested deeper than _MAX_DEPTH: a listed service name in it is enough.

    Following the nesting further would re-read the text once per level (quadratic for a
    megabyte of ``$(``); a lookup service named five substitutions deep is suspicious on its
    own. One linear candidate pass."""
    low = text.lower()
    if not _has_candidate(low):
        return None
    for m in _CANDIDATE.finditer(low):
        hit = _match_host(m.group(), "nested")
        if hit:
            return hit
    return None


_PS_WORD = re.compile(r"(?<![\w-])(?:powershell|pwsh)(?:\.exe)?(?![\w-])", re.IGNORECASE)


def _classify_text(script: str, depth: int) -> CommandMatch | None:
    segments, subs = split_shell(script)
    for seg in segments:
        res = _classify_argv(seg.argv, depth, seg.prev, seg.stdin_text)
        if res:
            return res
    for sub in subs:
        res = _classify_text(sub, depth + 1) if depth < _MAX_DEPTH else _nested_name(sub)
        if res:
            return res
    # PowerShell syntax ((New-Object Net.WebClient).DownloadString(...)) is not shell syntax:
    # read everything after the powershell word as PowerShell code.
    m = _PS_WORD.search(script)
    if m:
        rest = script[m.end():]
        argv = ["powershell"] + rest.split()
        return _scan_code(_powershell_code(argv) + " " + rest, "powershell")
    return None


def _normalise(cmd: str | bytes | Sequence[str]) -> tuple[list[str] | None, str]:
    """(argv or None for shell text, whole text) for any accepted input form."""
    if isinstance(cmd, (bytes, bytearray, memoryview)):
        raw = bytes(cmd)
        if b"\0" in raw:
            parts = raw.split(b"\0")
            if parts and parts[-1] == b"":
                parts.pop()
            argv = [p.decode("utf-8", "backslashreplace") for p in parts]
            return argv, "\0".join(argv)
        return None, raw.decode("utf-8", "backslashreplace")
    if isinstance(cmd, str):
        text = cmd
        if "\0" in text:
            argv = text.split("\0")
            if argv and argv[-1] == "":
                argv.pop()
            return argv, text
        return None, text
    argv = [bytes(a).decode("utf-8", "backslashreplace") if isinstance(a, (bytes, bytearray))
            else str(a) for a in cmd]
    if len(argv) == 1 and any(ch.isspace() for ch in argv[0]):
        return None, argv[0]  # one joined string, e.g. osquery's cmdline column
    return argv, "\0".join(argv)


def classify_command(cmd: str | bytes | Sequence[str]) -> CommandMatch:
    """Is this command line a location-discovery (T1614) attempt? See the module docstring.

    Returns :data:`NO_MATCH` (``location_discovery=False``) for anything that is not; never
    raises on odd input.
    """
    try:
        argv, text = _normalise(cmd)
    except (TypeError, ValueError):
        return NO_MATCH
    if not text or not (_has_candidate(text.lower()) or (
            "$'" in text and _has_candidate(_ansi_c_decoded(text).lower()))):
        return NO_MATCH
    res = _classify_argv(argv, 0) if argv is not None else _classify_text(text, 0)
    if res is None and argv is None and "\\n" in text:
        # A display form with escaped newlines (procfs.format_cmdline): read them as newlines.
        res = _classify_text(text.replace("\\n", "\n").replace("\\t", "\t"), 0)
    return res or NO_MATCH
