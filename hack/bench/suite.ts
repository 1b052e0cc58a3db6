/**
 * What main.ts hands every benchmark suite (suite-*.ts): the run's options and the harness
 * pieces (the local registry, a bridge network of the run's own, containerd's sandbox
 * image), plus the small statistics and /proc readings every suite prints.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { StartOptions } from '../../test/helpers/berthd.js';

/** A bridge + host-local + portmap network in a temp dir (see bridgeNet). */
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
  /** A network of the run's own on `subnet` (a private /24 or larger): bridgeNet. */
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
  if (xs.length === 0) return NaN;
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

/** Memory of a runtime with its helper processes, in KiB. */
export interface Mem {
  rss: number;
  pss: number;
  /** How the total is made up, for the printout. */
  detail: string;
}

/** Proportional set size in KiB: shared pages (the shims' common text) split between their users. */
export function pssKiB(pid: number): number {
  try {
    return Number(/^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

export const mib = (kib: number): string => `${(kib / 1024).toFixed(1)} MiB`;

export function sumMem(pids: number[]): { rss: number; pss: number } {
  return pids.reduce((a, p) => ({ rss: a.rss + rssKiB(p), pss: a.pss + pssKiB(p) }), { rss: 0, pss: 0 });
}

/** Prints containerd's memory over berth's, RSS and PSS (above 1: berth uses less). */
export function compareMemory(when: string, sides: string, containerd: Mem, berth: Mem): void {
  const rss = containerd.rss / berth.rss;
  const pss = containerd.pss / berth.pss;
  out(`memory ${when}: ${sides} = ${mib(containerd.rss)} / ${mib(berth.rss)} RSS = ${rss.toFixed(2)}x  (>1: berth uses less)`);
  // PSS divides shared pages among all their users: the shims' common text among the shims (fair), but
  // also node's text among every node process on the machine, this harness included (flatters berthd).
  out(
    `  PSS ${mib(containerd.pss)} / ${mib(berth.pss)} = ${pss.toFixed(2)}x  (berthd's PSS shares node's pages with other node processes, this harness included)`,
  );
}

/** A bridge network in a temp dir: conflist, host-local data dir, pod log dir. */
export function bridgeNet(runtime: string, subnet: string): SuiteNet {
  const tag = randomBytes(3).toString('hex');
  const dir = mkdtempSync(join(tmpdir(), `berth-bench-net-${runtime}-`));
  const confDir = join(dir, 'net.d');
  const logDir = join(dir, 'logs');
  const dataDir = join(dir, 'ipam');
  mkdirSync(confDir);
  mkdirSync(logDir);
  // "bnch" + 6 hex digits: unique per run, well under the 15 characters of IFNAMSIZ.
  const bridge = `bnch${tag}`;
  const name = `berth-bench-${tag}`;
  const conf = {
    cniVersion: '1.0.0',
    name,
    plugins: [
      {
        type: 'bridge',
        bridge,
        isGateway: true,
        ipMasq: false,
        hairpinMode: true,
        ipam: { type: 'host-local', dataDir, ranges: [[{ subnet }]], routes: [{ dst: '0.0.0.0/0' }] },
      },
      { type: 'portmap', capabilities: { portMappings: true } },
    ],
  };
  writeFileSync(join(confDir, '10-bench.conflist'), JSON.stringify(conf, null, 2));
  return {
    confDir,
    logDir,
    allocated() {
      const d = join(dataDir, name);
      return existsSync(d) ? readdirSync(d).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)) : [];
    },
    dispose() {
      try {
        execFileSync('ip', ['link', 'del', bridge], { stdio: 'ignore' });
      } catch {
        // never created (no pod ran), or already gone
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}
