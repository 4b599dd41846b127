#!/usr/bin/env bash
# Installs and configures rootful podman the way it works on these machines (runc, cgroupfs,
# file events logger, explicit ulimits), and builds the local busybox image the tests use.
# Idempotent: safe to run on every CI run and by `make test`.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then echo "setup-podman: needs root, skipping" >&2; exit 0; fi
need=""
for b in podman runc busybox tcpdump ip; do command -v "$b" >/dev/null 2>&1 || need=1; done
[ -x /bin/busybox ] || need=1
if [ -n "$need" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq podman runc busybox-static tcpdump iproute2 >/dev/null
fi
nofile=$(ulimit -Hn)
mkdir -p /etc/containers
cat > /etc/containers/containers.conf <<CONF
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
if ! podman image exists localhost/stowaway-busybox:latest; then
  root=$(mktemp -d)
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/www"
  cp "$(readlink -f /bin/busybox)" "$root/bin/busybox"
  for a in $("$root/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"; done
  echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
  echo 'root:x:0:' > "$root/etc/group"
  tar -C "$root" -c . | podman import --change 'CMD ["/bin/sh"]' - localhost/stowaway-busybox:latest >/dev/null
  rm -rf "$root"
fi
echo "setup-podman: podman $(podman --version | awk '{print $3}') ready, image localhost/stowaway-busybox:latest"
