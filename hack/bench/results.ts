/**
 * The results file of the lifecycle, churn and pull suites: JSON (every figure), a markdown
 * table (berth, containerd, ratio, the issue's goal) and an SVG plot of berth against
 * containerd (latency bars; daemon RSS over the churn), all written by the benchmark
 * itself into the repo (bench/results/ by default), so the README can link the last run.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { CHURN_GOALS, createStartP50, type ChurnFigures } from './suite-churn.js';
import { LIFECYCLE_FIGURES, LIFECYCLE_GOALS, type LifecycleFigures } from './suite-lifecycle.js';
import type { RuntimeName } from './kubelet.js';

export interface Results {
  date: string;
  machine: { nproc: number; cpu: string; memGiB: number; kernel: string; node: string; loadavg?: number[] };
  berthCommit: string;
  command: string;
  lifecycle?: Partial<Record<RuntimeName, LifecycleFigures>>;
  churn?: Partial<Record<RuntimeName, ChurnFigures>>;
  pull?: { bytes: number; layers: number } & Partial<Record<RuntimeName, PullFigures>>;
}

/** One runtime's timed cold pulls (pull suite). */
export interface PullFigures {
  /** Throughput of each pull, MB/s. */
  mbps: number[];
  median: number;
  /** Daemon CPU seconds (its threads and reaped children) per 100 MB pulled. */
  cpuPer100MB: number;
  /** The daemon's RSS (MiB) fresh and idle before the pulls, and `settleSeconds` after the last. */
  memory?: { idleMiB: number; afterMiB: number; settleSeconds: number };
}

/** Issue 14's goal for the cold pull: berth at least this many times containerd's throughput. */
export const PULL_GOAL = 2;
/** Issue 14's memory goals for berthd, in MiB: fresh and idle at most this... */
export const IDLE_RSS_GOAL_MIB = 70;
/** ...and after the pulls, back within this much of idle. */
export const AFTER_PULL_GOAL_MIB = 10;
/**
 * How long a fresh daemon is left alone before its idle RSS is taken: past its start-up's
 * own work. For berthd that includes V8's first memory-reducing collection, which comes
 * 8-10 s after start (later on a busy machine) and returns some 3-4 MiB of what loading
 * the daemon left (measured: 68.2-68.4 MiB 5 s after start, 64.6-64.8 15 s after).
 */
export const IDLE_AFTER_START_S = 20;

function sh(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return 'unknown';
  }
}

export function newResults(argv: string[]): Results {
  return {
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    machine: {
      nproc: Number(sh('nproc', [])),
      cpu: cpus()[0]?.model ?? 'unknown',
      memGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
      kernel: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(),
      node: process.version,
      // Other work on the machine moves every latency: the 1/5/15-minute load when the run began.
      loadavg: loadavg().map((x) => Math.round(x * 10) / 10),
    },
    berthCommit: sh('git', ['rev-parse', '--short', 'HEAD']),
    command: ['npm run bench --', ...argv].join(' '),
  };
}

/** One row of the comparison: a figure, both runtimes' values, and the goal for berth/containerd. */
interface Row {
  section: 'one pod at a time' | 'churn' | 'cold pull';
  name: string;
  unit: 'ms' | 's' | 'MiB' | 'MB/s' | 'count';
  berth?: number;
  containerd?: number;
  goal?: number;
  /** The goal is a floor (berth/containerd at least it: throughput), not a ceiling. */
  atLeast?: boolean;
  /** A goal for berth's own figure (at most this, in the row's unit), not for the ratio. */
  limit?: number;
  /** No ratio printed: a ratio of two small deltas says little. */
  noRatio?: boolean;
}

