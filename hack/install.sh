#!/usr/bin/env bash
# hack/install.sh — install the system packages berth needs, now and in later stages.
# Idempotent: packages already present are not fetched again, so CI and the README's
# two commands can all call it. Needs root and Debian 12 (bookworm) apt sources.
#
#   runc, crun ................ OCI runtimes (runc is the default handler, crun the second)
#   conmon .................... the per-container shim
#   catatonit ................. static init, PID 1 of pods that share a PID namespace
#   containernetworking-plugins CNI plugins in /usr/lib/cni (bridge, host-local, portmap, loopback)
#   iproute2, iptables ........ network namespaces, veths, port mappings
#   docker-registry ........... the local OCI registry the tests push their images to
#   busybox-static ............ the userland of the test images (built offline)
#   zstd, util-linux, psmisc .. zstd layers; unshare/nsenter/mount; fuser for leak checks
#   apache2-utils ............. htpasswd -B, for the test registry that requires basic auth
#   attr ...................... setfattr/getfattr: layer xattrs and overlay opaque dirs
#   prometheus ................ the metrics e2e test scrapes berthd with a Prometheus of its own
#   openssl ................... self-signed certificates for the TLS registry test
#   systemd ................... systemd-analyze verify checks hack/systemd/berthd.service in a test
#                               (and the host's systemd runs berthd where it is PID 1)
#   gcc, make, python3 ........ node-gyp builds berth's native addon (native/berth_sys.c)
#                               against the nodejs package's headers (/usr/include/node)
set -euo pipefail

PACKAGES=(
  runc crun conmon catatonit containernetworking-plugins prometheus
  iproute2 iptables
  docker-registry busybox-static zstd
  util-linux psmisc ca-certificates
  apache2-utils attr openssl systemd
  gcc libc6-dev make python3
)

if [ "$(id -u)" -ne 0 ]; then
  echo "hack/install.sh: must run as root (it installs Debian packages)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "hack/install.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Only refresh the package lists when they are missing or older than a day.
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -n1)" ]; then
    apt-get update -qq
  fi
  # --no-install-recommends keeps docker-registry from pulling in unrelated services.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Debian docker-registry package may start its own service on :5000 through an init
# script; berth's tests start their own registries on 127.0.0.1 with temp storage instead.
# So may prometheus on :9090; the metrics test starts its own on 127.0.0.1 with a temp config.
for svc in docker-registry prometheus; do
  if command -v service >/dev/null 2>&1 && [ -x "/etc/init.d/$svc" ]; then
    service "$svc" stop >/dev/null 2>&1 || true
  fi
done
echo "hack/install.sh: system packages ready"
