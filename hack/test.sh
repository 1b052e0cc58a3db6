#!/usr/bin/env bash
# hack/test.sh — the whole test suite, as README and CI run it (as root, on Debian 12):
# system packages, npm dependencies, strict type check, lint, import-cycle and layer
# check, then every mocha test (unit, integration and end-to-end: real processes, real sockets).
# Extra arguments go to mocha, e.g. `npm test -- --grep Status`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "hack/test.sh: the suite runs as root (namespaces, mounts, runc); try: sudo npm test" >&2
  exit 1
fi

./hack/install.sh
# npm ci only when node_modules is missing or older than the lock file.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-fund --no-audit
fi

step() { printf '\n== %s\n' "$*"; }
step "native addon (node-gyp)"; bash hack/build-native.sh
step "generate CRI types";        node hack/gen-proto-types.mjs
step "type check (tsc --noEmit)"; node_modules/.bin/tsc --noEmit -p tsconfig.json
step "lint (eslint)";             node_modules/.bin/eslint --max-warnings 0 .
step "format (prettier --check)"; npm run --silent format:check
step "build";                     rm -rf dist && node_modules/.bin/tsc -p tsconfig.json
step "imports: cycles and layers"; node hack/check-imports.mjs
step "tests (mocha)";             node_modules/.bin/mocha "$@"
