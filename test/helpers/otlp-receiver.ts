/**
 * An OTLP/gRPC trace receiver for tests: a grpc-js server on 127.0.0.1 that implements
 * `opentelemetry.proto.collector.trace.v1.TraceService/Export` (from the minimal proto
 * in ./otlp/, written from the OTLP specification) and keeps every span it is sent.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { fileURLToPath } from 'node:url';

const PROTO = fileURLToPath(new URL('../../../test/helpers/otlp/trace_service.proto', import.meta.url));

/** A span as received, ids in hex. */
export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  /** "" for a root span. */
  parentSpanId: string;
  name: string;
  kind: number;
  attributes: Record<string, string | number | boolean>;
  /** 0 unset, 1 ok, 2 error. */
  statusCode: number;
  statusMessage: string;
  resource: Record<string, string | number | boolean>;
}

interface AnyValue {
  value?: string;
  string_value?: string;
  bool_value?: boolean;
  int_value?: string;
  double_value?: number;
}
interface KeyValue {
  key: string;
  value?: AnyValue;
}
interface WireSpan {
  trace_id: Buffer;
  span_id: Buffer;
  parent_span_id: Buffer;
  name: string;
  kind: number;
  attributes: KeyValue[];
  status?: { code: number; message: string };
}
interface ExportRequest {
  resource_spans: Array<{ resource?: { attributes: KeyValue[] }; scope_spans: Array<{ spans: WireSpan[] }> }>;
}

function attributes(kvs: KeyValue[] | undefined): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const kv of kvs ?? []) {
    const v = kv.value;
    if (!v) continue;
    if (v.value === 'string_value') out[kv.key] = v.string_value!;
    else if (v.value === 'bool_value') out[kv.key] = v.bool_value!;
    else if (v.value === 'int_value') out[kv.key] = Number(v.int_value);
    else if (v.value === 'double_value') out[kv.key] = v.double_value!;
  }
  return out;
}

export class OtlpReceiver implements AsyncDisposable {
  readonly spans: ReceivedSpan[] = [];
  /** Export requests received. */
  requests = 0;

  private constructor(
    private readonly server: grpc.Server,
    /** host:port, as berth's `[tracing] endpoint` takes it. */
    readonly endpoint: string,
  ) {}

  static async start(): Promise<OtlpReceiver> {
    const def = protoLoader.loadSync(PROTO, { keepCase: true, longs: String, enums: Number, defaults: true, oneofs: true });
    const pkg = grpc.loadPackageDefinition(def) as unknown as {
      opentelemetry: { proto: { collector: { trace: { v1: { TraceService: { service: grpc.ServiceDefinition } } } } } };
    };
    const server = new grpc.Server();
    server.addService(pkg.opentelemetry.proto.collector.trace.v1.TraceService.service, {
      Export: (call: grpc.ServerUnaryCall<ExportRequest, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        receiver.receive(call.request);
        callback(null, {});
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    const receiver = new OtlpReceiver(server, `127.0.0.1:${port}`);
    return receiver;
  }

  private receive(req: ExportRequest): void {
    this.requests++;
    for (const rs of req.resource_spans) {
      const resource = attributes(rs.resource?.attributes);
      for (const ss of rs.scope_spans) {
        for (const s of ss.spans) {
          this.spans.push({
            traceId: s.trace_id.toString('hex'),
            spanId: s.span_id.toString('hex'),
            parentSpanId: s.parent_span_id.toString('hex'),
            name: s.name,
            kind: s.kind,
            attributes: attributes(s.attributes),
            statusCode: s.status?.code ?? 0,
            statusMessage: s.status?.message ?? '',
            resource,
          });
        }
      }
    }
  }

  /** The spans received so far named `name`. */
  named(name: string): ReceivedSpan[] {
    return this.spans.filter((s) => s.name === name);
  }

  /** The spans whose parent is `span`. */
  childrenOf(span: ReceivedSpan): ReceivedSpan[] {
    return this.spans.filter((s) => s.traceId === span.traceId && s.parentSpanId === span.spanId);
  }

  async stop(): Promise<void> {
    await new Promise<void>((resolve) => this.server.tryShutdown(() => resolve()));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}
