/**
 * berth_* latency and pull series fed by the trace points (common/trace-points.ts): each
 * step's duration is measured from its `start` to its `asyncEnd` (which synchronous steps,
 * the database transactions, publish too). A pull in progress shows the bytes
 * its layers have fetched so far, the progress CRI's PullImage cannot report.
 */
import { tracePoint, type TracePointName, type TracePoints } from '../common/trace-points.js';
import { Collected, Counter, Gauge, Histogram, type Family } from './exposition.js';

/** Seconds buckets for whole pulls, which take from a second to many minutes. */
const PULL_BUCKETS = [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800];
/** Seconds buckets for SQLite write transactions (sub-millisecond when healthy). */
const DB_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];

interface PullProgress {
  /** Pulls of this image in progress (the same reference may be pulled twice at once). */
  pulls: number;
  /** Bytes of layers whose fetch finished. */
  done: number;
  /** Layer fetches running, each counting its bytes as they arrive. */
  fetching: Set<TracePoints['berth:image.fetch']>;
}

/** Subscribes to the trace points; `close()` unsubscribes. */
export class TraceMetrics {
  readonly pullsStarted = new Counter('berth_image_pulls_started_total', 'Image pulls started.');
  readonly pullsFailed = new Counter('berth_image_pulls_failed_total', 'Image pulls that failed.');
  readonly pullBytes = new Counter('berth_image_pull_bytes_total', 'Bytes of layers fetched from registries.');
  readonly pullDuration = new Histogram('berth_image_pull_duration_seconds', 'Duration of successful image pulls.', [], PULL_BUCKETS);
  readonly layerFetch = new Histogram('berth_image_layer_fetch_duration_seconds', 'Duration of one layer fetch into the content store.', [], PULL_BUCKETS);
  readonly layerUnpack = new Histogram('berth_image_layer_unpack_duration_seconds', 'Duration of one layer unpack into its snapshot.', [], PULL_BUCKETS);
  readonly cni = new Histogram('berth_cni_plugin_duration_seconds', 'Duration of CNI plugin calls, per plugin and command (ADD, DEL...).', [
    'plugin',
    'command',
  ]);
  readonly runtime = new Histogram('berth_runtime_call_duration_seconds', 'Duration of OCI runtime (runc/crun) calls, per handler and verb.', [
    'handler',
    'verb',
  ]);
  readonly shimCreate = new Histogram('berth_shim_create_duration_seconds', 'Duration of the shim (conmon) creating a container.');
  readonly dbWrite = new Histogram('berth_db_write_duration_seconds', 'Duration of SQLite write transactions, per table.', ['table'], DB_BUCKETS);
  readonly recovery = new Gauge('berth_recovery_duration_seconds', 'Duration of the start-up recovery of this berthd.');
  private readonly progress = new Map<string, PullProgress>();
  readonly families: Family[];
  private readonly unsubscribe: Array<() => void> = [];

  constructor() {
    const inProgress = new Collected('berth_image_pulls_in_progress', 'Image pulls in progress.', 'gauge', [], () => [
      [{}, [...this.progress.values()].reduce((n, p) => n + p.pulls, 0)],
    ]);
    const progressBytes = new Collected('berth_image_pull_progress_bytes', 'Bytes fetched so far by each image pull in progress.', 'gauge', ['image'], () =>
      [...this.progress].map(([image, p]) => [{ image }, p.done + [...p.fetching].reduce((n, f) => n + (f.bytes ?? 0), 0)]),
    );
    this.families = [
      this.pullsStarted,
      this.pullsFailed,
      this.pullBytes,
      this.pullDuration,
      inProgress,
      progressBytes,
      this.layerFetch,
      this.layerUnpack,
      this.cni,
      this.runtime,
      this.shimCreate,
      this.dbWrite,
      this.recovery,
    ];

    this.timed('berth:image.pull', {
      start: (c) => {
        this.pullsStarted.inc();
        const p = this.progress.get(c.image) ?? { pulls: 0, done: 0, fetching: new Set() };
        p.pulls++;
        this.progress.set(c.image, p);
      },
      end: (c, seconds, failed) => {
        if (failed) this.pullsFailed.inc();
        else this.pullDuration.observe({}, seconds);
        const p = this.progress.get(c.image);
        if (p && --p.pulls <= 0) this.progress.delete(c.image);
      },
    });
    this.timed('berth:image.fetch', {
      start: (c) => this.progress.get(c.image)?.fetching.add(c),
      end: (c, seconds, failed) => {
        const p = this.progress.get(c.image);
        if (p?.fetching.delete(c)) p.done += c.bytes ?? 0;
        this.pullBytes.inc({}, c.bytes ?? 0);
        if (!failed) this.layerFetch.observe({}, seconds);
      },
    });
    this.timed('berth:image.unpack', { end: (_c, s, failed) => failed || this.layerUnpack.observe({}, s) });
    this.timed('berth:cni', { end: (c, s) => this.cni.observe({ plugin: c.plugin, command: c.command }, s) });
    this.timed('berth:runtime', { end: (c, s) => this.runtime.observe({ handler: c.handler, verb: c.verb }, s) });
    this.timed('berth:shim.create', { end: (_c, s) => this.shimCreate.observe({}, s) });
    this.timed('berth:db.write', { end: (c, s) => this.dbWrite.observe({ table: c.table }, s) });
    this.timed('berth:recovery', { end: (_c, s) => this.recovery.set({}, s) });
  }

  /** Times each step of trace point `name`: `start` when it begins, `end` with its duration in seconds and whether it failed. */
  private timed<N extends TracePointName>(
    name: N,
    on: { start?(c: TracePoints[N]): void; end(c: TracePoints[N], seconds: number, failed: boolean): void },
  ): void {
    const began = new WeakMap<object, bigint>();
    const failed = new WeakSet<object>();
    const finish = (c: TracePoints[N] & object): void => {
      const t0 = began.get(c);
      if (t0 === undefined) return;
      began.delete(c);
      on.end(c, Number(process.hrtime.bigint() - t0) / 1e9, failed.has(c));
    };
    const handlers = {
      start: (c: TracePoints[N] & object) => {
        began.set(c, process.hrtime.bigint());
        on.start?.(c);
      },
      error: (c: TracePoints[N] & object) => {
        failed.add(c);
      },
      asyncEnd: finish,
    };
    const ch = tracePoint(name);
    ch.subscribe(handlers as never);
    this.unsubscribe.push(() => ch.unsubscribe(handlers as never));
  }

  close(): void {
    for (const u of this.unsubscribe.splice(0)) u();
  }
}
