/**
 * The daemon the e2e harness starts: berthd from the build this file was compiled into.
 * bin/berthd.js always runs dist/; this lets a private build (`tsc --outDir dist-x`) run
 * its own daemon under its own tests. The daemon tests still run bin/berthd.js itself.
 */
import { main } from '../../src/main.js';

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`berthd: fatal: ${err instanceof Error && err.stack ? err.stack : String(err)}\n`);
    process.exit(1);
  },
);
