/**
 * What main.ts hands a benchmark suite kept in a file of its own (suite-*.ts): the run's
 * options and the harness pieces main.ts already has (the local registry, a bridge
 * network of the run's own, containerd's sandbox image), plus the small statistics
 * every suite prints.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { StartOptions } from '../../test/helpers/berthd.js';

/** A bridge + host-local network in a temp dir (main.ts's benchNet). */
export interface SuiteNet {
  confDir: string;
  logDir: string;
  /** IPs host-local still holds. */
  allocated(): string[];
  /** Deletes the bridge and the temp dir. */
  dispose(): void;
}

export interface SuiteContext {
  registryHost: string;
  /** Timed repetitions of each measurement. */
  runs: number;
  runBerth: boolean;
  runContainerd: boolean;
  /** Extra Berthd.start options (e.g. --cpu-prof). */
  berthOptions: Pick<StartOptions, 'nodeArgs'>;
  /** A network of the run's own on `subnet` (a private /24 or larger). */
  net(runtime: string, subnet: string): SuiteNet;
  /** containerd's sandbox image, pushed to the local registry once per run. */
  pauseImage(): Promise<string>;
}

export const out = (line = ''): void => void process.stdout.write(`${line}\n`);
export const label = (name: string): string => name.padEnd(11);
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** Milliseconds since `t0` (process.hrtime.bigint()). */
export const ms = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

/** "median X ms (N runs: min, p90, max)". */
export function summary(xs: number[], unit = 'ms', digits = 1): string {
  const f = (x: number): string => x.toFixed(digits);
  return `median ${f(median(xs))} ${unit}  (${xs.length} runs: min ${f(Math.min(...xs))}, p90 ${f(percentile(xs, 90))}, max ${f(Math.max(...xs))})`;
}

/** Prints containerd/berth of two latency medians (above 1: berth faster). */
export function compare(what: string, berth: number[], containerd: number[], unit = 'ms'): void {
  const b = median(berth);
  const c = median(containerd);
  const r = c / b;
  out(
    `${what} median: containerd/berth = ${c.toFixed(1)} / ${b.toFixed(1)} ${unit} = ${r.toFixed(2)}  (${r >= 1 ? `berth ${r.toFixed(2)}x faster` : `berth ${(1 / r).toFixed(2)}x slower`})`,
  );
}

/** VmRSS of a process in KiB (0 when it is gone). */
export function rssKiB(pid: number): number {
  try {
    return Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

/**
 * CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat; with
 * `reapedChildren`, those of the children it has waited for too (cutime + cstime).
 */
export function cpuSeconds(pid: number, reapedChildren = false): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name may hold spaces and parentheses: the fields start after the last ')';
  // utime, stime, cutime and cstime are fields 14-17 of stat(5).
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const own = Number(f[11]) + Number(f[12]);
  return (reapedChildren ? own + Number(f[13]) + Number(f[14]) : own) / CLK_TCK;
}
