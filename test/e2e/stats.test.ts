/**
 * ContainerStats, ListContainerStats, PodSandboxStats and ListPodSandboxStats end to end:
 * figures read from the real cgroups of real containers, the writable layer as written,
 * and the pod's network counters after the test pings the pod (its own address only).
 */
import { status } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, rmdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Berthd, until } from '../helpers/berthd.js';
import { runCleanup, type CleanupStep } from '../helpers/cleanup.js';
import { useFixtureRegistry } from '../helpers/fixtures.js';
import { testBridge } from '../helpers/network.js';
import { grpcError } from '../helpers/cri-client.js';

const MiB = 1024 * 1024;
const n = (v: { value: string } | null | undefined): number => Number(v?.value ?? 'NaN');

describe('stats', function () {
  this.timeout(90_000);
  const reg = useFixtureRegistry();
  const cleanup: CleanupStep[] = [];
  afterEach(() => runCleanup(cleanup));

  async function setup(podExtra: Record<string, unknown> = {}): Promise<{ b: Berthd; pod: string; podCfg: Record<string, unknown> }> {
    const b = await Berthd.start();
    cleanup.push(() => b.dispose());
    const net = testBridge(b, 'bs');
    cleanup.push(net.remove);
    const logDir = mkdtempSync(join(tmpdir(), 'berth-logs-'));
    cleanup.push(() => rmSync(logDir, { recursive: true, force: true }));
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    const podCfg = {
      metadata: { name: `stats-${net.tag}`, namespace: 'test', uid: `u${net.tag}`, attempt: 0 },
      hostname: 'stats',
      log_directory: logDir,
      labels: { app: 'stats' },
      linux: { security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
      ...podExtra,
    };
    const { pod_sandbox_id: pod } = await b.runtime.RunPodSandbox({ config: podCfg as never });
    return { b, pod, podCfg };
  }

  async function run(
    b: Berthd,
    pod: string,
    podCfg: Record<string, unknown>,
    name: string,
    script: string,
    labels: Record<string, string> = {},
  ): Promise<string> {
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: { metadata: { name, attempt: 0 }, image: { image: reg.fx.busybox.ref }, command: ['sh', '-c', script], log_path: `${name}.log`, labels },
      sandbox_config: podCfg as never,
    });
    await b.runtime.StartContainer({ container_id: id });
    return id;
  }

  it('reports CPU, memory and the writable layer of a running container, and only the layer once it stopped', async () => {
    const { b, pod, podCfg } = await setup();
    // 2 MiB in the writable layer, 24 MiB of tmpfs pages charged to the container's memory
    // cgroup, one busy process, then a marker.
    const busy = await run(
      b,
      pod,
      podCfg,
      'busy',
      'dd if=/dev/zero of=/layer.bin bs=1024 count=2048 2>/dev/null; dd if=/dev/zero of=/dev/shm/m bs=1048576 count=24 2>/dev/null; touch /ready; while :; do :; done',
      { role: 'busy' },
    );
    const idle = await run(b, pod, podCfg, 'idle', 'sleep 1000', { role: 'idle' });
    await until(async () => (await b.runtime.ExecSync({ container_id: busy, cmd: ['test', '-f', '/ready'], timeout: 5 })).exit_code === 0 || undefined);

    const first = (await b.runtime.ContainerStats({ container_id: busy })).stats!;
    assert.equal(first.attributes!.id, busy);
    assert.equal(first.attributes!.metadata!.name, 'busy');
    assert.deepEqual(first.attributes!.labels, { role: 'busy' });
    assert.ok(BigInt(first.cpu!.timestamp) > 0n);
    assert.ok(n(first.cpu!.usage_core_nano_seconds) > 0);
    assert.ok(n(first.memory!.working_set_bytes) >= 24 * MiB, `working set ${n(first.memory!.working_set_bytes)}`);
    assert.ok(n(first.memory!.usage_bytes) >= n(first.memory!.working_set_bytes));
    assert.ok(n(first.writable_layer!.used_bytes) >= 2 * MiB, `writable layer ${n(first.writable_layer!.used_bytes)}`);
    assert.ok(n(first.writable_layer!.inodes_used) >= 2);
    assert.equal(first.writable_layer!.fs_id!.mountpoint, join(b.root, 'snapshots'));

    // The rate needs a second sample: a busy loop uses most of a core.
    const second = await until(
      async () => {
        const s = (await b.runtime.ContainerStats({ container_id: busy })).stats!;
        return n(s.cpu!.usage_nano_cores) > 0.2e9 ? s : undefined;
      },
      15_000,
      250,
    );
    assert.ok(n(second.cpu!.usage_core_nano_seconds) > n(first.cpu!.usage_core_nano_seconds));
    assert.ok(n(second.cpu!.usage_nano_cores) > 0.2e9, `usage_nano_cores ${n(second.cpu!.usage_nano_cores)}`);

    // Lists and their filters: by id (prefix), pod, labels.
    const all = (await b.runtime.ListContainerStats({})).stats.map((s) => s.attributes!.id).sort();
    assert.deepEqual(all, [busy, idle].sort());
    assert.deepEqual(
      (await b.runtime.ListContainerStats({ filter: { id: idle.slice(0, 12) } })).stats.map((s) => s.attributes!.id),
      [idle],
    );
    assert.deepEqual(
      (await b.runtime.ListContainerStats({ filter: { label_selector: { role: 'idle' } } })).stats.map((s) => s.attributes!.id),
      [idle],
    );
    assert.deepEqual((await b.runtime.ListContainerStats({ filter: { pod_sandbox_id: 'f'.repeat(64) } })).stats, []);
    const idleStats = (await b.runtime.ListContainerStats({ filter: { id: idle } })).stats[0]!;
    assert.ok(n(idleStats.memory!.working_set_bytes) < 16 * MiB);

    await b.runtime.StopContainer({ container_id: busy, timeout: 0 });
    const stopped = (await b.runtime.ContainerStats({ container_id: busy })).stats!;
    assert.equal(stopped.cpu, null);
    assert.equal(stopped.memory, null);
    assert.ok(n(stopped.writable_layer!.used_bytes) >= 2 * MiB);

    assert.equal((await grpcError(b.runtime.ContainerStats({ container_id: 'nope' }))).code, status.NOT_FOUND);
    assert.equal((await grpcError(b.runtime.ContainerStats({ container_id: '' }))).code, status.INVALID_ARGUMENT);
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
    assert.deepEqual((await b.runtime.ListContainerStats({})).stats, []);
  });

  it('reports a pod: the sum of its containers, its network interfaces after traffic, its process count', async () => {
    const { b, pod, podCfg } = await setup();
    await run(b, pod, podCfg, 'a', 'dd if=/dev/zero of=/dev/shm/a bs=1048576 count=8 2>/dev/null; sleep 1000');
    await run(b, pod, podCfg, 'c', 'sleep 1000');
    const ip = (await b.runtime.PodSandboxStatus({ pod_sandbox_id: pod })).status!.network!.ip;
    // Traffic to the pod's own address, which the test made.
    // (busybox-static's ping: hack/install.sh installs it; iputils may be absent.)
    execFileSync('busybox', ['ping', '-c', '3', '-W', '2', ip], { stdio: 'ignore' });

    const s = await until(async () => {
      const st = (await b.runtime.PodSandboxStats({ pod_sandbox_id: pod })).stats!;
      return n(st.linux!.memory?.working_set_bytes) >= 8 * MiB ? st : undefined;
    });
    assert.equal(s.attributes!.id, pod);
    assert.equal(s.attributes!.metadata!.uid, (podCfg.metadata as { uid: string }).uid);
    assert.deepEqual(s.attributes!.labels, { app: 'stats' });
    const linux = s.linux!;
    assert.equal(linux.containers.length, 2);
    const sumWs = linux.containers.reduce((t, c) => t + n(c.memory!.working_set_bytes), 0);
    assert.equal(n(linux.memory!.working_set_bytes), sumWs);
    assert.ok(n(linux.cpu!.usage_core_nano_seconds) > 0);
    assert.ok(n(linux.process!.process_count) >= 2, `process count ${n(linux.process!.process_count)}`);
    const eth0 = linux.network!.default_interface!;
    assert.equal(eth0.name, 'eth0');
    assert.ok(n(eth0.rx_bytes) >= 3 * 84, `rx ${n(eth0.rx_bytes)}`);
    assert.ok(n(eth0.tx_bytes) >= 3 * 84, `tx ${n(eth0.tx_bytes)}`);
    assert.ok(!linux.network!.interfaces.some((i) => i.name === 'lo'));

    assert.deepEqual(
      (await b.runtime.ListPodSandboxStats({})).stats.map((x) => x.attributes!.id),
      [pod],
    );
    assert.deepEqual((await b.runtime.ListPodSandboxStats({ filter: { label_selector: { app: 'other' } } })).stats, []);
    assert.equal((await grpcError(b.runtime.PodSandboxStats({ pod_sandbox_id: 'nope' }))).code, status.NOT_FOUND);
    await b.runtime.StopPodSandbox({ pod_sandbox_id: pod });
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
  });

  it('reads a pod cgroup given as cgroup_parent (kubelet’s pod<uid> cgroup)', async () => {
    const parent = `/berth-test-stats-${process.pid}-${Date.now()}`;
    const hierarchies = readdirSync('/sys/fs/cgroup').filter(
      (h) => existsSync(join('/sys/fs/cgroup', h, 'cgroup.procs')) || existsSync(join('/sys/fs/cgroup', h, 'tasks')),
    );
    cleanup.push(() => {
      for (const h of hierarchies) {
        try {
          rmdirSync(join('/sys/fs/cgroup', h, parent));
        } catch {
          // not made in this hierarchy
        }
      }
    });
    const { b, pod, podCfg } = await setup({
      linux: { cgroup_parent: parent, security_context: { namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
    });
    await run(b, pod, podCfg, 'm', 'dd if=/dev/zero of=/dev/shm/m bs=1048576 count=12 2>/dev/null; sleep 1000');
    const s = await until(async () => {
      const st = (await b.runtime.PodSandboxStats({ pod_sandbox_id: pod })).stats!;
      return n(st.linux!.memory?.working_set_bytes) >= 12 * MiB ? st : undefined;
    });
    // The figure is the parent cgroup's own (cgroup v1 here, v2 elsewhere).
    const file = [join('/sys/fs/cgroup/memory', parent, 'memory.usage_in_bytes'), join('/sys/fs/cgroup', parent, 'memory.current')].find((f) => existsSync(f));
    assert.ok(file, `no memory cgroup for ${parent}`);
    const direct = Number(readFileSync(file, 'utf8').trim());
    assert.ok(Math.abs(n(s.linux!.memory!.usage_bytes) - direct) < 4 * MiB, `pod usage ${n(s.linux!.memory!.usage_bytes)}, ${file} ${direct}`);
    await b.runtime.StopPodSandbox({ pod_sandbox_id: pod });
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
  });
});
