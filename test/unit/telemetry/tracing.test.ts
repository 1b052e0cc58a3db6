import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createLogger } from '../../../src/common/logger.js';
import { traced } from '../../../src/common/trace-points.js';
import { BerthError } from '../../../src/common/errors.js';
import { SCHEMA } from '../../../src/config/schema.js';
import { startTracing, tracingEndpoint } from '../../../src/telemetry/tracing.js';
import { until } from '../../helpers/berthd.js';
import { OtlpReceiver } from '../../helpers/otlp-receiver.js';

describe('telemetry/tracing', () => {
  it('decides where spans go: OTEL_SDK_DISABLED, then the config, then the OTEL endpoint variables', () => {
    assert.equal(tracingEndpoint({ endpoint: '' }, {}), undefined);
    assert.equal(tracingEndpoint({ endpoint: '127.0.0.1:4317' }, {}), 'http://127.0.0.1:4317');
    assert.equal(tracingEndpoint({ endpoint: 'https://otel.example:4317' }, {}), 'https://otel.example:4317');
    assert.equal(tracingEndpoint({ endpoint: '127.0.0.1:4317' }, { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://other:4317' }), 'http://127.0.0.1:4317');
    assert.equal(tracingEndpoint({ endpoint: '' }, { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://a:4317' }), 'http://a:4317');
    assert.equal(
      tracingEndpoint({ endpoint: '' }, { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://a:4317', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://t:4317' }),
      'http://t:4317',
    );
    assert.equal(tracingEndpoint({ endpoint: '127.0.0.1:4317' }, { OTEL_SDK_DISABLED: 'true' }), undefined);
  });

  it('validates the [tracing] keys', () => {
    const endpoint = SCHEMA['tracing.endpoint']!;
    for (const ok of ['', '127.0.0.1:4317', 'collector:4317', 'https://collector.example:4317', '[::1]:4317']) assert.equal(endpoint(ok), undefined, ok);
    for (const bad of ['127.0.0.1', 'http://', 'ftp://x:1', 'x:4317/path', 4317]) assert.match(endpoint(bad) ?? '', /host:port/, String(bad));
    assert.equal(SCHEMA['tracing.sampling_rate_per_million']!(1_000_000), undefined);
    assert.ok(SCHEMA['tracing.sampling_rate_per_million']!(1_000_001));
    assert.ok(SCHEMA['tracing.service_name']!(' '));
  });

  it('nests the spans of steps inside the RPC span that runs them, and marks failed steps', async () => {
    const rx = await OtlpReceiver.start();
    try {
      const tracing = await startTracing({ endpoint: rx.endpoint, sampling_rate_per_million: 0, service_name: 'berth' }, createLogger('error'));
      assert.ok(tracing);
      const traceId = randomBytes(16).toString('hex');
      const parent = randomBytes(8).toString('hex');
      const md = new grpc.Metadata();
      md.set('traceparent', `00-${traceId}-${parent}-01`);
      const call = tracing.rpc.begin('PullImage', md, false, '/runtime.v1.ImageService/PullImage');
      await call.run(() =>
        traced('berth:image.pull', { image: 'busybox' }, async () => {
          await traced('berth:image.fetch', { image: 'busybox', digest: 'sha256:aa', bytes: 10 }, async () => undefined);
          await traced('berth:image.unpack', { image: 'busybox', digest: 'sha256:aa' }, async () => {
            throw new BerthError('Internal', 'disk full');
          }).catch(() => undefined);
        }),
      );
      call.end(grpc.status.OK);
      // Unsampled: the caller's trace flags say not sampled, and the root rate is 0.
      const quiet = new grpc.Metadata();
      quiet.set('traceparent', `00-${randomBytes(16).toString('hex')}-${parent}-00`);
      const q = tracing.rpc.begin('Version', quiet, false, '/runtime.v1.RuntimeService/Version');
      q.end(grpc.status.OK);
      await tracing.shutdown(5000);

      const rpc = await until(async () => rx.named('runtime.v1.ImageService/PullImage')[0]);
      assert.equal(rpc.traceId, traceId);
      assert.equal(rpc.parentSpanId, parent);
      const [pull] = rx.childrenOf(rpc);
      assert.equal(pull?.name, 'image.pull');
      const steps = rx.childrenOf(pull!);
      assert.deepEqual(steps.map((s) => s.name).sort(), ['image.fetch', 'image.unpack']);
      const fetch = steps.find((s) => s.name === 'image.fetch')!;
      assert.equal(fetch.attributes['berth.layer.bytes'], 10);
      const unpack = steps.find((s) => s.name === 'image.unpack')!;
      assert.equal(unpack.statusCode, 2);
      assert.equal(unpack.statusMessage, 'disk full');
      assert.equal(unpack.attributes['error.type'], 'Internal');
      assert.deepEqual(rx.named('runtime.v1.RuntimeService/Version'), [], 'an unsampled caller trace is not exported');
      assert.deepEqual(tracing.info(), {
        enabled: true,
        endpoint: `http://${rx.endpoint}`,
        sampling_rate_per_million: 0,
        exporter: 'ok',
        exported_spans: 4,
        dropped_spans: 0,
        queued_spans: 0,
      });
    } finally {
      await rx.stop();
    }
  });
});
