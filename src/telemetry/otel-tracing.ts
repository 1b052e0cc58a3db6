/**
 * Tracing with the OpenTelemetry SDK, loaded only when a collector is configured
 * (tracing.ts). It gives:
 * - a SERVER span per RPC, named `runtime.v1.RuntimeService/RunPodSandbox`, continuing
 *   the W3C trace context (`traceparent`, `tracestate`) kubelet sends in the call's
 *   metadata; a malformed one is ignored and the span is a root. The span is the active
 *   context while the handler runs, and carries the call's gRPC status code;
 * - a child span per trace point (common/trace-points.ts): pulls, layer fetch and
 *   unpack, CNI plugin calls, runtime calls, shim creation, database writes, recovery,
 *   with the ids they work on as attributes;
 * - export over OTLP/gRPC through a bounded queue (span-export.ts).
 *
 * Sampling is parent-based: a caller's sampled trace is continued, an unsampled one is
 * not, and root spans are sampled at `sampling_rate_per_million`.
 */
import { context, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Attributes, type Span, type TextMapGetter } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-grpc';
import { defaultResource, detectResources, envDetector, resourceFromAttributes } from '@opentelemetry/resources';
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BasicTracerProvider,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
  type Sampler,
} from '@opentelemetry/sdk-trace-base';
import { messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { tracePoint, type TracePointName, type TracePoints } from '../common/trace-points.js';
import { BERTH_VERSION } from '../common/version.js';
import { BoundedBatchProcessor, CountingExporter, ExportStats } from './span-export.js';
import { StepContextManager } from './step-context.js';
import type { CallMetadata, RpcSpan, RpcTracer, Tracing, TracingInfo, TracingSettings } from './tracing-types.js';

const DEFAULT_MAX_QUEUE = 2048;
/** A batch the exporter has not settled after this long counts as lost (its own timeout is 10 s). */
const SETTLE_TIMEOUT_MS = 60_000;

/** A step's span: its name and attributes, from the trace point's context. */
type Describe<N extends TracePointName> = (c: TracePoints[N]) => { name: string; attributes: Attributes };

const STEPS: { [N in TracePointName]: Describe<N> } = {
  'berth:image.pull': (c) => ({ name: 'image.pull', attributes: { 'berth.image': c.image } }),
  'berth:image.fetch': (c) => ({ name: 'image.fetch', attributes: { 'berth.image': c.image, 'berth.layer.digest': c.digest, 'berth.layer.bytes': c.bytes } }),
  'berth:image.unpack': (c) => ({ name: 'image.unpack', attributes: { 'berth.image': c.image, 'berth.layer.digest': c.digest } }),
  'berth:cni': (c) => ({
    name: `cni ${c.command} ${c.plugin}`,
    attributes: { 'berth.cni.plugin': c.plugin, 'berth.cni.command': c.command, 'berth.pod_sandbox.id': c.podId },
  }),
  'berth:runtime': (c) => ({
    name: `runtime ${c.verb}`,
    attributes: { 'berth.runtime.handler': c.handler, 'berth.runtime.verb': c.verb, 'container.id': c.containerId },
  }),
  'berth:mount': (c) => ({ name: c.op, attributes: { 'berth.mount.target': c.target } }),
  'berth:shim.create': (c) => ({ name: 'shim.create', attributes: { 'container.id': c.containerId } }),
  'berth:db.write': (c) => ({ name: 'db.write', attributes: { 'db.system.name': 'sqlite', 'db.collection.name': c.table } }),
  'berth:recovery': () => ({ name: 'recovery', attributes: {} }),
  'berth:shim.runtime-create': (c) => ({ name: 'runtime create', attributes: { 'container.id': c.containerId } }),
  'berth:pod.validate': () => ({ name: 'pod.validate', attributes: {} }),
  'berth:pod.namespaces': (c) => ({ name: 'pod.namespaces', attributes: { 'berth.pod_sandbox.id': c.podId } }),
  'berth:pod.dir': (c) => ({ name: 'pod.dir', attributes: { 'berth.pod_sandbox.id': c.podId } }),
  'berth:pod.network': (c) => ({ name: 'pod.network', attributes: { 'berth.pod_sandbox.id': c.podId } }),
  'berth:pod.infra': (c) => ({ name: 'pod.infra', attributes: { 'berth.pod_sandbox.id': c.podId } }),
  'berth:pod.pidns': (c) => ({ name: 'pod.pidns', attributes: { 'berth.pod_sandbox.id': c.podId } }),
  'berth:pod.files': (c) => ({ name: 'pod.files', attributes: { 'berth.pod_sandbox.id': c.podId } }),
  'berth:container.image': (c) => ({ name: 'container.image', attributes: { 'berth.image': c.image } }),
  'berth:container.snapshot': (c) => ({ name: 'container.snapshot', attributes: { 'container.id': c.containerId } }),
  'berth:container.spec': (c) => ({ name: 'container.spec', attributes: { 'container.id': c.containerId } }),
};

/** Attributes without the absent ones (the SDK would warn about each). */
function defined(attrs: Attributes): Attributes {
  const out: Attributes = {};
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined) out[k] = v;
  return out;
}

const metadataGetter: TextMapGetter<CallMetadata> = {
  keys: () => [],
  get: (md, key) => {
    const values = md.get(key).map(String);
    return values.length === 0 ? undefined : values.length === 1 ? values[0] : values;
  },
};

function sampler(ratePerMillion: number): Sampler {
  const root =
    ratePerMillion >= 1_000_000
      ? new AlwaysOnSampler()
      : ratePerMillion <= 0
        ? new AlwaysOffSampler()
        : new TraceIdRatioBasedSampler(ratePerMillion / 1_000_000);
  return new ParentBasedSampler({ root });
}

