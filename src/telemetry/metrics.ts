/**
 * berthd's own metrics, served at /metrics:
 * - the gRPC series under the names and labels containerd exposes (go-grpc-prometheus),
 *   so existing dashboards and alerts work unchanged: `grpc_server_started_total`,
 *   `grpc_server_handled_total` (with `grpc_code` as gRPC's code names) and the histogram
 *   `grpc_server_handling_seconds`, fed by an RPC observer of the CRI wrapper;
 * - berth_* series: pods and containers by state, live shims and the database size, which
 *   the composition root supplies as collect functions (telemetry knows no domain module);
 *   pulls and step latencies from the trace points (trace-metrics.ts); the process's own
 *   memory, GC and event-loop delay (process-metrics.ts).
 */
import { Collected, Counter, Histogram, render, type Family, type Labels } from './exposition.js';
import { ProcessMetrics } from './process-metrics.js';
import { TraceMetrics } from './trace-metrics.js';

/** gRPC status codes by number, named as Go's codes.Code prints them (and containerd labels them). */
export const GRPC_CODE_NAMES: readonly string[] = [
  'OK',
  'Canceled',
  'Unknown',
  'InvalidArgument',
  'DeadlineExceeded',
  'NotFound',
  'AlreadyExists',
  'PermissionDenied',
  'ResourceExhausted',
  'FailedPrecondition',
  'Aborted',
  'OutOfRange',
  'Unimplemented',
  'Internal',
  'Unavailable',
  'DataLoss',
  'Unauthenticated',
];

/** The name of a gRPC status code; unknown numbers as themselves. */
export function grpcCodeName(code: number): string {
  return GRPC_CODE_NAMES[code] ?? String(code);
}

/** What the composition root tells the metrics about the domain, read at each scrape. */
export interface MetricsSources {
  /** The full service name of an RPC, e.g. "runtime.v1.RuntimeService". */
  serviceOf(method: string): string;
  /** Pod sandboxes per state. */
  podsByState(): Record<string, number>;
  /** Containers per state. */
  containersByState(): Record<string, number>;
  /** Shim (conmon) processes alive. */
  liveShims(): number;
  /** Bytes of the SQLite database files (main and write-ahead log). */
  databaseBytes(): number;
}

/** One RPC as the metrics see it (structurally the CRI wrapper's RpcObservation). */
export interface RpcMetricsObservation {
  run<T>(fn: () => T): T;
  end(code: number, details?: string): void;
}

const GRPC_LABELS = ['grpc_type', 'grpc_service', 'grpc_method'] as const;

/** All of /metrics. `close()` stops its timers and trace point subscriptions. */
export class BerthMetrics {
  readonly started = new Counter('grpc_server_started_total', 'Total number of RPCs started on the server.', GRPC_LABELS);
  readonly handled = new Counter('grpc_server_handled_total', 'Total number of RPCs completed on the server, regardless of success or failure.', [
    ...GRPC_LABELS,
    'grpc_code',
  ]);
  readonly handling = new Histogram(
    'grpc_server_handling_seconds',
    'Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.',
    GRPC_LABELS,
  );
  readonly steps = new TraceMetrics();
  private readonly process = new ProcessMetrics();
  private readonly families: Family[];

  constructor(private readonly sources: MetricsSources) {
    const byState = (f: () => Record<string, number>) => (): Array<[Labels, number]> => Object.entries(f()).map(([state, n]) => [{ state }, n]);
    this.families = [
      this.started,
      this.handled,
      this.handling,
      new Collected(
        'berth_pods',
        'Pod sandboxes, per state.',
        'gauge',
        ['state'],
        byState(() => sources.podsByState()),
      ),
      new Collected(
        'berth_containers',
        'Containers, per state.',
        'gauge',
        ['state'],
        byState(() => sources.containersByState()),
      ),
      new Collected('berth_shims_live', 'Shim (conmon) processes alive.', 'gauge', [], () => [[{}, sources.liveShims()]]),
      new Collected('berth_database_size_bytes', 'Size of the SQLite database files.', 'gauge', [], () => [[{}, sources.databaseBytes()]]),
      ...this.steps.families,
      ...this.process.families,
    ];
  }

  /**
   * The series of each RPC, bound once: kubelet's PLEG makes hundreds of status calls a
   * second, and looking their series up by labels was a fair part of each call's cost.
   * A series appears at the method's first call, as before.
   */
  private readonly rpcSeries = new Map<string, { started: () => void; handling: (v: number) => void; handled: Map<number, () => void>; labels: Labels }>();

  /** Observes one RPC (an RpcObserver of the CRI wrapper: refused calls count too). */
  begin(method: string, _metadata: unknown, streaming: boolean): RpcMetricsObservation {
    const key = streaming ? `s ${method}` : method;
    let s = this.rpcSeries.get(key);
    if (s === undefined) {
      const labels = { grpc_type: streaming ? 'server_stream' : 'unary', grpc_service: this.sources.serviceOf(method), grpc_method: method };
      s = { started: this.started.bind(labels), handling: this.handling.bind(labels), handled: new Map(), labels };
      this.rpcSeries.set(key, s);
    }
    const series = s;
    series.started();
    const t0 = process.hrtime.bigint();
    return {
      run: (fn) => fn(),
      end: (code) => {
        let handled = series.handled.get(code);
        if (handled === undefined) series.handled.set(code, (handled = this.handled.bind({ ...series.labels, grpc_code: grpcCodeName(code) })));
        handled();
        series.handling(Number(process.hrtime.bigint() - t0) / 1e9);
      },
    };
  }

  /** The text exposition of every family. */
  render(): string {
    return render(this.families);
  }

  close(): void {
    this.steps.close();
    this.process.close();
  }
}
