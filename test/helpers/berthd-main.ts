/**
 * The daemon the e2e harness starts: berthd from the build this file was compiled into.
 * bin/berthd.js always runs dist/; this lets a private build (`tsc --outDir dist-x`) run
 * its own daemon under its own tests. The daemon tests still run bin/berthd.js itself.
 * Like bin/berthd.js, it applies the V8 heap settings before loading the daemon.
 */
import '../../src/common/heap-flags.js';

const { main } = await import('../../src/main.js');

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`berthd: fatal: ${err instanceof Error && err.stack ? err.stack : String(err)}\n`);
    process.exit(1);
  },
);