/** Builds tracing for `settings.endpoint` (already resolved, see tracing.ts). */
export function createOtelTracing(settings: TracingSettings, log: Logger, env: NodeJS.ProcessEnv = process.env): Tracing {
  const contextManager = new StepContextManager();
  if (!context.setGlobalContextManager(contextManager)) {
    log.warn('an OpenTelemetry context manager was already installed; spans may lose their parents');
  }

  // The configured service name wins over OTEL_SERVICE_NAME unless left at its default.
  let resource = defaultResource().merge(resourceFromAttributes({ 'service.name': settings.service_name, 'service.version': BERTH_VERSION }));
  resource = resource.merge(detectResources({ detectors: [envDetector] }));
  if (settings.service_name !== 'berth') resource = resource.merge(resourceFromAttributes({ 'service.name': settings.service_name }));

  const stats = new ExportStats();
  const maxQueue = Number.parseInt(env.OTEL_BSP_MAX_QUEUE_SIZE ?? '', 10) > 0 ? Number.parseInt(env.OTEL_BSP_MAX_QUEUE_SIZE!, 10) : DEFAULT_MAX_QUEUE;
  const exporter = new CountingExporter(new OTLPTraceExporter({ url: settings.endpoint }), stats, log, SETTLE_TIMEOUT_MS);
  const provider = new BasicTracerProvider({
    resource,
    sampler: sampler(settings.sampling_rate_per_million),
    spanProcessors: [new BoundedBatchProcessor(exporter, stats, maxQueue)],
  });
  const tracer = provider.getTracer('berth', BERTH_VERSION);
  const propagator = new W3CTraceContextPropagator();

  const rpc: RpcTracer = {
    begin(method: string, metadata: CallMetadata, streaming: boolean, path?: string): RpcSpan {
      const full = path?.replace(/^\//, '') || method;
      const slash = full.lastIndexOf('/');
      const parent = propagator.extract(ROOT_CONTEXT, metadata, metadataGetter);
      const span = tracer.startSpan(
        full,
        {
          kind: SpanKind.SERVER,
          attributes: defined({
            'rpc.system': 'grpc',
            'rpc.service': slash > 0 ? full.slice(0, slash) : undefined,
            'rpc.method': slash > 0 ? full.slice(slash + 1) : full,
            'berth.rpc.streaming': streaming || undefined,
          }),
        },
        parent,
      );
      const active = trace.setSpan(parent, span);
      let ended = false;
      return {
        run: (fn) => contextManager.with(active, fn),
        end(code, details) {
          if (ended) return;
          ended = true;
          span.setAttribute('rpc.grpc.status_code', code);
          if (code !== 0) span.setStatus({ code: SpanStatusCode.ERROR, ...(details ? { message: details } : {}) });
          span.end();
        },
      };
    },
  };

  // A step's span lives on its trace point's context object from start to end.
  const spans = new WeakMap<object, Span>();
  const finish = (ctx: object & { error?: unknown }): void => {
    const span = spans.get(ctx);
    if (!span) return;
    spans.delete(ctx);
    if (ctx.error !== undefined) {
      span.setStatus({ code: SpanStatusCode.ERROR, message: messageOf(ctx.error) });
      const kind = (ctx.error as { kind?: unknown } | null)?.kind;
      span.setAttribute('error.type', typeof kind === 'string' ? kind : ctx.error instanceof Error ? ctx.error.name : typeof ctx.error);
    }
    span.end();
  };
  const unsubscribers: Array<() => void> = [];
  for (const name of Object.keys(STEPS) as TracePointName[]) {
    const ch = tracePoint(name);
    const describe = STEPS[name] as Describe<TracePointName>;
    // Runs before the step, in the caller's context: the step's span becomes the active one while it runs.
    ch.start.bindStore(contextManager.storage, (c: object) => {
      const parent = contextManager.active();
      const d = describe(c as TracePoints[TracePointName]);
      const span = tracer.startSpan(d.name, { attributes: defined(d.attributes) }, parent);
      spans.set(c, span);
      return trace.setSpan(parent, span);
    });
    const subscribers = {
      start: () => undefined,
      asyncStart: () => undefined,
      error: () => undefined,
      // `end` follows a synchronous throw (no asyncEnd then); for a promise it comes before settling.
      end: (c: object & { error?: unknown }) => {
        if (c.error !== undefined) finish(c);
      },
      asyncEnd: (c: object & { error?: unknown }) => {
        const span = spans.get(c);
        if (span) span.setAttributes(defined(describe(c as TracePoints[TracePointName]).attributes));
        finish(c);
      },
    };
    ch.subscribe(subscribers);
    unsubscribers.push(() => {
      ch.unsubscribe(subscribers);
      ch.start.unbindStore(contextManager.storage);
    });
  }

  return {
    rpc,
    info(): TracingInfo {
      return {
        enabled: true,
        endpoint: settings.endpoint,
        sampling_rate_per_million: settings.sampling_rate_per_million,
        exporter: stats.state,
        ...(stats.lastError !== undefined ? { last_error: stats.lastError } : {}),
        exported_spans: stats.exported,
        dropped_spans: stats.dropped,
        queued_spans: stats.queued,
      };
    },
    async shutdown(timeoutMs: number): Promise<void> {
      for (const u of unsubscribers) u();
      let timer: NodeJS.Timeout | undefined;
      const flushed = await Promise.race([
        provider.shutdown().then(
          () => true,
          () => false,
        ),
        new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs))),
      ]);
      clearTimeout(timer);
      if (!flushed) log.warn('spans not exported before shutdown were dropped', { queued: stats.queued, timeout_ms: timeoutMs });
      context.disable();
    },
  };
}
