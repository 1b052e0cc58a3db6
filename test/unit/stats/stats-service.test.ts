/**
 * StatsService over a fixture /proc and cgroup v2 tree in a temp dir (its `procRoot`
 * seam): which cgroup a container's pid is in, the CPU rate between two samples, a pod's
 * own cgroup or the sum of its containers, and the pod's interfaces from the container's
 * /proc/<pid>/net/dev. The containers, pods and images are small fakes.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '../../../src/common/logger.js';
import type { ContainerRecord } from '../../../src/containers/container-repository.js';
import type { ContainerService } from '../../../src/containers/container-service.js';
import type { ImageService } from '../../../src/images/image-service.js';
import type { SandboxRecord } from '../../../src/sandbox/sandbox-repository.js';
import type { SandboxService } from '../../../src/sandbox/sandbox-service.js';
import { StatsService } from '../../../src/stats/stats-service.js';
import { podFactsV1 } from '../../../src/store/typed-records-v6.js';

const C1 = 'c1'.padEnd(64, '1');
const C2 = 'c2'.padEnd(64, '2');
const POD = 'p'.padEnd(64, '0');

function tree(root: string, files: Record<string, string>): void {
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(join(root, rel, '..'), { recursive: true });
    writeFileSync(join(root, rel), text);
  }
}

const NET_DEV = [
  'Inter-|   Receive                                                |  Transmit',
  ' face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed',
  '    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0',
  '  eth0:    5000      40    2    0    0     0          0         0     3000      30    1    0    0     0       0          0',
].join('\n');

/** A v2 cgroup's files with `usec` of CPU and `bytes` of memory. */
function cgroupFiles(path: string, usec: number, bytes: number): Record<string, string> {
  return {
    [`${path}/cpu.stat`]: `usage_usec ${usec}\nuser_usec ${usec}\nsystem_usec 0\n`,
    [`${path}/memory.current`]: `${bytes}\n`,
    [`${path}/memory.max`]: 'max\n',
    [`${path}/memory.stat`]: `anon ${bytes}\ninactive_file 0\npgfault 1\npgmajfault 0\n`,
    [`${path}/pids.current`]: '1\n',
  };
}

describe('stats: StatsService over a fixture /proc and cgroup tree', () => {
  let dir: string;
  let proc: string;
  let cgroup: string;
  let containers: ContainerRecord[];
  let svc: StatsService;

  const container = (id: string, pid: number, state: ContainerRecord['state'] = 'running'): ContainerRecord =>
    ({ id, sandboxId: POD, state, pid }) as unknown as ContainerRecord;
  const pod = (config: Record<string, unknown>, nsDir: string | null = '/run/ns/x'): SandboxRecord =>
    ({ id: POD, request: config, facts: podFactsV1(config, 'p'), nsDir }) as unknown as SandboxRecord;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'berth-stats-svc-'));
    proc = join(dir, 'proc');
    cgroup = join(dir, 'cgroup');
    tree(proc, { 'self/mountinfo': `30 23 0:27 / ${cgroup} rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw\n` });
    mkdirSync(cgroup, { recursive: true });
    containers = [];
    svc = new StatsService({
      containers: { list: () => containers } as unknown as ContainerService,
      sandboxes: { list: () => [{ id: POD }] } as unknown as SandboxService,
      images: { containerLayerDir: () => undefined } as unknown as ImageService,
      cgroupDriver: 'cgroupfs',
      log: createLogger('error', () => undefined),
      procRoot: proc,
    });
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it("reads a running container's own cgroup through its pid; the CPU rate comes with the second sample", async () => {
    tree(proc, { '100/cgroup': `0::/kubepods/pod1/${C1}\n` });
    tree(cgroup, cgroupFiles(`kubepods/pod1/${C1}`, 1000, 4096));
    const c = container(C1, 100);
    const first = await svc.containerUsage(c);
    assert.equal(first.usage?.cpu?.usageNs, 1_000_000n);
    assert.equal(first.usage?.memory?.workingSet, 4096n);
    assert.equal(first.usage?.nanoCores, undefined, 'no rate from one sample');
    tree(cgroup, cgroupFiles(`kubepods/pod1/${C1}`, 2000, 4096));
    const second = await svc.containerUsage(c);
    assert.equal(second.usage?.cpu?.usageNs, 2_000_000n);
    assert.ok(second.usage?.nanoCores !== undefined && second.usage.nanoCores > 0n, String(second.usage?.nanoCores));
  });

  it('reads nothing for a pid now in another cgroup (a reused pid), a gone pid, or a container not running', async () => {
    tree(proc, { '100/cgroup': '0::/user.slice/session-1.scope\n' });
    tree(cgroup, cgroupFiles('user.slice/session-1.scope', 5, 5));
    assert.equal((await svc.containerUsage(container(C1, 100))).usage, undefined);
    assert.equal((await svc.containerUsage(container(C1, 999))).usage, undefined);
    tree(proc, { '101/cgroup': `0::/k/${C2}\n` });
    tree(cgroup, cgroupFiles(`k/${C2}`, 5, 5));
    assert.equal((await svc.containerUsage(container(C2, 101, 'exited'))).usage, undefined);
  });

  it("a pod: its cgroup_parent's cgroup, and its interfaces (lo left out, eth0 the default) from a container's net/dev", async () => {
    tree(proc, { '100/cgroup': `0::/kubepods/pod1/${C1}\n`, '100/net/dev': NET_DEV });
    tree(cgroup, { ...cgroupFiles(`kubepods/pod1/${C1}`, 1000, 4096), ...cgroupFiles('kubepods/pod1', 7000, 9000) });
    containers = [container(C1, 100)];
    const u = await svc.podUsage(pod({ linux: { cgroup_parent: '/kubepods/pod1' } }));
    assert.equal(u.usage?.cpu?.usageNs, 7_000_000n);
    assert.deepEqual(
      u.containers.map((c) => c.container.id),
      [C1],
    );
    assert.deepEqual(
      u.network?.interfaces.map((i) => i.name),
      ['eth0'],
    );
    assert.equal(u.network?.defaultInterface?.rxBytes, 5000n);
  });

  it('a pod without a cgroup of its own sums its containers; a host-network pod has no interfaces of its own', async () => {
    tree(proc, { '100/cgroup': `0::/k/${C1}\n`, '101/cgroup': `0::/k/${C2}\n`, '100/net/dev': NET_DEV, '101/net/dev': NET_DEV });
    tree(cgroup, { ...cgroupFiles(`k/${C1}`, 1000, 100), ...cgroupFiles(`k/${C2}`, 2000, 200) });
    containers = [container(C1, 100), container(C2, 101)];
    const u = await svc.podUsage(pod({ linux: { security_context: { namespace_options: { network: 'NODE' } } } }));
    assert.equal(u.usage?.cpu?.usageNs, 3_000_000n);
    assert.equal(u.usage?.memory?.usage, 300n);
    assert.equal(u.network, undefined);
  });
});
