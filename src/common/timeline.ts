/**
 * The timeline of pods and containers: when each step of RunPodSandbox, CreateContainer,
 * StartContainer and StopPodSandbox began and how long it took, so that "why is this pod
 * slow to start (or to stop)?" has an answer in the pod's own status (verbose info
 * `timeline`, `berthd explain`).
 *
 * The steps are the trace points (trace-points.ts), the same ones metrics count and
 * tracing turns into spans: the timeline is one more subscriber. It knows which pod or
 * container a step belongs to by async context, not by ids in the step: the service runs
 * the RPC's work inside {@link recordTimeline}, and every trace point that starts in that
 * context (a CNI plugin, a mount, a database write, conmon) is a step of it. A step that
 * starts inside another one is recorded with its depth (conmon's runtime create inside
 * the shim's create; a snapshot's database write inside the snapshot). The first step is
 * the root, named after the RPC: the service's work from its start to the moment the
 * timeline is kept with the record (its last act), so the time no step accounts for is
 * the root's own time (`self_ms`), in plain sight.
 *
 * Times: `start` is RFC 3339 in UTC with nanosecond digits (as Go's RFC3339Nano, what CRI
 * clients parse; the clock resolves microseconds), `duration_ms` is milliseconds with
 * three decimals. Kept bounded: at most {@link MAX_STEPS} steps per pod or container.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { basename } from 'node:path';
import { nowNsBigint } from './clock.js';
import { tracePoint, type TracePointName, type TracePoints } from './trace-points.js';

/** One step as stored with the record and shown in verbose status. */
export interface TimelineStep {
  /** What was done, e.g. "namespaces", "cni bridge ADD", "runtime start". */
  step: string;
  /** The RPC it was done for: RunPodSandbox, CreateContainer, StartContainer or StopPodSandbox. */
  rpc: string;
  /** When it began: RFC 3339, UTC, nanosecond digits. */
  start: string;
  duration_ms: number;
  /** 0 for the RPC's work as a whole (the root step, named after the RPC), 1 for a step of it, 2 for a step inside that one, and so on. */
  depth: number;
  /** The step's own time: its duration less the time covered by the steps inside it. */
  self_ms: number;
  /** Present (true) when the step failed. */
  failed?: true;
}

/** At most this many steps are kept per pod or container (later ones are dropped). */
export const MAX_STEPS = 64;

/** A step's name from its trace point (every trace point has one, so a new trace point must name its steps here). */
const STEP_NAMES: { [N in TracePointName]: (c: TracePoints[N]) => string } = {
  'berth:image.pull': () => 'image pull',
  'berth:image.fetch': () => 'layer fetch',
  'berth:image.unpack': () => 'layer unpack',
  'berth:cni': (c) => `cni ${c.plugin} ${c.command}`,
  'berth:runtime': (c) => `runtime ${c.verb}`,
  'berth:mount': (c) => `${c.op} ${basename(c.target)}`,
  'berth:shim.create': () => 'conmon',
  'berth:shim.runtime-create': () => 'runtime create',
  'berth:db.write': (c) => `db write ${c.table}`,
  'berth:recovery': () => 'recovery',
  'berth:pod.validate': () => 'validate',
  'berth:pod.namespaces': () => 'namespaces',
  'berth:pod.dir': () => 'pod dir',
  'berth:pod.network': () => 'network',
  'berth:pod.infra': () => 'infra process',
  'berth:pod.pidns': () => 'pid namespace',
  'berth:pod.files': () => 'pod files',
  'berth:container.image': () => 'image lookup',
  'berth:container.snapshot': () => 'snapshot',
  'berth:container.spec': () => 'spec',
};

interface OpenStep {
  step: string;
  depth: number;
  /** Trace point name (a step nested in one of its own kind, e.g. a wrapper's shim.create, is not recorded twice). */
  /** Undefined for the root step: the RPC's work as a whole. */
  point: TracePointName | undefined;
  parent: OpenStep | undefined;
  t0: bigint;
  ns?: bigint;
  failed: boolean;
}

/** The steps of one RPC's work, while it runs. */
class Recording {
  readonly steps: OpenStep[] = [];
  constructor(readonly rpc: string) {}
}

interface Scope {
  rec: Recording;
  depth: number;
  /** The step this scope is inside, if any. */
  inside?: OpenStep;
}

const storage = new AsyncLocalStorage<Scope>();
let installed = false;

