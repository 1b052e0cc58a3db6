#!/usr/bin/env node
// berthd entry point: runs the compiled daemon (npm run build makes dist/).
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
