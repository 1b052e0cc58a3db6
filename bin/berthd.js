#!/usr/bin/env node
// berthd entry point: runs the compiled daemon (npm run build makes dist/).
import { main } from '../dist/src/main.js';

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`berthd: fatal: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
  },
);
