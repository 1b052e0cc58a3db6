/**
 * `berthd reload`: asks the berthd running on a state dir to reload its configuration
 * (it sends SIGHUP, as `systemctl reload berthd` does through the unit's ExecReload=),
 * waits for the outcome berthd publishes (config/reload.ts), and prints it. Exit codes:
 * 0 reloaded (keys that need a restart are listed, and keep their running value), 1 the
 * new config was refused (the running one stays), no berthd, or no answer in time.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { errnoOf } from '../common/errors.js';
import { readInForce, type ReloadOutcome } from '../config/reload.js';

export interface ReloadCommandOptions {
  /** The daemon's state dir, where it keeps berthd.pid and berthd.config.json. */
  state: string;
  timeoutMs?: number;
  out?: (text: string) => void;
  err?: (text: string) => void;
}

/** The pid of the berthd that holds `state`, or why there is none. */
export function runningBerthd(state: string): { pid: number } | { why: string } {
  const pidFile = join(state, 'berthd.pid');
  let pid: number;
  try {
    pid = Number(readFileSync(pidFile, 'utf8').trim());
  } catch (err) {
    return { why: errnoOf(err) === 'ENOENT' ? `no berthd runs on state dir ${state} (no ${pidFile})` : `cannot read ${pidFile}: ${errnoOf(err)}` };
  }
  if (!Number.isInteger(pid) || pid <= 1) return { why: `${pidFile} does not hold a pid` };
  let cmdline: string;
  try {
    cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return { why: `berthd pid ${pid} (from ${pidFile}) is not running` };
  }
  // A stale pid file after a crash may name a pid some other process now has.
  if (!cmdline.includes('berthd')) return { why: `pid ${pid} (from ${pidFile}) is not a berthd` };
  return { pid };
}

export async function reloadCommand(o: ReloadCommandOptions): Promise<number> {
  const out = o.out ?? ((t: string): void => void process.stdout.write(t));
  const err = o.err ?? ((t: string): void => void process.stderr.write(t));
  const found = runningBerthd(o.state);
  if ('why' in found) {
    err(`berthd reload: ${found.why}\n`);
    return 1;
  }
  const before = readInForce(o.state);
  const seen = before?.pid === found.pid ? before.reloads : -1;
  try {
    process.kill(found.pid, 'SIGHUP');
  } catch (e) {
    err(`berthd reload: cannot signal berthd pid ${found.pid}: ${errnoOf(e) ?? String(e)}${errnoOf(e) === 'EPERM' ? ' (run it as root)' : ''}\n`);
    return 1;
  }
  const timeoutMs = o.timeoutMs ?? 30_000;
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    await new Promise((r) => setTimeout(r, 50));
    const now = readInForce(o.state);
    if (now?.pid !== found.pid || now.reloads <= seen || !now.last_reload) continue;
    return report(now.last_reload, now.generation, out, err);
  }
  err(`berthd reload: sent SIGHUP to berthd pid ${found.pid}; it did not report the outcome within ${timeoutMs / 1000} s (see its log)\n`);
  return 1;
}

function report(r: ReloadOutcome, generation: number, out: (t: string) => void, err: (t: string) => void): number {
  if (!r.ok) {
    err(`berthd reload: the new configuration was refused; the running one stays: ${r.error ?? 'no reason given'}\n`);
    return 1;
  }
  out(`berthd reloaded its configuration (generation ${generation})\n`);
  out(`  applied: ${r.applied.length > 0 ? r.applied.join(', ') : 'nothing changed'}\n`);
  if (r.refused.length > 0) out(`  kept until a restart (these keys need one): ${r.refused.join(', ')}\n`);
  return 0;
}