function rows(r: Results): Row[] {
  const out: Row[] = [];
  const l = r.lifecycle;
  if (l) {
    for (const f of LIFECYCLE_FIGURES)
      out.push({
        section: 'one pod at a time',
        name: `${f} p50`,
        unit: 'ms',
        berth: l.berth?.median[f],
        containerd: l.containerd?.median[f],
        goal: LIFECYCLE_GOALS[f],
      });
  }
  const c = r.churn;
  if (c) {
    const lat = (name: string, label: string, goal?: number): void => {
      for (const p of ['p50', 'p99'] as const) {
        out.push({
          section: 'churn',
          name: `${label} ${p}`,
          unit: 'ms',
          berth: c.berth?.latency[name]?.[p],
          containerd: c.containerd?.latency[name]?.[p],
          ...(p === 'p50' && goal !== undefined ? { goal } : {}),
        });
      }
    };
    lat('pod startup', 'pod startup', CHURN_GOALS['pod startup']);
    lat('RunPodSandbox', 'RunPodSandbox', CHURN_GOALS.RunPodSandbox);
    out.push({
      section: 'churn',
      name: 'CreateContainer+StartContainer p50',
      unit: 'ms',
      berth: c.berth && createStartP50(c.berth),
      containerd: c.containerd && createStartP50(c.containerd),
      goal: CHURN_GOALS['CreateContainer+StartContainer'],
    });
    lat('CreateContainer', 'CreateContainer');
    lat('StartContainer', 'StartContainer');
    lat('teardown', 'StopPodSandbox+RemovePodSandbox', CHURN_GOALS.teardown);
    lat('StopPodSandbox', 'StopPodSandbox');
    lat('PodSandboxStatus', 'PodSandboxStatus');
    lat('ContainerStatus', 'ContainerStatus');
    lat('ListContainers', 'ListContainers');
    out.push({ section: 'churn', name: 'pods started', unit: 'count', berth: c.berth?.podsStarted, containerd: c.containerd?.podsStarted });
    out.push({
      section: 'churn',
      name: 'CPU seconds (daemon + reaped children + shims)',
      unit: 's',
      berth: c.berth?.cpuSeconds.total,
      containerd: c.containerd?.cpuSeconds.total,
      goal: CHURN_GOALS['CPU seconds'],
    });
    const perPod = (f?: ChurnFigures): number | undefined => f && (f.cpuSeconds.total / f.podsStarted) * 1000;
    out.push({ section: 'churn', name: 'CPU per pod started', unit: 'ms', berth: perPod(c.berth), containerd: perPod(c.containerd), goal: 1 });
    for (const k of ['first', 'last', 'max'] as const)
      out.push({ section: 'churn', name: `daemon RSS ${k}`, unit: 'MiB', berth: c.berth?.rssMiB[k], containerd: c.containerd?.rssMiB[k] });
    out.push({ section: 'churn', name: 'shim RSS, max total', unit: 'MiB', berth: c.berth?.shimRssMiB.max, containerd: c.containerd?.shimRssMiB.max });
    out.push({ section: 'churn', name: 'RSS per shim', unit: 'MiB', berth: c.berth?.shimRssMiB.perShimMean, containerd: c.containerd?.shimRssMiB.perShimMean });
  }
  const p = r.pull;
  if (p) {
    const what = `${(p.bytes / 1e6).toFixed(0)} MB in ${p.layers} layers`;
    out.push({
      section: 'cold pull',
      name: `throughput median, ${what}`,
      unit: 'MB/s',
      berth: p.berth?.median,
      containerd: p.containerd?.median,
      goal: PULL_GOAL,
      atLeast: true,
    });
    out.push({ section: 'cold pull', name: 'CPU seconds per 100 MB', unit: 's', berth: p.berth?.cpuPer100MB, containerd: p.containerd?.cpuPer100MB });
    const settle = p.berth?.memory?.settleSeconds ?? p.containerd?.memory?.settleSeconds;
    if (settle !== undefined) {
      out.push({
        section: 'cold pull',
        name: `daemon RSS fresh and idle (${IDLE_AFTER_START_S} s after start)`,
        unit: 'MiB',
        berth: p.berth?.memory?.idleMiB,
        containerd: p.containerd?.memory?.idleMiB,
        limit: IDLE_RSS_GOAL_MIB,
      });
      const over = (f?: PullFigures): number | undefined => f?.memory && f.memory.afterMiB - f.memory.idleMiB;
      out.push({
        section: 'cold pull',
        name: `daemon RSS ${settle} s after the pulls, over idle`,
        unit: 'MiB',
        berth: over(p.berth),
        containerd: over(p.containerd),
        limit: AFTER_PULL_GOAL_MIB,
        noRatio: true,
      });
    }
  }
  return out;
}