/** Subscribes the recorder to every trace point; once, on first use. */
function install(): void {
  if (installed) return;
  installed = true;
  const open = new WeakMap<object, OpenStep>();
  for (const name of Object.keys(STEP_NAMES) as TracePointName[]) {
    const ch = tracePoint(name);
    const nameOf = STEP_NAMES[name] as (c: object) => string;
    // Runs as the step begins, in its caller's context: the step is recorded, and the
    // steps it runs in turn see it as their parent.
    ch.start.bindStore(storage, (c: object) => {
      const scope = storage.getStore();
      if (!scope) return undefined;
      if (scope.inside?.point === name) return scope;
      const s: OpenStep = { step: nameOf(c), depth: scope.depth, point: name, parent: scope.inside, t0: nowNsBigint(), failed: false };
      scope.rec.steps.push(s);
      open.set(c, s);
      return { rec: scope.rec, depth: scope.depth + 1, inside: s };
    });
    const finish = (c: object): void => {
      const s = open.get(c);
      if (!s) return;
      open.delete(c);
      s.ns = nowNsBigint() - s.t0;
    };
    ch.subscribe({
      start: () => undefined,
      asyncStart: () => undefined,
      error: (c: object) => {
        const s = open.get(c);
        if (s) s.failed = true;
      },
      // `end` follows a synchronous throw (then no asyncEnd comes).
      end: (c: object & { error?: unknown }) => {
        if (c.error !== undefined) finish(c);
      },
      asyncEnd: finish,
    } as never);
  }
}

/**
 * Runs `work` (an RPC's) so that the steps it runs are recorded for `rpc`; read them
 * inside with {@link timelineSoFar}.
 */
export function recordTimeline<T>(rpc: string, work: () => Promise<T>): Promise<T> {
  install();
  const rec = new Recording(rpc);
  const root: OpenStep = { step: rpc, depth: 0, point: undefined, parent: undefined, t0: nowNsBigint(), failed: false };
  rec.steps.push(root);
  return storage.run({ rec, depth: 1, inside: root }, work);
}

/** RFC 3339 in UTC with nine fraction digits, from nanoseconds since the epoch. */
export function rfc3339Nano(ns: bigint): string {
  const ms = Number(ns / 1_000_000n);
  const frac = String(ns % 1_000_000_000n).padStart(9, '0');
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, `.${frac}Z`);
}

/**
 * The finished steps of the RPC whose work is running (none outside {@link recordTimeline}),
 * appended to `before` without those of the same RPC (a retried StartContainer replaces
 * its earlier steps), at most {@link MAX_STEPS} in all.
 */
export function timelineSoFar(before: TimelineStep[] = []): TimelineStep[] {
  const scope = storage.getStore();
  if (!scope) return before;
  const kept = before.filter((s) => s.rpc !== scope.rec.rpc);
  // The root step (the RPC's work) is still running: its time is up to now, when the timeline is kept.
  const now = nowNsBigint();
  const root = scope.rec.steps[0];
  const finished = scope.rec.steps
    .map((s) => (s === root && s.ns === undefined ? Object.assign(s, { ns: now - s.t0 }) : s))
    .filter((s): s is OpenStep & { ns: bigint } => s.ns !== undefined);
  const ms = (ns: bigint): number => Math.round(Number(ns) / 1000) / 1000;
  // Depth first: each step followed by the steps inside it, so a table reads as a tree.
  const ordered: typeof finished = [];
  const visit = (s: (typeof finished)[number]): void => {
    ordered.push(s);
    for (const c of finished) if (c.parent === s) visit(c);
  };
  for (const s of finished) if (s.parent === undefined || !finished.includes(s.parent as (typeof finished)[number])) visit(s);
  const done = ordered.map((s): TimelineStep => {
    const inside = finished.filter((c) => c.parent === s).map((c): [bigint, bigint] => [c.t0, c.t0 + c.ns]);
    const own = s.ns - unionNs(inside, s.t0, s.t0 + s.ns);
    return {
      step: s.step,
      rpc: scope.rec.rpc,
      start: rfc3339Nano(s.t0),
      duration_ms: ms(s.ns),
      depth: s.depth,
      self_ms: ms(own > 0n ? own : 0n),
      ...(s.failed ? { failed: true as const } : {}),
    };
  });
  return [...kept, ...done].slice(0, MAX_STEPS);
}

/** The time covered by `intervals` ([start, end) in ns), clipped to [from, to). */
export function unionNs(intervals: Array<[bigint, bigint]>, from: bigint, to: bigint): bigint {
  const sorted = intervals
    .map(([a, b]): [bigint, bigint] => [a < from ? from : a, b > to ? to : b])
    .filter(([a, b]) => b > a)
    .sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
  let total = 0n;
  let end = from;
  for (const [a, b] of sorted) {
    if (b <= end) continue;
    total += b - (a > end ? a : end);
    end = b;
  }
  return total;
}
