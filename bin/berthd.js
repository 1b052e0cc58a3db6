#!/usr/bin/env -S node --max-semi-space-size=1
// berthd entry point: runs the compiled daemon (npm run build makes dist/).
// --max-semi-space-size=1: see dist/src/common/heap-flags.js (which holds when berthd is
// started as `node bin/berthd.js` too, if less firmly).
// The V8 heap settings come first, before the daemon's modules are loaded (and grow the
// heap); so the daemon is imported dynamically after them.
import '../dist/src/common/heap-flags.js';

const { main } = await import('../dist/src/main.js');

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`berthd: fatal: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  },
);
