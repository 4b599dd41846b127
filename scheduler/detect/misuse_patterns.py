"""Pure recognisers for the misuse rules: command-line shapes and DNS-name shapes.

Why a module of its own: every pattern here is a small pure function of one argv (or one DNS
name), testable on strings, and the stateful detector (scheduler/detect/misuse.py) only decides
when and where they fire. Each recogniser returns a short human reason ("ssh -R remote forward")
or "" when nothing matches; the reason goes verbatim into the alert's evidence.

Command lines come as osquery gives them (argv joined with spaces), so tokens are split on
whitespace; a `sh -c "..."` wrapper keeps its inner words as tokens, which is what we want.

The command-line recognisers that run on every process row (`is_shell`, `tunnel_match`,
`miner_match`, `escape_match`) are decided once per distinct input (`verdicts.per_distinct`, a
bounded LRU): exec events on a busy host repeat a few command lines, and these token walks were
most of the misuse detector's CPU per row. `.uncached` on each is the plain function.
"""
from __future__ import annotations

import math
import re
from collections import Counter

from scheduler.detect.verdicts import per_distinct

# -- tokens ---------------------------------------------------------------------------------------


def tokens(cmdline: str) -> list[str]:
    """Whitespace tokens with surrounding quotes stripped (argv joined with spaces)."""
    return [t.strip("'\"") for t in cmdline.split()]


def base(word: str) -> str:
    """Basename of a program word (`/usr/bin/ssh` -> `ssh`)."""
    return word.rsplit("/", 1)[-1]


def program(name: str, path: str, cmdline: str) -> str:
    """The program a process row runs: argv0's basename (busybox applets are named by argv0,
    their path is /bin/busybox), else comm, else the executable's basename."""
    toks = tokens(cmdline)
    return (base(toks[0]) if toks else name or base(path)).lower()


# -- reverse shell --------------------------------------------------------------------------------

#: Shells and interpreters that an operator drives interactively through a socket.
SHELLS = frozenset({"sh", "ash", "bash", "dash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish",
                    "python", "python2", "python3", "perl", "ruby", "php", "lua",
                    "node", "pwsh", "irb"})


@per_distinct()
def is_shell(name: str, path: str, cmdline: str) -> bool:
    """Is the process a shell or script interpreter (by comm, argv0 or executable name)?"""
    cands = {name.lower(), base(path).lower()}
    if cmdline.strip():
        cands.add(base(tokens(cmdline)[0]).lower())
    cands = {re.sub(r"[0-9.]+$", "", c) or c for c in cands} | cands
    return bool(cands & SHELLS)


def parse_remote(text: str) -> tuple[str, str, int] | None:
    """`tcp 10.0.0.5:4444` / `udp [fd00::1]:53` -> (proto, address, port)."""
    if not text:        # most processes' stdio is no socket: skip the regex
        return None
    m = re.fullmatch(r"\s*(tcp|udp)\s+\[?([0-9A-Fa-f:.]+?)\]?:(\d+)\s*", text or "")
    return (m.group(1), m.group(2), int(m.group(3))) if m else None


# -- tunnels and redirectors (T1572, T1090) -------------------------------------------------------

_SOCAT_ADDR = re.compile(r"^(tcp[46]?|udp[46]?|openssl|sctp|socks4a?|proxy|tun|exec|system)"
                         r"(-listen|-connect|-l)?[:,]", re.I)
_SSH_FWD = re.compile(r"^-[A-Za-z]*[LRDw]")
#: program -> (the argument shape that makes it a tunnel, or None: the program alone does)
_TUNNEL_TOOLS: dict[str, re.Pattern[str] | None] = {
    "chisel": re.compile(r"^(client|server)$"),
    "frpc": None, "frps": None,
    "ngrok": re.compile(r"^(tcp|http|tls|start|tunnel)$"),
    "gost": re.compile(r"^-(L|F)"),
    "sshuttle": None,
    "iodine": None, "iodined": None,
    "dnscat": None, "dnscat2": None, "dnscat2-server": None,
    "ligolo": None, "ligolo-ng": None, "ligolo-agent": None, "ligolo-proxy": None,
    "rathole": None, "bore": re.compile(r"^local$"), "revsocks": None,
    "cloudflared": re.compile(r"^tunnel$"), "autossh": None, "plink": re.compile(r"^-[LRD]$"),
    "microsocks": None, "3proxy": None, "proxychains": None, "proxychains4": None,
    "tor": None,
}
_NC = frozenset({"nc", "ncat", "netcat", "nc.traditional", "nc.openbsd"})


