/**
 * SandboxService's bookkeeping as any user: RunPodSandbox, StopPodSandbox,
 * RemovePodSandbox and recovery over the real repository (a database in a temp dir) and
 * a real CNI conf dir, with a fake PodHost standing in for the namespace pins, the shm
 * mount, the CNI plugins and sysctls. The same paths with real namespaces and plugins
 * are in test/e2e/sandboxes.test.ts.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BerthError } from '../../../src/common/errors.js';
import { createLogger } from '../../../src/common/logger.js';
import { defaultConfig } from '../../../src/config/schema.js';
import { OciRuntimes, type OciRuntime } from '../../../src/oci/oci-runtime.js';
import type { CniResult, CniRuntimeConf } from '../../../src/sandbox/cni/cni.js';
import type { CniNetworkList } from '../../../src/sandbox/cni/conf-dir.js';
import type { PinnedNamespaces, PodNamespace } from '../../../src/sandbox/namespaces.js';
import type { PodHost, PodNetwork } from '../../../src/sandbox/pod-host.js';
import { SandboxRepository } from '../../../src/sandbox/sandbox-repository.js';
import type { PodSandboxSpec } from '../../../src/sandbox/pod-spec.js';
import { SandboxService, type PodContainerHooks } from '../../../src/sandbox/sandbox-service.js';
import type { Shim } from '../../../src/shim/shim.js';
import { openDatabase, type Db } from '../../../src/store/database.js';

const log = createLogger('error', () => undefined);

/** Pins are files in a set, shm a set of paths, CNI a log of calls with a result of the test's choosing. */
class FakeHost implements PodHost {
  readonly pins = new Set<string>();
  readonly shm = new Set<string>();
  readonly calls: string[] = [];
  /** The teardown's steps in order: CNI DEL, shm unmounts, namespace removals (and the test's container removals). */
  readonly steps: string[] = [];
  addFails: Error | undefined;
  /** Runs during each CNI DEL (after it is recorded). */
  onDel: (() => Promise<void> | void) | undefined;
  sysctlFails: Error | undefined;

  async pinNamespaces(dir: string, kinds: PodNamespace[], opts: { hostname?: string; loopback?: boolean }): Promise<PinnedNamespaces> {
    mkdirSync(dir, { recursive: true });
    const out: PinnedNamespaces = {};
    for (const k of kinds) {
      writeFileSync(join(dir, k), '');
      this.pins.add(join(dir, k));
      out[k] = join(dir, k);
    }
    this.calls.push(`pin ${kinds.join(',')}${opts.hostname ? ` hostname=${opts.hostname}` : ''}${opts.loopback ? ' lo' : ''}`);
    return out;
  }
  async removeNamespaces(dir: string): Promise<void> {
    this.steps.push(`rmns ${dir}`);
    for (const p of [...this.pins]) if (p.startsWith(`${dir}/`)) this.pins.delete(p);
    await rm(dir, { recursive: true, force: true });
  }
  isPinned(path: string): boolean {
    return this.pins.has(path);
  }
  async mountShm(path: string): Promise<void> {
    mkdirSync(path, { recursive: true });
    this.shm.add(path);
  }
  async unmountShm(path: string): Promise<void> {
    this.steps.push(`umount shm ${path}`);
    this.shm.delete(path);
  }
  network(list: CniNetworkList): PodNetwork {
    return {
      list,
      add: async (rt: CniRuntimeConf): Promise<CniResult> => {
        this.calls.push(`ADD ${list.name} ${rt.containerId} netns=${rt.netns} ports=${JSON.stringify(rt.capabilityArgs?.portMappings ?? [])}`);
        if (this.addFails) throw this.addFails;
        return { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: rt.netns }], ips: [{ address: '10.88.0.7/16', interface: 0 }] };
      },
      del: async (rt: CniRuntimeConf, prev: CniResult | undefined): Promise<void> => {
        this.calls.push(`DEL ${list.name} ${rt.containerId} netns=${rt.netns} prev=${prev ? 'yes' : 'no'}`);
        this.steps.push(`DEL ${rt.containerId}`);
        await this.onDel?.();
      },
    };
  }
  async loopbackUp(netns: string): Promise<void> {
    this.calls.push(`lo ${netns}`);
  }
  async applySysctls(_ns: PinnedNamespaces, sysctls: Record<string, string>): Promise<void> {
    if (this.sysctlFails) throw this.sysctlFails;
    this.calls.push(`sysctl ${Object.keys(sysctls).join(',')}`);
  }
}

