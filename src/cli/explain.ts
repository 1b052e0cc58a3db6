/**
 * `berthd explain pod|container <id>`: where a pod's or a container's startup time went.
 * It asks the running berthd over its CRI socket for the verbose status (PodSandboxStatus
 * or ContainerStatus, info["timeline"]; see common/timeline.ts) and prints the steps as a
 * table, the slowest one marked: the step with the most time of its own (its duration
 * less the steps inside it, shown indented under it).
 *
 * Exit codes: 0 shown, 1 the id is unknown (NOT_FOUND) or berthd cannot answer, 2 bad usage
 * or configuration.
 */
import * as grpc from '@grpc/grpc-js';
import { parseArgs } from 'node:util';
import { messageOf } from '../common/errors.js';
import type { TimelineStep } from '../common/timeline.js';
import { ConfigError, loadConfig } from '../config/load.js';
import { criApi } from '../cri/proto.js';

const USAGE = `Usage: berthd explain pod|container <id> [--socket PATH] [--config FILE]

Prints the timeline of a pod (RunPodSandbox, StopPodSandbox) or a container
(CreateContainer, StartContainer) as the running berthd recorded it, with the slowest step marked.
<id> may be a unique prefix. The socket is --socket, else the configuration's.
`;

/** Output streams (tests pass their own). */
export interface ExplainIo {
  out(text: string): void;
  err(text: string): void;
}

const stdio: ExplainIo = { out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t) };

export async function explain(argv: string[], io: ExplainIo = stdio): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: { socket: { type: 'string' }, config: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    });
  } catch (err) {
    io.err(`berthd explain: ${messageOf(err)}\n\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    io.out(USAGE);
    return 0;
  }
  const [kind, id] = positionals;
  if ((kind !== 'pod' && kind !== 'container') || id === undefined || id === '' || positionals.length > 2) {
    io.err(`berthd explain: expected "pod <id>" or "container <id>"\n\n${USAGE}`);
    return 2;
  }
  let socket = values.socket;
  if (socket === undefined) {
    try {
      socket = loadConfig(values.config !== undefined ? { file: values.config } : {}).config.socket;
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      io.err(`berthd explain: invalid configuration: ${err.message}\n`);
      return 2;
    }
  }

  const api = criApi().runtime.v1;
  const client = new api.RuntimeService(`unix://${socket}`, grpc.credentials.createInsecure());
  try {
    const deadline = Date.now() + 10_000;
    const info = await new Promise<Record<string, string>>((resolve, reject) => {
      const done = (err: grpc.ServiceError | null, res?: { info?: Record<string, string> }): void => (err ? reject(err) : resolve(res?.info ?? {}));
      if (kind === 'pod') client.PodSandboxStatus({ pod_sandbox_id: id, verbose: true }, { deadline }, done);
      else client.ContainerStatus({ container_id: id, verbose: true }, { deadline }, done);
    });
    const ownId = (JSON.parse(info.info ?? '{}') as { id?: string; sandboxID?: string }).id ?? id;
    const steps = JSON.parse(info.timeline ?? '[]') as TimelineStep[];
    io.out(renderTimeline(kind === 'pod' ? `pod sandbox ${ownId}` : `container ${id}`, steps));
    return 0;
  } catch (err) {
    const e = err as Partial<grpc.ServiceError>;
    if (e.code === grpc.status.NOT_FOUND) {
      io.err(`berthd explain: NOT_FOUND: ${e.details || `${kind === 'pod' ? 'pod sandbox' : 'container'} "${id}" not found`}\n`);
    } else if (e.code !== undefined) {
      io.err(`berthd explain: ${grpc.status[e.code] ?? e.code}: ${e.details ?? messageOf(err)} (socket ${socket})\n`);
    } else {
      io.err(`berthd explain: ${messageOf(err)} (socket ${socket})\n`);
    }
    return 1;
  } finally {
    client.close();
  }
}

const SLOWEST = '<- slowest';

/**
 * The table of `steps`: per RPC, each step's start relative to the RPC's first step, its
 * duration and own time; nested steps indented; the step with the most time of its own marked.
 */
export function renderTimeline(title: string, steps: TimelineStep[]): string {
  if (steps.length === 0) return `${title}: no timeline recorded (made by a berthd without timelines, or not created yet)\n`;
  const startMs = (s: TimelineStep): number => epochMs(s.start);
  const slowest = steps.reduce((a, b) => ((b.self_ms ?? b.duration_ms) > (a.self_ms ?? a.duration_ms) ? b : a));
  const rows: string[][] = [['RPC', 'STEP', 'START', 'DURATION', 'OWN', '']];
  const firstOf = new Map<string, number>();
  for (const s of steps) firstOf.set(s.rpc, Math.min(firstOf.get(s.rpc) ?? Infinity, startMs(s)));
  const summary: string[] = [];
  for (const rpc of firstOf.keys()) {
    const mine = steps.filter((s) => s.rpc === rpc);
    const t0 = firstOf.get(rpc)!;
    const end = Math.max(...mine.map((s) => startMs(s) + s.duration_ms));
    summary.push(`${rpc} ${(end - t0).toFixed(3)} ms from its first step to its last (${mine[0]!.start})`);
    for (const s of mine) {
      rows.push([
        rpc,
        `${'  '.repeat(s.depth ?? 0)}${s.step}${s.failed ? ' (failed)' : ''}`,
        `+${(startMs(s) - t0).toFixed(3)} ms`,
        `${s.duration_ms.toFixed(3)} ms`,
        `${(s.self_ms ?? s.duration_ms).toFixed(3)} ms`,
        s === slowest ? SLOWEST : '',
      ]);
    }
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const table = rows.map((r) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd(),
  );
  return `${title}\n${summary.map((l) => `  ${l}`).join('\n')}\n${table.join('\n')}\n`;
}

/** Milliseconds since the epoch of an RFC 3339 UTC time, with its fraction to the microsecond. */
function epochMs(rfc: string): number {
  const m = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?Z$/.exec(rfc);
  if (!m) return Date.parse(rfc);
  return Date.parse(`${m[1]}Z`) + Number(`0.${m[2] ?? '0'}`) * 1000;
}
