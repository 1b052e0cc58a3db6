/**
 * A preload for berthd in kill-point tests (`node --import <this file>`, through the
 * harness's `nodeArgs`): it numbers the start and the end of every step berthd publishes
 * on its trace points (src/common/trace-points.ts) while the file named by
 * `BERTH_KILL_POINT_FILE` exists, and at the step its content names it writes what the step
 * was to `<file>.hit` and SIGKILLs berthd. The file holds `<token> <n>`: the count begins
 * anew with each token, so a test arms one RPC at a time.
 *
 * `<token> mid <point> <digest>` kills part-way through the step of trace point `<point>`
 * whose context names blob `<digest>`, once it has visibly begun its work: a fetch
 * (`berth:image.fetch`) once some bytes of the blob have arrived, an unpack
 * (`berth:image.unpack`) once a new snapshot directory under `<root>/snapshots` holds a
 * file. `BERTH_KILL_POINTS` (comma-separated) chooses
 * the trace points counted (default: the lifecycle and pull steps).
 */
import { tracingChannel } from 'node:diagnostics_channel';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const DEFAULT_POINTS = ['berth:runtime', 'berth:cni', 'berth:mount', 'berth:shim.create', 'berth:image.pull', 'berth:image.fetch', 'berth:image.unpack'];
const POINTS = process.env.BERTH_KILL_POINTS?.split(',') ?? DEFAULT_POINTS;
const file = process.env.BERTH_KILL_POINT_FILE;
const root = process.argv[process.argv.indexOf('--root') + 1] ?? '';

let token = '';
let count = 0;

function kill(what: string): void {
  writeFileSync(`${file}.hit`, what);
  process.kill(process.pid, 'SIGKILL');
}

const ls = (d: string): string[] => {
  try {
    return readdirSync(d);
  } catch {
    return [];
  }
};

/** Kills berthd once `begun()` holds, polling (a worker thread or the network does the work meanwhile). */
function killWhen(what: string, begun: () => boolean): void {
  const timer = setInterval(() => {
    if (begun()) {
      clearInterval(timer);
      kill(what);
    }
  }, 1);
}

function step(name: string, phase: 'start' | 'end', ctx: unknown): void {
  let armed: string;
  try {
    armed = readFileSync(file!, 'utf8').trim();
  } catch {
    return;
  }
  const [t = '', n = '', point = '', digest = ''] = armed.split(' ');
  if (n === 'mid') {
    if (phase === 'start' && name === point && (ctx as { digest?: string }).digest === digest) midway(name, ctx);
    return;
  }
  if (t !== token) {
    token = t;
    count = 0;
  }
  count++;
  if (count === Number(n)) kill(`${phase} ${name} ${JSON.stringify(ctx)}`);
}

/** Arms the kill part-way through a fetch or an unpack that starts now. */
function midway(name: string, ctx: unknown): void {
  const what = `mid ${name} ${JSON.stringify(ctx)}`;
  if (name === 'berth:image.fetch') {
    const c = ctx as { bytes?: number };
    killWhen(what, () => (c.bytes ?? 0) > 0);
  } else if (name === 'berth:image.unpack') {
    const snapshots = join(root, 'snapshots');
    const before = new Set(ls(snapshots));
    killWhen(what, () => ls(snapshots).some((d) => !before.has(d) && ls(join(snapshots, d, 'fs')).length > 0));
  } else {
    kill(`${what} (no mid-way point for this step: killed at its start)`);
  }
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
