/**
 * The types of tracing as the rest of berth sees it, apart from tracing.ts so that the
 * SDK side (otel-tracing.ts, loaded on demand) and the switch share them without a cycle.
 */

/** berth's `[tracing]` table, as tracing needs it. */
export interface TracingSettings {
  endpoint: string;
  sampling_rate_per_million: number;
  service_name: string;
}

/** The metadata of an incoming call, as far as tracing reads it (grpc-js's Metadata). */
export interface CallMetadata {
  get(key: string): Array<string | Buffer>;
}

/** One call's span; `end` is called exactly once. Structurally a cri/wrap.ts RpcObservation. */
export interface RpcSpan {
  run<T>(fn: () => T): T;
  end(code: number, details?: string): void;
}

/** Gives every RPC a span. Structurally a cri/wrap.ts RpcObserver. */
export interface RpcTracer {
  begin(method: string, metadata: CallMetadata, streaming: boolean, path?: string): RpcSpan;
}

/** What Status (verbose) reports under `tracing`. */
export interface TracingInfo {
  enabled: boolean;
  endpoint?: string;
  sampling_rate_per_million?: number;
  /** "idle" before the first export, then the outcome of the last one. */
  exporter?: 'idle' | 'ok' | 'failing';
  last_error?: string;
  exported_spans?: number;
  /** Spans lost: the queue was full, or their export failed. */
  dropped_spans?: number;
  queued_spans?: number;
}

/** Tracing while it runs. */
export interface Tracing {
  readonly rpc: RpcTracer;
  info(): TracingInfo;
  /** Exports what is queued, waiting at most `timeoutMs`, and stops. */
  shutdown(timeoutMs: number): Promise<void>;
}