@per_distinct()
def tunnel_match(cmdline: str) -> str:
    """Why a command line is a tunnel or redirector ("" if it is not)."""
    toks = tokens(cmdline)
    progs = [base(t).lower() for t in toks]
    for i, p in enumerate(progs):
        rest = toks[i + 1:]
        if p == "socat":
            addrs = [t for t in rest if _SOCAT_ADDR.match(t)]
            if len(addrs) >= 2 or (addrs and any(t.lower().startswith(("stdio", "-"))
                                                 for t in rest) and len(rest) >= 2):
                return "socat relay " + " <-> ".join(addrs[:2])
        if p in ("ssh", "dbclient") and any(_SSH_FWD.match(t) for t in rest):
            flag = next(t for t in rest if _SSH_FWD.match(t))
            kind = {"L": "local", "R": "remote", "D": "dynamic SOCKS", "w": "tun"}[
                next(c for c in flag[1:] if c in "LRDw")]
            return f"ssh {kind} forward ({flag})"
        if p in _TUNNEL_TOOLS:
            shape = _TUNNEL_TOOLS[p]
            if shape is None or any(shape.match(t) for t in rest):
                return f"tunnel tool {p}"
        if p in _NC:
            nc_rest = progs[i + 1:]
            listening = any(re.match(r"^-[A-Za-z]*l", t) for t in rest[:6])
            relays = any(q in _NC | {"socat"} for q in nc_rest)
            if listening and relays:
                return "nc relay: listens and forwards to another nc"
            if "--sh-exec" in rest or "--exec" in rest:
                inner = " ".join(rest)
                if any(n in inner for n in (" nc ", " ncat ", "socat")):
                    return "ncat relay (--sh-exec to another connection)"
    return ""


# -- cryptomining (T1496) ----------------------------------------------------------------------------

MINERS = frozenset({"xmrig", "xmr-stak", "xmr-stak-cpu", "minerd", "cpuminer", "cpuminer-multi",
                    "cgminer", "bfgminer", "ethminer", "nbminer", "t-rex", "lolminer",
                    "phoenixminer", "ccminer", "nanominer", "teamredminer", "srbminer",
                    "srbminer-multi", "gminer", "kdevtmpfsi", "kinsing", "xmrigdaemon"})
_MINER_ARGS = re.compile(r"(stratum2?\+(tcp|ssl|tls)://|--donate-level|--cpu-max-threads-hint|"
                         r"^--algo=(rx/|cn|randomx|cryptonight)|^--coin(=|$)|"
                         r"^-a$|^(rx/0|randomx|cryptonight|cn/r|kawpow|ethash)$|nicehash\.com|"
                         r"minexmr|supportxmr|nanopool\.org|2miners\.com|f2pool|hashvault\.pro)",
                         re.I)


@per_distinct()
def miner_match(name: str, path: str, cmdline: str) -> str:
    """Why a process is a cryptominer ("" if it is not): its program name or miner arguments.
    `-a` alone is not enough (many tools use it): it counts only with an algorithm name."""
    progs = {name.lower(), base(path).lower()} | {base(t).lower() for t in tokens(cmdline)[:3]}
    hit = sorted(progs & MINERS)
    if hit:
        return f"miner program {hit[0]}"
    args = [t for t in tokens(cmdline) if _MINER_ARGS.search(t)]
    strong = [a for a in args if a != "-a"]
    algos = [a for a in strong if re.fullmatch(r"(rx/0|randomx|cryptonight|cn/r|kawpow|ethash)",
                                              a, re.I)]
    if strong and (len(strong) > len(algos) or "-a" in args):
        return "miner arguments " + " ".join(strong[:3])
    return ""


# -- container escape and manipulation (T1611, T1610) -------------------------------------------

