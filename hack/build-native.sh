#!/usr/bin/env bash
# hack/build-native.sh — builds berth's native addon (native/berth_sys.c: posix_spawn,
# mount(2), umount2(2); see src/common/sys.ts) with node-gyp, against the headers of the
# installed Node (the nodejs package puts them in /usr/include/node; nothing is downloaded).
# Skips the build when the addon is newer than its sources.
set -euo pipefail
cd "$(dirname "$0")/.."
out=native/build/Release/berth_sys.node
if [ -f "$out" ] && [ "$out" -nt native/berth_sys.c ] && [ "$out" -nt native/binding.gyp ]; then
  exit 0
fi
nodedir=$(dirname "$(dirname "$(command -v node)")")
if [ ! -f "$nodedir/include/node/node_api.h" ]; then
  echo "hack/build-native.sh: no Node headers in $nodedir/include/node (Debian's nodejs package has them)" >&2
  exit 1
fi
if ! node_modules/.bin/node-gyp rebuild --directory native --nodedir="$nodedir" >native/build.log 2>&1; then
  cat native/build.log >&2
  echo "hack/build-native.sh: building the native addon failed (log above)" >&2
  exit 1
fi
