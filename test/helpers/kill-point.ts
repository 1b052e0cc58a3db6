/**
 * A preload for berthd in kill-point tests (`node --import <this file>`, through the
 * harness's `nodeArgs`): it numbers the start and the end of every step berthd publishes
 * on its trace points (src/common/trace-points.ts) while the file named by
 * `BERTH_KILL_POINT_FILE` exists, and at the step its content names it writes what the step
 * was to `<file>.hit` and SIGKILLs berthd. The file holds `<token> <n>`: the count begins
 * anew with each token, so a test arms one RPC at a time.
 */
import { tracingChannel } from 'node:diagnostics_channel';
import { readFileSync, writeFileSync } from 'node:fs';

const POINTS = ['berth:runtime', 'berth:cni', 'berth:mount', 'berth:shim.create', 'berth:image.pull', 'berth:image.fetch', 'berth:image.unpack'];
const file = process.env.BERTH_KILL_POINT_FILE;

let token = '';
let count = 0;

function step(name: string, phase: 'start' | 'end', ctx: unknown): void {
  let armed: string;
  try {
    armed = readFileSync(file!, 'utf8').trim();
  } catch {
    return;
  }
  const cut = armed.lastIndexOf(' ');
  const t = armed.slice(0, cut);
  const n = armed.slice(cut + 1);
  if (t !== token) {
    token = t;
    count = 0;
  }
  count++;
  if (count !== Number(n)) return;
  writeFileSync(`${file}.hit`, `${phase} ${name} ${JSON.stringify(ctx)}`);
  process.kill(process.pid, 'SIGKILL');
}

if (file !== undefined) {
  for (const name of POINTS) {
    tracingChannel(name).subscribe({
      start: (ctx) => step(name, 'start', ctx),
      end: () => undefined,
      asyncStart: () => undefined,
      asyncEnd: (ctx) => step(name, 'end', ctx),
      error: () => undefined,
    });
  }
}
