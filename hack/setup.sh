#!/usr/bin/env bash
# hack/setup.sh — set berth up on a fresh Debian 12 machine and run berthd with working
# defaults (as root): system packages, npm dependencies, build, a default CNI network,
# then berthd on /run/berth/berth.sock: as the systemd service berthd.service where the
# host runs systemd (hack/systemd/berthd.service; logs in the journal), otherwise in the
# background with nohup, logging to /var/log/berthd.log.
# Idempotent: run it again to rebuild and restart berthd.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

if [ "$(id -u)" -ne 0 ]; then
  echo "hack/setup.sh: run as root (berthd manages namespaces, mounts and cgroups)" >&2
  exit 1
fi

./hack/install.sh
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-fund --no-audit
fi
npm run --silent build

# The default pod network: a bridge with host-local IPAM on 10.88.0.0/16 and port
# mappings, installed only when no CNI network config exists yet.
CNI_DIR=/etc/cni/net.d
mkdir -p "$CNI_DIR"
if ! ls "$CNI_DIR"/*.conflist "$CNI_DIR"/*.conf "$CNI_DIR"/*.json >/dev/null 2>&1; then
  cp hack/cni/10-berth-bridge.conflist "$CNI_DIR"/
  echo "hack/setup.sh: installed the default CNI network $CNI_DIR/10-berth-bridge.conflist (10.88.0.0/16)"
fi

ln -sf "$REPO/bin/berthd.js" /usr/local/bin/berthd

# (Re)start berthd: as a systemd service where the host runs systemd, otherwise in the
# background with nohup.
SOCK=/run/berth/berth.sock
PIDFILE=/run/berth/berthd.pid
UNIT=/etc/systemd/system/berthd.service
if [ -d /run/systemd/system ]; then
  # A berthd started earlier by this script (nohup) would hold the state dir: stop it first.
  if ! systemctl is-active --quiet berthd && [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "hack/setup.sh: stopping the berthd started without systemd (pid $(cat "$PIDFILE"))"
    kill -TERM "$(cat "$PIDFILE")"
    for _ in $(seq 1 100); do kill -0 "$(cat "$PIDFILE" 2>/dev/null || echo 0)" 2>/dev/null || break; sleep 0.1; done
  fi
  install -m 0644 hack/systemd/berthd.service "$UNIT"
  systemctl daemon-reload
  systemctl enable --quiet berthd
  # Type=notify: restart returns once berthd has recovered and serves (or failed to).
  # KillMode=process: conmon and the containers keep running across the restart.
  if ! systemctl restart berthd; then
    echo "hack/setup.sh: berthd failed to start; journalctl -u berthd says:" >&2
    journalctl -u berthd -n 20 --no-pager >&2 || true
    exit 1
  fi
  echo "hack/setup.sh: berthd is running under systemd (unit $UNIT) on unix://$SOCK"
  echo "  status: systemctl status berthd; logs: journalctl -u berthd; reload config: systemctl reload berthd"
  echo "  try: crictl --runtime-endpoint unix://$SOCK version"
  exit 0
fi

if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  echo "hack/setup.sh: stopping the running berthd (pid $(cat "$PIDFILE"))"
  kill -TERM "$(cat "$PIDFILE")"
  for _ in $(seq 1 100); do kill -0 "$(cat "$PIDFILE" 2>/dev/null || echo 0)" 2>/dev/null || break; sleep 0.1; done
fi
nohup /usr/local/bin/berthd >>/var/log/berthd.log 2>&1 </dev/null &
pid=$!
# Ready when the socket takes a connection: a socket file alone may be a stale one left
# by a berthd that was killed (the new one replaces it once it binds).
answers() { node -e "require('net').connect(process.argv[1]).on('connect', () => process.exit(0)).on('error', () => process.exit(1))" "$SOCK"; }
ready=0
for _ in $(seq 1 150); do
  if answers; then ready=1; break; fi
  kill -0 "$pid" 2>/dev/null || { echo "hack/setup.sh: berthd exited; see /var/log/berthd.log:" >&2; tail -n 20 /var/log/berthd.log >&2; exit 1; }
  sleep 0.1
done
[ "$ready" = 1 ] || { echo "hack/setup.sh: berthd does not answer on $SOCK; see /var/log/berthd.log" >&2; exit 1; }
echo "hack/setup.sh: berthd is running (pid $pid) on unix://$SOCK; logs in /var/log/berthd.log"
echo "  try: crictl --runtime-endpoint unix://$SOCK version"
