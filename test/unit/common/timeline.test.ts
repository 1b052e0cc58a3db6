/**
 * The timeline recorder (src/common/timeline.ts) on the real trace points, without root:
 * steps are recorded by async context, nested ones with their depth and the parent's own
 * time less theirs, concurrent RPCs apart, a wrapper of the same trace point once, and at
 * most MAX_STEPS steps.
 */
import assert from 'node:assert/strict';
import { MAX_STEPS, recordTimeline, rfc3339Nano, timelineSoFar, unionNs, type TimelineStep } from '../../../src/common/timeline.js';
import { traced, tracedSync } from '../../../src/common/trace-points.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('common/timeline', () => {
  it('records the steps run inside an RPC, nested ones with their depth, the root as the RPC; nothing outside', async () => {
    await traced('berth:pod.validate', {}, () => sleep(1)); // outside any recording: ignored
    const steps = await recordTimeline('RunPodSandbox', async () => {
      await traced('berth:pod.validate', {}, () => sleep(5));
      await traced('berth:pod.network', { podId: 'p' }, async () => {
        await traced('berth:cni', { plugin: 'loopback', command: 'ADD' }, () => sleep(10));
        tracedSync('berth:db.write', { table: 'sandboxes' }, () => undefined);
        await traced('berth:cni', { plugin: 'bridge', command: 'ADD', podId: 'p' }, () => sleep(10));
      });
      await traced('berth:pod.files', { podId: 'p' }, () => Promise.reject(new Error('disk full'))).catch(() => undefined);
      return timelineSoFar();
    });
    assert.deepEqual(
      steps.map((s) => [s.step, s.depth, s.rpc]),
      [
        ['RunPodSandbox', 0, 'RunPodSandbox'],
        ['validate', 1, 'RunPodSandbox'],
        ['network', 1, 'RunPodSandbox'],
        ['cni loopback ADD', 2, 'RunPodSandbox'],
        ['db write sandboxes', 2, 'RunPodSandbox'],
        ['cni bridge ADD', 2, 'RunPodSandbox'],
        ['pod files', 1, 'RunPodSandbox'],
      ],
    );
    const by = (n: string): TimelineStep => steps.find((s) => s.step === n)!;
    assert.equal(by('pod files').failed, true, 'a failed step is marked');
    assert.equal(by('validate').failed, undefined);
    const net = by('network');
    const cni = by('cni loopback ADD').duration_ms + by('cni bridge ADD').duration_ms;
    assert.ok(net.duration_ms >= cni, `${net.duration_ms} >= ${cni}`);
    assert.ok(Math.abs(net.self_ms - (net.duration_ms - cni - by('db write sandboxes').duration_ms)) < 0.05, JSON.stringify(net));
    const root = by('RunPodSandbox');
    assert.ok(root.duration_ms >= 25 && root.self_ms < root.duration_ms - 20, JSON.stringify(root));
    for (const s of steps) assert.match(s.start, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$/);
  });

  it('keeps concurrent RPCs apart, records a wrapped step of the same trace point once, replaces a retried RPC’s steps, bounds the count', async () => {
    const [a, b] = await Promise.all(
      ['a', 'b'].map((id) =>
        recordTimeline('CreateContainer', async () => {
          await traced('berth:shim.create', { containerId: id }, () =>
            traced('berth:shim.create', { containerId: id }, () => traced('berth:shim.runtime-create', { containerId: id }, () => sleep(5))),
          );
          return timelineSoFar();
        }),
      ),
    );
    for (const t of [a!, b!]) {
      assert.deepEqual(
        t.map((s) => [s.step, s.depth]),
        [
          ['CreateContainer', 0],
          ['conmon', 1],
          ['runtime create', 2],
        ],
      );
    }
    const earlier: TimelineStep[] = [...a!, { step: 'runtime start', rpc: 'StartContainer', start: a![0]!.start, duration_ms: 1, depth: 1, self_ms: 1 }];
    const started = await recordTimeline('StartContainer', async () => {
      await traced('berth:runtime', { handler: 'runc', verb: 'start', containerId: 'a' }, () => sleep(1));
      return timelineSoFar(earlier);
    });
    assert.deepEqual(
      started.map((s) => `${s.rpc}/${s.step}`),
      [
        'CreateContainer/CreateContainer',
        'CreateContainer/conmon',
        'CreateContainer/runtime create',
        'StartContainer/StartContainer',
        'StartContainer/runtime start',
      ],
    );
    const many = await recordTimeline('RunPodSandbox', async () => {
      for (let i = 0; i < 2 * MAX_STEPS; i++) tracedSync('berth:db.write', { table: 't' }, () => undefined);
      return timelineSoFar();
    });
    assert.equal(many.length, MAX_STEPS);
  });

  it('unionNs counts overlaps once and clips to the window; rfc3339Nano keeps nine digits', () => {
    assert.equal(
      unionNs(
        [
          [10n, 20n],
          [15n, 30n],
          [40n, 50n],
          [0n, 5n],
        ],
        2n,
        45n,
      ),
      3n + 20n + 5n,
    );
    assert.equal(rfc3339Nano(1_700_000_000_123_456_789n), '2023-11-14T22:13:20.123456789Z');
    assert.equal(rfc3339Nano(1_700_000_000_000_000_001n), '2023-11-14T22:13:20.000000001Z');
  });
});
