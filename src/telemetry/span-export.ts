/**
 * The export path of spans, built so that a slow or absent collector costs an RPC
 * nothing: spans wait in a bounded queue (OpenTelemetry's BatchSpanProcessor, exporting
 * in the background); once the queue holds its maximum, a further span is dropped and
 * counted rather than queued; a batch whose export fails is dropped and counted too.
 * The counts and the exporter's health are what Status reports.
 */
import { ExportResultCode, type ExportResult } from '@opentelemetry/core';
import { BatchSpanProcessor, type ReadableSpan, type Span, type SpanExporter, type SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { TraceFlags, type Context } from '@opentelemetry/api';
import { messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';

/** Export counters and health, shared by the exporter and the processor. */
export class ExportStats {
  exported = 0;
  dropped = 0;
  /** Ended spans handed to the batch processor whose export has not settled. */
  queued = 0;
  state: 'idle' | 'ok' | 'failing' = 'idle';
  lastError: string | undefined;
}

/**
 * Wraps the OTLP exporter to count what it exports and loses, and to log when the
 * collector becomes unreachable or reachable again (once per change, not per batch).
 */
export class CountingExporter implements SpanExporter {
  constructor(
    private readonly inner: SpanExporter,
    private readonly stats: ExportStats,
    private readonly log: Logger,
    /** A batch whose export has not called back after this long is counted as lost. */
    private readonly settleTimeoutMs: number,
  ) {}

  export(spans: ReadableSpan[], resultCallback: (result: ExportResult) => void): void {
    let settled = false;
    const settle = (result: ExportResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(guard);
      this.stats.queued = Math.max(0, this.stats.queued - spans.length);
      if (result.code === ExportResultCode.SUCCESS) {
        this.stats.exported += spans.length;
        if (this.stats.state === 'failing') this.log.info('trace collector reachable again');
        this.stats.state = 'ok';
        this.stats.lastError = undefined;
      } else {
        this.stats.dropped += spans.length;
        const error = result.error ? messageOf(result.error) : 'export failed';
        if (this.stats.state !== 'failing') this.log.warn('trace export failed; spans are dropped until the collector answers', { error });
        this.stats.state = 'failing';
        this.stats.lastError = error;
      }
      resultCallback(result);
    };
    const guard = setTimeout(
      () => settle({ code: ExportResultCode.FAILED, error: new Error(`no answer in ${this.settleTimeoutMs} ms`) }),
      this.settleTimeoutMs,
    );
    guard.unref();
    try {
      this.inner.export(spans, settle);
    } catch (err) {
      settle({ code: ExportResultCode.FAILED, error: err instanceof Error ? err : new Error(messageOf(err)) });
    }
  }

  shutdown(): Promise<void> {
    return this.inner.shutdown();
  }

  forceFlush(): Promise<void> {
    return this.inner.forceFlush?.() ?? Promise.resolve();
  }
}

/**
 * The batch processor behind a bound of its own: a span that would exceed `maxQueueSize`
 * spans awaiting export is dropped and counted, so the batch processor's queue never
 * overflows (it would drop silently).
 */
export class BoundedBatchProcessor implements SpanProcessor {
  private readonly batch: BatchSpanProcessor;

  constructor(
    exporter: CountingExporter,
    private readonly stats: ExportStats,
    private readonly maxQueueSize: number,
  ) {
    // The other OTEL_BSP_* settings (delay, batch size, export timeout) come from the environment.
    this.batch = new BatchSpanProcessor(exporter, { maxQueueSize });
  }

  onStart(span: Span, parentContext: Context): void {
    this.batch.onStart(span, parentContext);
  }

  onEnd(span: ReadableSpan): void {
    if ((span.spanContext().traceFlags & TraceFlags.SAMPLED) === 0) return;
    if (this.stats.queued >= this.maxQueueSize) {
      this.stats.dropped++;
      return;
    }
    this.stats.queued++;
    this.batch.onEnd(span);
  }

  forceFlush(): Promise<void> {
    return this.batch.forceFlush();
  }

  shutdown(): Promise<void> {
    return this.batch.shutdown();
  }
}