const fmt = (x: number | undefined, unit: string): string =>
  x === undefined || Number.isNaN(x) ? '–' : unit === 'count' ? String(x) : x.toFixed(unit === 's' && x < 10 ? 2 : 1);

export function markdown(r: Results): string {
  const m = r.machine;
  const lines = [
    `# Benchmark results: berth against containerd`,
    '',
    `${r.date}, berth ${r.berthCommit}; ${m.nproc} CPUs (${m.cpu}), ${m.memGiB} GiB, kernel ${m.kernel}, Node ${m.node}` +
      (m.loadavg
        ? `; load average ${m.loadavg.join(' / ')} at the start (the lifecycle suite has the runtimes take turns pod by pod; the churn and pull suites time the runtimes one after the other, so their ratios move with the load).`
        : '.'),
    `Runtimes: ${[r.lifecycle?.berth?.runtime ?? r.churn?.berth?.runtime, r.lifecycle?.containerd?.runtime ?? r.churn?.containerd?.runtime].filter(Boolean).join(' against ')}.`,
    `Command: \`${r.command}\`. Ratio = berth / containerd (below 1: berth faster or smaller); goals from issue 14.`,
    '',
    '![berth against containerd](latest.svg)',
    '',
    '| | figure | berth | containerd | ratio | goal |',
    '|---|---|---:|---:|---:|---|',
  ];
  for (const row of rows(r)) {
    const ratio = row.berth !== undefined && row.containerd !== undefined && row.containerd > 0 ? row.berth / row.containerd : undefined;
    const mark = (met: boolean | undefined): string => (met === undefined ? '' : met ? ' ✓' : ' ✗');
    const goal =
      row.limit !== undefined
        ? `berth ≤ ${row.limit} ${row.unit}${mark(row.berth === undefined ? undefined : row.berth <= row.limit)}`
        : row.goal !== undefined
          ? `${row.atLeast ? '≥' : '≤'} ${row.goal}${mark(ratio === undefined ? undefined : row.atLeast ? ratio >= row.goal : ratio <= row.goal)}`
          : '';
    lines.push(
      `| ${row.section} | ${row.name}${row.unit === 's' || row.unit === 'count' ? '' : ` (${row.unit})`} | ${fmt(row.berth, row.unit)} | ${fmt(row.containerd, row.unit)} | ${ratio === undefined || row.noRatio ? '–' : ratio.toFixed(2)} | ${goal} |`,
    );
  }
  const soak = Object.entries(r.churn ?? {}).filter(([, f]) => f.rssPerMinute.length > 1);
  if (soak.length > 0) {
    lines.push('', 'Daemon RSS at each minute of the churn (MiB):', '');
    for (const [name, f] of soak) lines.push(`- ${name}: ${f.rssPerMinute.map((x) => x.toFixed(1)).join(', ')}`);
  }
  return `${lines.join('\n')}\n`;
}

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const COLORS: Record<RuntimeName, string> = { berth: '#1f77b4', containerd: '#ff7f0e' };

