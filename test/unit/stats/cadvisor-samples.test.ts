/**
 * The cAdvisor samples built from the stats collector's usage: labels from the pod and
 * container records, only running containers, and zeroed CPU and memory for a running
 * container whose cgroup could not be read (it vanished mid-read) instead of a failure.
 */
import assert from 'node:assert/strict';
import type { ContainerRecord } from '../../../src/containers/container-repository.js';
import type { SandboxRecord } from '../../../src/sandbox/sandbox-repository.js';
import { podSample } from '../../../src/stats/cadvisor-samples.js';

const sandbox = { id: 'p1', metadata: { name: 'web', namespace: 'ns', uid: 'u', attempt: 0 }, state: 'ready' } as unknown as SandboxRecord;
const container = (id: string, name: string, state: string): ContainerRecord =>
  ({ id, name, state, sandboxId: 'p1', imageRef: 'busybox:latest', pid: 1 }) as unknown as ContainerRecord;

describe('stats: cAdvisor samples', () => {
  it('labels pods and running containers, and zeroes a running container whose cgroup vanished', () => {
    const p = podSample(
      {
        sandbox,
        usage: { timestamp: 2_000_000_000n, cpu: { usageNs: 7n }, memory: { usage: 10n, workingSet: 8n, oomKills: 1n } },
        network: { timestamp: 1n, interfaces: [{ name: 'eth0', rxBytes: 1n, rxErrors: 0n, txBytes: 2n, txErrors: 0n }] },
        containers: [
          {
            container: container('c1', 'app', 'running'),
            usage: { timestamp: 2_000_000_000n, cpu: { usageNs: 5n }, memory: { usage: 4n, workingSet: 3n, limit: 100n } },
          },
          { container: container('c2', 'gone', 'running') },
          { container: container('c3', 'done', 'exited') },
        ],
      },
      1234,
    );
    assert.deepEqual(p.target, { container: '', id: 'p1', image: '', namespace: 'ns', pod: 'web' });
    assert.equal(p.usage.timestampMs, 2000);
    assert.equal(p.usage.oomEvents, 1n);
    assert.equal(p.usage.memoryLimit, 0n);
    assert.equal(p.usage.network?.[0]?.name, 'eth0');
    assert.deepEqual(
      p.containers.map((c) => c.id),
      ['c1', 'c2'],
    );
    assert.deepEqual(p.containers[0]!.target, { container: 'app', id: 'c1', image: 'busybox:latest', namespace: 'ns', pod: 'web' });
    assert.equal(p.containers[0]!.usage.memoryLimit, 100n);
    assert.deepEqual(p.containers[1]!.usage, { timestampMs: 1234, cpuUsageNs: 0n, memoryUsage: 0n, workingSet: 0n });
  });
});
