"""`stowaway emulate`: the command-line face of scheduler/emulate/runner.py."""
from __future__ import annotations

import argparse
import os
import sys

from scheduler.emulate import misuse_scenarios
from scheduler.emulate.misuse_scenarios import MISUSE_SCENARIOS
from scheduler.emulate.runner import SCENARIOS, SELFTEST, Options, emulate

misuse_scenarios.install()      # the named-rule scenarios and their checks

EPILOG = """\
runtime socket (when --runtime-socket is not given), first that exists:
  $DOCKER_HOST (unix://), /var/run/docker.sock, /run/podman/podman.sock,
  $XDG_RUNTIME_DIR/podman/podman.sock; otherwise `podman system service` is started on a
  private socket for the run and stopped afterwards.

safety (default, offline): the containers join a network created for the run with no route out
(internal, runtime DNS off); a stand-in resolver and stand-in geolocation services (HTTP and
HTTPS with a certificate made for the run) live in a network namespace on that bridge; nothing
leaves the machine. --live instead lets the containers reach the real services: use it only on
hosts where that is allowed. Needs root (network namespace, kernel process events).

layers checked, printed as a table (pass / FAIL / not checked):
  extension  the osquery tables saw the processes (exec events, also of a --rm container living
             under a second) and the lifecycle events; in-process by default, or a running
             osqueryd with the extension via --osquery-socket
  zeek       the lookups are in the Zeek logs: with --zeek from a live `zeek -i` on the run's
             bridge (the package; container_geo rows name the container through the address
             map re-read live), or with --zeek-logs (Zeek run on the scenario's pcap when
             installed); otherwise "not checked"
  scheduler  the pipeline raised the expected alerts on the right container id and image, and
             none on the benign control

exit status: 0 all checks pass (or not checked), 1 an expected detection is missing,
2 set-up error, 130 interrupted. Everything the run creates is removed, also on Ctrl-C.

scenarios: geo-lookup (HTTP, DNS-only, HTTPS/SNI lookups by exec + a --rm one-shot),
churn (a burst of short-lived containers of one image), benign (the control), all.
`--scenario selftest-miss` proves the checker: its expected alert cannot fire, so it must exit 1.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "emulate", help="run the adversary emulation in real containers and check each detection",
        description="Run T1614 location discovery, container churn and a benign control in real "
                    "containers through the Docker Engine API (Docker or Podman), then check that "
                    "the extension, Zeek and the scheduler each saw what they should.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="all",
                   choices=[*SCENARIOS, *MISUSE_SCENARIOS, "all", "misuse", SELFTEST],
                   help="which scenario to run (default: all = geo-lookup, churn, benign; "
                        "misuse = the named-rule scenarios " + ", ".join(MISUSE_SCENARIOS)
                        + " and benign)")
    p.add_argument("--runtime-socket", metavar="PATH",
                   help="Docker Engine API socket (path or unix:// URL) of Docker or Podman")
    p.add_argument("--image", metavar="IMAGE",
                   help="local image for every container (never pulled); default "
                        "localhost/stowaway-busybox:latest (built by .ci/setup-podman.sh)")
    p.add_argument("--build-image-from", metavar="ROOTFS",
                   help="import this root filesystem directory as the image first (like `docker import`); "
                        "tagged --image or localhost/stowaway-emulate:latest")
    p.add_argument("--record", metavar="DIR",
                   help="keep a labelled recording (osquery results, ground truth, pcap); with several "
                        "scenarios one sub-directory each")
    p.add_argument("--live", action="store_true",
                   help="reach the REAL geolocation services (no stand-in, routed network); never the default")
    p.add_argument("--zeek-logs", metavar="DIR",
                   help="Zeek log directory to check (Zeek is run on each scenario pcap into DIR/<scenario> "
                        "when installed); without it the Zeek layer is 'not checked'")
    p.add_argument("--zeek", action="store_true", dest="zeek_live",
                   help="run `zeek -i <the run's bridge>` with the Stowaway package for the whole "
                        "emulation, the address map rewritten live; the Zeek layer checks its logs")
    p.add_argument("--osquery-socket", metavar="PATH",
                   help="query a running osqueryd (extension loaded) instead of running the extension's "
                        "tables in-process")
    p.add_argument("--churn-count", type=int, default=20, metavar="N", help="churn containers (default 20)")
    p.add_argument("--churn-seconds", type=float, default=30.0, metavar="S",
                   help="spread the churn burst over S seconds (default 30)")
    p.add_argument("--benign-seconds", type=float, default=20.0, metavar="S",
                   help="how long the benign control runs (default 20)")
    p.add_argument("--cleanup-stale", action="store_true",
                   help="only remove what earlier runs killed with SIGKILL left behind (runs whose "
                        "process is alive are never touched), then exit")
    p.add_argument("--report", metavar="FILE", help="also write the checks as JSON (for CI gates)")
    p.add_argument("--uplink", action="store_true",
                   help="instead: T1614 seen by a Zeek on the host's uplink, behind the host's NAT "
                        "(masqueraded podman bridge, zeek -i on the uplink veth, the NAT join); "
                        "needs root, podman and zeek")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary work directory (debugging)")
    p.set_defaults(func=run)
    return p


def options_from_args(args: argparse.Namespace) -> Options:
    scen = list(SCENARIOS) if args.scenario == "all" else \
        [*MISUSE_SCENARIOS, "benign"] if args.scenario == "misuse" else [args.scenario]
    return Options(scenarios=scen, runtime_socket=args.runtime_socket, image=args.image,
                   build_image_from=args.build_image_from, record=args.record, live=args.live,
                   zeek_logs=args.zeek_logs, zeek_live=args.zeek_live,
                   osquery_socket=args.osquery_socket,
                   churn_count=args.churn_count, churn_seconds=args.churn_seconds,
                   benign_seconds=args.benign_seconds, keep_workdir=args.keep_workdir,
                   report=args.report)


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0 and not args.live:
        print("stowaway emulate: needs root (network namespace for the stand-in, kernel process "
              "events, the runtime's root socket)", file=sys.stderr)
        return 2
    if args.cleanup_stale:
        from scheduler.emulate import emulab

        done = emulab.cleanup_stale(runtime_url=args.runtime_socket and (
            args.runtime_socket if "://" in args.runtime_socket else f"unix://{args.runtime_socket}"))
        for line in done:
            print(f"cleaned {line}")
        print(f"{len(done)} stale run(s) cleaned")
        return 0
    if args.uplink:
        from scheduler.emulate import uplink

        return uplink.main(image=args.image, report=args.report, keep_workdir=args.keep_workdir)
    return emulate(options_from_args(args))