/** Horizontal bars of the p50 latencies (both runtimes), then daemon RSS over the churn. */
export function svg(r: Results): string {
  const W = 900;
  const bars = rows(r).filter((x) => x.unit === 'ms' && x.name.endsWith('p50') && (x.berth !== undefined || x.containerd !== undefined));
  const labelW = 330;
  const rowH = 34;
  const top = 60;
  const max = Math.max(1, ...bars.flatMap((b) => [b.berth ?? 0, b.containerd ?? 0]));
  const scale = (W - labelW - 90) / max;
  const parts: string[] = [];
  const text = (x: number, y: number, s: string, extra = ''): string => `<text x="${+x.toFixed(1)}" y="${+y.toFixed(1)}" ${extra}>${esc(s)}</text>`;
  parts.push(text(20, 28, `berth against containerd — ${r.date}, ${r.machine.nproc} CPUs, kernel ${r.machine.kernel}`, 'font-size="16" font-weight="bold"'));
  parts.push(text(20, 48, 'latency p50 (ms), shorter is better', 'font-size="12" fill="#555"'));
  let y = top;
  for (const b of bars) {
    parts.push(text(labelW - 8, y + 18, `${b.section === 'churn' ? 'churn: ' : '1 pod: '}${b.name.replace(/ p50$/, '')}`, 'text-anchor="end" font-size="12"'));
    for (const [k, name] of (['berth', 'containerd'] as const).entries()) {
      const v = b[name];
      if (v === undefined || Number.isNaN(v)) continue;
      const yy = y + 3 + k * 14;
      parts.push(`<rect x="${labelW}" y="${yy}" width="${Math.max(1, v * scale).toFixed(1)}" height="12" fill="${COLORS[name]}"/>`);
      parts.push(text(labelW + v * scale + 4, yy + 10, v.toFixed(1), 'font-size="10"'));
    }
    y += rowH;
  }
  // RSS over the churn.
  const series = Object.entries(r.churn ?? {}) as Array<[RuntimeName, ChurnFigures]>;
  if (series.length > 0) {
    y += 20;
    const h = 220;
    const x0 = 70;
    const w = W - x0 - 40;
    const tMax = Math.max(1, ...series.flatMap(([, f]) => f.rssSeries.map((p) => p[0])));
    const mMax = Math.ceil(Math.max(10, ...series.flatMap(([, f]) => f.rssSeries.map((p) => p[1]))) / 50) * 50;
    parts.push(text(20, y, 'daemon RSS during the churn (MiB) against seconds; CPU seconds in the legend', 'font-size="12" fill="#555"'));
    const gy = y + 10;
    parts.push(`<rect x="${x0}" y="${gy}" width="${w}" height="${h}" fill="none" stroke="#999"/>`);
    for (let m = 0; m <= mMax; m += 50) {
      const yy = gy + h - (m / mMax) * h;
      parts.push(`<line x1="${x0}" x2="${x0 + w}" y1="${yy.toFixed(1)}" y2="${yy.toFixed(1)}" stroke="#eee"/>`);
      parts.push(text(x0 - 6, yy + 4, String(m), 'text-anchor="end" font-size="10"'));
    }
    parts.push(text(x0 + w, gy + h + 16, `${tMax} s`, 'text-anchor="end" font-size="10"'));
    for (const [i, [name, f]] of series.entries()) {
      const pts = f.rssSeries.map(([t, m]) => `${(x0 + (t / tMax) * w).toFixed(1)},${(gy + h - (m / mMax) * h).toFixed(1)}`).join(' ');
      parts.push(`<polyline points="${pts}" fill="none" stroke="${COLORS[name]}" stroke-width="2"/>`);
      parts.push(`<rect x="${x0 + 10}" y="${gy + 10 + i * 18}" width="12" height="12" fill="${COLORS[name]}"/>`);
      parts.push(
        text(
          x0 + 28,
          gy + 20 + i * 18,
          `${name}: RSS ${f.rssMiB.first.toFixed(0)} → ${f.rssMiB.last.toFixed(0)} MiB (max ${f.rssMiB.max.toFixed(0)}), CPU ${f.cpuSeconds.total.toFixed(1)} s for ${f.podsStarted} pods`,
          'font-size="11"',
        ),
      );
    }
    y = gy + h + 30;
  } else {
    y += 10;
  }
  let ly = top - 24;
  for (const name of ['berth', 'containerd'] as const) {
    parts.push(`<rect x="${W - 160}" y="${ly}" width="12" height="12" fill="${COLORS[name]}"/>`);
    parts.push(text(W - 142, ly + 10, name, 'font-size="12"'));
    ly += 16;
  }
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${y}" viewBox="0 0 ${W} ${y}" font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n${parts.join('\n')}\n</svg>\n`;
}

/** Writes latest.json, latest.md and latest.svg into `dir`. */
export function writeResults(dir: string, r: Results): string[] {
  mkdirSync(dir, { recursive: true });
  const files = [join(dir, 'latest.json'), join(dir, 'latest.md'), join(dir, 'latest.svg')];
  writeFileSync(files[0]!, `${JSON.stringify(r, null, 2)}\n`);
  writeFileSync(files[1]!, markdown(r));
  writeFileSync(files[2]!, svg(r));
  return files;
}