RUNTIME_CLIENTS = frozenset({"docker", "podman", "crictl", "ctr", "nerdctl", "kubectl", "runc",
                             "crun", "containerd-ctr", "helm"})
_RUNTIME_SOCK = re.compile(r"(docker|containerd|crio|cri-dockerd|podman|kubelet|dockershim)"
                           r"(\.sock|/.*\.sock)", re.I)
_HOST_DEV = re.compile(r"^/dev/(sd[a-z]|vd[a-z]|xvd[a-z]|hd[a-z]|nvme\d|mapper/|dm-\d|"
                       r"mmcblk\d|root$|disk/)")


@per_distinct()
def escape_match(name: str, path: str, cmdline: str) -> str:
    """Why a process in a container is an escape or runtime-manipulation attempt ("" if not)."""
    toks = tokens(cmdline)
    progs = [base(t).lower() for t in toks]
    p0 = program(name, path, cmdline)
    for i, p in enumerate(progs or [p0]):
        rest = toks[i + 1:]
        if p == "nsenter":
            tgt = next((rest[j + 1] for j, t in enumerate(rest[:-1])
                        if t in ("-t", "--target")), "")
            glued = next((t[2:] or t[9:] for t in rest
                          if t.startswith("-t") and t[2:].isdigit()
                          or t.startswith("--target=")), "")
            if (tgt or glued) == "1" or "-a" in rest or "--all" in rest:
                return "nsenter into the namespaces of pid 1"
            if rest:
                return "nsenter " + " ".join(rest[:4])
        if p == "unshare" and rest:
            return "unshare " + " ".join(rest[:4]) + " (new namespaces from inside a container)"
        if p == "mount" and any(_HOST_DEV.match(t) for t in rest):
            return "mount of a host block device " + next(t for t in rest if _HOST_DEV.match(t))
        if p in ("debugfs", "fdisk") and any(_HOST_DEV.match(t) for t in rest):
            return f"{p} on a host block device"
        if p in ("runc", "crun") and (not rest or rest[0] == "init"):
            return ""       # the runtime's own bootstrap of every container (`runc init`)
        if p in RUNTIME_CLIENTS and i == 0:
            return f"container runtime client {p} run inside a container"
        if p == "chroot" and rest and rest[0].startswith(("/host", "/mnt", "/rootfs")):
            return f"chroot into {rest[0]} (host filesystem)"
    joined = " ".join(toks)
    m = _RUNTIME_SOCK.search(joined)
    if m:
        return f"talks to the container runtime socket ({m.group(0)})"
    if "release_agent" in joined or "notify_on_release" in joined:
        return "cgroup release_agent escape"
    if "/proc/sys/kernel/core_pattern" in joined:
        return "core_pattern escape"
    return ""


# -- DNS names (tunnelling) -----------------------------------------------------------------------

def entropy(s: str) -> float:
    """Shannon entropy in bits per character."""
    if not s:
        return 0.0
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def split_name(name: str, parent_labels: int = 2) -> tuple[str, str]:
    """(subdomain part, parent) of a DNS name: the parent is its last `parent_labels` labels."""
    labels = [x for x in name.lower().rstrip(".").split(".") if x]
    if len(labels) <= parent_labels:
        return "", ".".join(labels)
    return ".".join(labels[:-parent_labels]), ".".join(labels[-parent_labels:])


def tunnel_label_score(name: str, min_len: int, min_entropy: float) -> tuple[bool, int, float]:
    """(looks like encoded data, longest label length, entropy of the subdomain part): a DNS
    name whose subdomain carries data has long labels of high-entropy characters."""
    sub, _parent = split_name(name)
    if not sub:
        return False, 0, 0.0
    longest = max(len(x) for x in sub.split("."))
    h = entropy(sub.replace(".", ""))
    return longest >= min_len and h >= min_entropy, longest, h


def registry_of(image: str) -> str:
    """The registry an image reference names (Docker's rule: a first path part with a dot or a
    port, or `localhost`, is a registry; otherwise Docker Hub)."""
    ref = image.split("@", 1)[0]
    if "/" not in ref:
        return "docker.io"
    first = ref.split("/", 1)[0]
    if "." in first or ":" in first or first == "localhost":
        return first.lower()
    return "docker.io"
