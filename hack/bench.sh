#!/usr/bin/env bash
# hack/bench.sh — berth's benchmark (npm run bench). Builds berth, installs containerd
# (Debian's 1.6, with its CRI plugin) to compare against, and runs hack/bench/main.ts,
# which drives both runtimes through the same CRI client on their unix sockets and
# prints medians and ratios. Options go to main.ts (e.g. --runs 7).
# Traffic stays on 127.0.0.1: the registry is a local docker-registry.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "hack/bench.sh: run as root" >&2; exit 1; }
./hack/install.sh
if ! command -v containerd >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends containerd >/dev/null || echo "hack/bench.sh: containerd not installable; berth alone is measured"
fi
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-fund --no-audit
fi
bash hack/build-native.sh
node hack/gen-proto-types.mjs
node_modules/.bin/tsc -p tsconfig.json
exec node dist/hack/bench/main.js "$@"