describe('sandbox: SandboxService with a fake PodHost', () => {
  let dir: string;
  let db: Db;
  let repo: SandboxRepository;
  let host: FakeHost;
  let svc: SandboxService;
  let confDir: string;
  /** What the service is given for the pod's containers. */
  let containers: PodContainerHooks;

  const service = (): SandboxService => {
    const config = { ...defaultConfig(), root: join(dir, 'root'), state: join(dir, 'state') };
    config.cni = { conf_dir: confDir, bin_dirs: [join(dir, 'bin')] };
    return new SandboxService({
      config,
      repo,
      runtimes: new OciRuntimes([{ handler: 'runc' } as OciRuntime], 'runc'),
      shim: {} as Shim,
      containers,
      log,
      host,
    });
  };

  const spec = (over: Partial<PodSandboxSpec> = {}): PodSandboxSpec => ({
    metadata: { name: 'web', namespace: 'default', uid: 'uid-1', attempt: 0 },
    hostname: '',
    dns: { servers: ['192.0.2.53'], searches: ['svc.local'], options: [] },
    portMappings: [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }],
    cgroupParent: '',
    sysctls: {},
    namespaces: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' },
    runtimeHandler: 'runc',
    logDirectory: '',
    labels: {},
    annotations: {},
    raw: { metadata: { name: 'web' } },
    ...over,
  });

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-sb-svc-'));
    confDir = join(dir, 'net.d');
    mkdirSync(confDir);
    writeFileSync(
      join(confDir, '10-berth.conflist'),
      JSON.stringify({ cniVersion: '1.0.0', name: 'berth', plugins: [{ type: 'bridge' }, { type: 'portmap' }] }),
    );
    db = openDatabase(join(dir, 'berth.db'));
    repo = new SandboxRepository(db);
    host = new FakeHost();
    containers = { stopAll: async () => {}, removeAll: async () => {} };
    svc = service();
  });
  afterEach(async () => {
    await svc.close();
    db.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('runs a pod: namespaces pinned, shm, loopback, CNI ADD with port mappings, pod files, ready with its IP', async () => {
    const id = await svc.run(spec());
    const rec = repo.get(id)!;
    assert.deepEqual([rec.state, rec.ips], ['ready', ['10.88.0.7']]);
    const ns = join(dir, 'state', 'ns', id);
    assert.deepEqual(host.calls, [
      // lo is brought up as the network namespace is pinned: no loopback plugin.
      'pin net,uts,ipc hostname=web lo',
      `ADD berth ${id} netns=${join(ns, 'net')} ports=[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]`,
    ]);
    const podDir = svc.podDir(id);
    assert.ok(host.shm.has(join(podDir, 'shm')));
    assert.equal(readFileSync(join(podDir, 'hostname'), 'utf8').trim(), 'web');
    assert.match(readFileSync(join(podDir, 'resolv.conf'), 'utf8'), /nameserver 192\.0\.2\.53\nsearch svc\.local/);
    assert.match(readFileSync(join(podDir, 'hosts'), 'utf8'), /10\.88\.0\.7\tweb/);
  });

  it('hands back a pod kubelet has not acknowledged; refuses a second one with the same metadata once it has', async () => {
    const id = await svc.run(spec());
    assert.equal(await svc.run(spec()), id);
    svc.acknowledge(id);
    await assert.rejects(svc.run(spec()), { kind: 'AlreadyExists', message: new RegExp(`already exists as ${id} \\(state ready\\)`) });
  });

  it('rolls a failed CNI ADD back: DEL without a result, no shm, no pins, no pod dir, no row', async () => {
    host.addFails = new BerthError('Internal', 'plugin "bridge" failed to ADD: no IP left');
    await assert.rejects(svc.run(spec()), { message: /no IP left/ });
    assert.deepEqual(repo.list(), []);
    assert.ok(
      host.calls.some((c) => c.startsWith('DEL berth') && c.endsWith('prev=no')),
      host.calls.join('\n'),
    );
    assert.deepEqual([host.pins.size, host.shm.size], [0, 0]);
    assert.deepEqual(readdirSync(join(dir, 'root', 'sandboxes')), [], 'no pod dir');
    assert.deepEqual(readdirSync(join(dir, 'state', 'ns')), [], 'no pin dir');
  });

  it('rolls back a failure after the network was added: DEL with the result it got', async () => {
    host.sysctlFails = new BerthError('InvalidArgument', 'sysctl net.ipv4.ip_unprivileged_port_start: refused');
    await assert.rejects(svc.run(spec({ sysctls: { 'net.ipv4.ip_unprivileged_port_start': '0' } })), { kind: 'InvalidArgument' });
    assert.deepEqual(repo.list(), []);
    assert.ok(
      host.calls.some((c) => c.startsWith('DEL berth') && c.endsWith('prev=yes')),
      host.calls.join('\n'),
    );
    assert.deepEqual([host.pins.size, host.shm.size], [0, 0]);
  });

  it('refuses before touching anything: a pod network not ready, an unknown handler', async () => {
    await rm(join(confDir, '10-berth.conflist'));
    await assert.rejects(svc.run(spec()), { kind: 'FailedPrecondition', message: /the pod network is not ready/ });
    await assert.rejects(svc.run(spec({ runtimeHandler: 'kata' })), { kind: 'InvalidArgument', message: /runtime_handler "kata" is not configured/ });
    assert.deepEqual(host.calls, []);
    assert.deepEqual(repo.list(), []);
  });

  it('a host-network pod: no net pin and no CNI; only IPC pinned', async () => {
    const id = await svc.run(spec({ namespaces: { network: 'NODE', pid: 'CONTAINER', ipc: 'POD' } }));
    assert.deepEqual(host.calls, ['pin ipc']);
    assert.deepEqual(repo.get(id)!.ips, []);
  });

  it('stops (CNI DEL with the stored result, shm and pins released; NOTREADY) and removes, each idempotent', async () => {
    const id = await svc.run(spec());
    host.calls.length = 0;
    await svc.stop(id);
    const rec = repo.get(id)!;
    assert.deepEqual([rec.state, rec.nsDir, rec.network, rec.ips], ['notready', null, null, []]);
    assert.deepEqual(host.calls, [`DEL berth ${id} netns=${join(dir, 'state', 'ns', id, 'net')} prev=yes`]);
    assert.deepEqual([host.pins.size, host.shm.size], [0, 0]);
    await svc.stop(id);
    assert.equal(host.calls.length, 1, 'a second stop does nothing');
    await svc.remove(id);
    await svc.remove(id);
    assert.equal(repo.get(id), undefined);
    assert.equal(existsSync(svc.podDir(id)), false);
  });

  /** Containers as rows of the real `containers` table (which reference their pod); removing one deletes its row and is logged in `host.steps`. */
  function containerRows(): { add(pod: string, name: string): void } {
    const insert = db.prepare(
      "INSERT INTO containers (id, sandbox_id, name, attempt, image_id, image_ref, state, config, log_path, created_at) VALUES (?, ?, ?, 0, 'i', 'r', 'running', '{}', '/l', '1')",
    );
    const ofPod = db.prepare<[string], string>('SELECT id FROM containers WHERE sandbox_id = ? ORDER BY id').pluck();
    const del = db.prepare('DELETE FROM containers WHERE id = ?');
    containers = {
      stopAll: async (pod) => void host.steps.push(`stop all of ${pod}`),
      removeAll: async (pod) => {
        host.steps.push(`remove all of ${pod}`);
        for (const c of ofPod.all(pod)) {
          host.steps.push(`remove ${c}`);
          del.run(c);
        }
      },
    };
    svc = service();
    return { add: (pod, name) => void insert.run(name, pod, name) };
  }

  it('removes a running pod in one pass: its containers, then its network, shm and namespaces, each once', async () => {
    const rows = containerRows();
    const id = await svc.run(spec());
    rows.add(id, 'c1');
    rows.add(id, 'c2');
    host.steps.length = 0;
    await svc.remove(id);
    const nsDir = join(dir, 'state', 'ns', id);
    assert.deepEqual(host.steps, [`remove all of ${id}`, 'remove c1', 'remove c2', `DEL ${id}`, `umount shm ${join(svc.podDir(id), 'shm')}`, `rmns ${nsDir}`]);
    assert.equal(repo.get(id), undefined);
    assert.deepEqual([host.pins.size, host.shm.size, existsSync(svc.podDir(id)), existsSync(nsDir)], [0, 0, false, false]);
    await svc.remove(id);
    assert.equal(host.steps.length, 6, 'a second remove does nothing');
  });

  it('removes a stopped pod without a second release: its stopped containers, once', async () => {
    const rows = containerRows();
    const id = await svc.run(spec());
    rows.add(id, 'c1');
    await svc.stop(id);
    host.steps.length = 0;
    await svc.remove(id);
    assert.deepEqual(host.steps, [`remove all of ${id}`, 'remove c1']);
    assert.equal(repo.get(id), undefined);
  });

  it('removes a container whose creation raced the pod removal (its row came after the release listed the containers)', async () => {
    const rows = containerRows();
    const id = await svc.run(spec());
    host.onDel = () => rows.add(id, 'late');
    host.steps.length = 0;
    await svc.remove(id);
    assert.deepEqual(
      host.steps.filter((c) => c.startsWith('remove')),
      [`remove all of ${id}`, `remove all of ${id}`, 'remove late'],
    );
    assert.equal(repo.get(id), undefined);
  });

  it('recovery: a pod that lost its pins (a reboot) becomes NOTREADY with its network released; leftovers go', async () => {
    const id = await svc.run(spec());
    await svc.close();
    host.pins.clear();
    host.calls.length = 0;
    mkdirSync(join(dir, 'root', 'sandboxes', 'stray'), { recursive: true });
    svc = service();
    await svc.recover();
    const rec = repo.get(id)!;
    assert.deepEqual([rec.state, rec.network, rec.nsDir], ['notready', null, null]);
    assert.deepEqual(host.calls, [`DEL berth ${id} netns= prev=yes`], 'DEL runs with an empty netns when the pin is gone');
    assert.equal(existsSync(join(dir, 'root', 'sandboxes', 'stray')), false);
  });
});
