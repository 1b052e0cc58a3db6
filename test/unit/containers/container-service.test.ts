/**
 * ContainerService's lifecycle (create, start, stop, remove, recovery) as any user: the
 * real repositories and SandboxService over a database in a temp dir, and small fakes
 * behind the seams that touch the system: a fake Shim, a fake OciRuntime, a fake image
 * layer and a rootfs mounter that only records. The same paths against real conmon,
 * runc and overlay mounts are in test/e2e/containers.test.ts.
 */
import assert from 'node:assert/strict';
import { EventEmitter, once } from 'node:events';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BerthError } from '../../../src/common/errors.js';
import { createLogger } from '../../../src/common/logger.js';
import { defaultConfig } from '../../../src/config/schema.js';
import { ContainerRepository, type ContainerFacts } from '../../../src/containers/container-repository.js';
import { ContainerService, type RootfsMounter } from '../../../src/containers/container-service.js';
import type { ImageRecord } from '../../../src/images/image-repository.js';
import type { ImageService } from '../../../src/images/image-service.js';
import { OciRuntimes, type OciRuntime } from '../../../src/oci/oci-runtime.js';
import { SandboxRepository, type PodFacts } from '../../../src/sandbox/sandbox-repository.js';
import { SandboxService } from '../../../src/sandbox/sandbox-service.js';
import type { Shim, ShimCreateOptions, ShimHandle } from '../../../src/shim/shim.js';
import { openDatabase, type Db } from '../../../src/store/database.js';
import { containerFactsV1, podFactsV1 } from '../../../src/store/typed-records-v6.js';
import { config, image } from '../../helpers/container-spec.js';
import { until } from '../../helpers/berthd.js';

const POD = 'b'.repeat(64);
const imageSpec = { annotations: {}, userSpecifiedImage: 'busybox', runtimeHandler: '' };
const log = createLogger('error', () => undefined);

/** The runtime's view of one container: what `state` reports. */
interface FakeProcess {
  status: 'created' | 'running' | 'stopped';
  pid: number;
}

/** An OciRuntime that keeps its containers in memory; a kill ends the process unless told to ignore it. */
class FakeRuntime {
  readonly handler = 'fake';
  readonly calls: string[] = [];
  readonly procs = new Map<string, FakeProcess>();
  /** Signals the fake process ignores (a container that traps SIGTERM). */
  ignore = new Set<string>();
  constructor(private readonly shim: FakeShim) {}

  async start(id: string): Promise<void> {
    this.calls.push(`start ${id}`);
    const p = this.procs.get(id);
    if (!p) throw new BerthError('NotFound', `fake start ${id}: container does not exist`);
    p.status = 'running';
  }
  async kill(id: string, signal: string | number, all = false): Promise<void> {
    // The lifecycle sends the stop signal as a number and SIGKILL by name.
    const name = signal === 15 ? 'TERM' : signal === 9 ? 'KILL' : String(signal);
    this.calls.push(`kill ${id} ${name}${all ? ' all' : ''}`);
    const p = this.procs.get(id);
    if (!p || p.status === 'stopped' || this.ignore.has(name)) return;
    p.status = 'stopped';
    this.shim.exit(id, name === 'KILL' ? 137 : 143);
  }
  async delete(id: string, force = false): Promise<void> {
    this.calls.push(`delete ${id}${force ? ' force' : ''}`);
    this.procs.delete(id);
  }
  async state(id: string): Promise<{ status: string; pid: number } | undefined> {
    return this.procs.get(id);
  }
}

/** A Shim whose containers exist in a FakeRuntime; exits are recorded like conmon's exit files. */
class FakeShim extends EventEmitter {
  runtime!: FakeRuntime;
  readonly created: ShimCreateOptions[] = [];
  readonly exits = new Map<string, number>();
  readonly shimsAlive = new Set<string>();
  readonly removed: string[] = [];
  /** When set, create fails with it after the bundle is ready (a runtime create failure). */
  failCreate: Error | undefined;

  /** The container's process exited with `code`: the exit file appears. */
  exit(id: string, code: number): void {
    this.exits.set(id, code);
    this.emit(`exit:${id}`, code);
  }

  async create(o: ShimCreateOptions): Promise<ShimHandle> {
    this.created.push(o);
    await o.bundleReady;
    if (this.failCreate) throw this.failCreate;
    assert.ok(existsSync(join(o.bundle, 'config.json')), 'the bundle is complete before the runtime creates');
    this.runtime.procs.set(o.id, { status: 'created', pid: 4242 });
    this.shimsAlive.add(o.id);
    return { id: o.id, pid: 4242, shimPid: 4243 };
  }
  async exitCode(id: string): Promise<number | undefined> {
    return this.exits.get(id);
  }
  async waitExit(id: string, signal?: AbortSignal): Promise<number> {
    const code = this.exits.get(id);
    if (code !== undefined) return code;
    const [got] = (await once(this, `exit:${id}`, signal ? { signal } : {})) as [number];
    return got;
  }
  alive(id: string): boolean {
    return this.shimsAlive.has(id);
  }
  async oomKilled(): Promise<boolean> {
    return false;
  }
  async removeFiles(c: { id: string }): Promise<void> {
    this.removed.push(c.id);
  }
  /** A creation cut off by a crash: its conmon would be killed here. */
  async abandon(c: { id: string }): Promise<void> {
    this.shimsAlive.delete(c.id);
  }
}

describe('containers: ContainerService with a fake shim and runtime', () => {
  let dir: string;
  let db: Db;
  let repo: ContainerRepository;
  let sandboxes: SandboxService;
  let shim: FakeShim;
  let rt: FakeRuntime;
  let svc: ContainerService;
  let mounted: Set<string>;
  let layers: Set<string>;
  /** What was asked of the image service (finds, stop signals). */
  const imageReads: string[] = [];
  /** The image's STOPSIGNAL, as the image service reports it. */
  let imageStopSignal = '';
  const img: ImageRecord = {
    id: `sha256:${'1'.repeat(64)}`,
    manifestDigest: `sha256:${'2'.repeat(64)}`,
    config: image({ cmd: ['sleep', '60'] }),
    size: 1,
    pinned: false,
    createdAt: 0,
    tags: ['docker.io/library/busybox:latest'],
    digests: [],
    layers: [],
  };

  function service(): ContainerService {
    const cfg = { ...defaultConfig(), root: join(dir, 'root'), state: join(dir, 'state') };
    const rootfs: RootfsMounter = {
      // The overlay would show the image's files; /etc/passwd and /etc/group are read from it.
      mount: async (path) => {
        mkdirSync(join(path, 'etc'), { recursive: true });
        writeFileSync(join(path, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
        writeFileSync(join(path, 'etc', 'group'), 'root:x:0:\n');
        mounted.add(path);
      },
      unmount: async (path) => void mounted.delete(path),
    };
    const images = {
      find: (ref: string) => (imageReads.push(`find ${ref}`), ref === 'busybox' || ref === img.id ? img : undefined),
      stopSignalOf: (id: string) => (imageReads.push(`stop signal ${id}`), id === img.id ? imageStopSignal : undefined),
      prepareContainerLayer: async (id: string) => {
        layers.add(id);
        return { options: `lowerdir=/l,upperdir=/u/${id},workdir=/w/${id}` };
      },
      removeContainerLayer: async (id: string) => void layers.delete(id),
    } as unknown as ImageService;
    return new ContainerService({
      config: cfg,
      repo,
      sandboxes,
      images,
      runtimes: new OciRuntimes([rt as unknown as OciRuntime], 'fake'),
      shim: shim as unknown as Shim,
      log,
      host: { appArmorEnabled: false, minOomScoreAdj: 0, selinuxEnabled: false },
      rootfs,
    });
  }

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-ctr-svc-'));
    db = openDatabase(join(dir, 'berth.db'));
    const pods = new SandboxRepository(db);
    const podConfig = { log_directory: join(dir, 'logs') };
    pods.insert(POD, { name: 'p', namespace: 'ns', uid: 'u', attempt: 0 }, podFactsV1(podConfig, 'p') as unknown as PodFacts, podConfig, 'fake', '1');
    pods.update(POD, () => ({ state: 'ready' }));
    repo = new ContainerRepository(db);
    mounted = new Set();
    layers = new Set();
    shim = new FakeShim();
    rt = new FakeRuntime(shim);
    shim.runtime = rt;
    const cfg = { ...defaultConfig(), root: join(dir, 'root'), state: join(dir, 'state') };
    sandboxes = new SandboxService({
      config: cfg,
      repo: pods,
      runtimes: new OciRuntimes([rt as unknown as OciRuntime], 'fake'),
      shim: shim as unknown as Shim,
      containers: { stopAll: async () => {}, removeAll: async () => {} },
      log,
    });
    // The pod's files, as sandbox/pod-files.ts writes them at RunPodSandbox.
    const podDir = sandboxes.podDir(POD);
    mkdirSync(podDir, { recursive: true });
    writeFileSync(join(podDir, 'hostname'), 'p\n');
    svc = service();
  });

  afterEach(async () => {
    svc.close();
    await sandboxes.close();
    db.close();
    await rm(dir, { recursive: true, force: true });
  });

  const create = (name = 'c', over = {}): Promise<string> =>
    svc.create({
      sandboxId: POD,
      name,
      attempt: 0,
      image: 'busybox',
      logPath: `${name}.log`,
      config: config({ ...over }),
      imageSpec,
      raw: { metadata: { name } },
    });

  it('creates: a row in created with the shim pids, a bundle with the spec, a layer and a mounted rootfs', async () => {
    const id = await create();
    const c = repo.get(id)!;
    assert.deepEqual([c.state, c.pid, c.shimPid, c.logPath], ['created', 4242, 4243, join(dir, 'logs', 'c.log')]);
    const bundle = join(dir, 'root', 'containers', id);
    const spec = JSON.parse(await readFile(join(bundle, 'config.json'), 'utf8')) as { process: { args: string[] }; root: { path: string } };
    assert.deepEqual(spec.process.args, ['sleep', '60']);
    assert.equal(spec.root.path, join(bundle, 'rootfs'));
    assert.deepEqual([...mounted], [join(bundle, 'rootfs')]);
    assert.deepEqual([...layers], [id]);
    assert.equal(shim.created[0]!.logPath, join(dir, 'logs', 'c.log'));
    assert.deepEqual(
      svc.list().map((x) => x.id),
      [id],
    );
  });

  it('rolls a failed shim create back: no row, no bundle, no layer, no mount, the runtime state deleted', async () => {
    shim.failCreate = new BerthError('Internal', 'fake runtime create failed: exec: "nope": not found');
    await assert.rejects(create(), { kind: 'Internal', message: /fake runtime create failed/ });
    const id = shim.created[0]!.id;
    assert.equal(repo.get(id), undefined, 'the repository row is gone');
    assert.deepEqual(repo.list(), []);
    assert.equal(existsSync(join(dir, 'root', 'containers', id)), false, 'the bundle is gone');
    assert.deepEqual([...layers], []);
    assert.deepEqual([...mounted], []);
    assert.ok(rt.calls.includes(`delete ${id} force`), rt.calls.join('; '));
    assert.deepEqual(shim.removed, [id]);
  });

  it('refuses before making anything: a pod not ready, an image not pulled, a name taken', async () => {
    await assert.rejects(svc.create({ sandboxId: POD, name: 'x', attempt: 0, image: 'nope', logPath: '', config: config(), imageSpec, raw: {} }), {
      kind: 'NotFound',
      message: 'image "nope" not found; pull it first',
    });
    const id = await create('dup');
    await assert.rejects(create('dup'), { kind: 'AlreadyExists', message: new RegExp(`already exists in pod ${POD} as ${id}`) });
    await assert.rejects(svc.create({ sandboxId: 'nopod', name: 'x', attempt: 0, image: 'busybox', logPath: '', config: config(), imageSpec, raw: {} }), {
      kind: 'NotFound',
    });
    assert.equal(shim.created.length, 1);
  });

  it('starts, and records the exit the shim reports while running', async () => {
    const id = await create();
    await svc.start(id);
    assert.equal(repo.get(id)!.state, 'running');
    await svc.start(id);
    assert.deepEqual(
      rt.calls.filter((x) => x.startsWith('start')),
      [`start ${id}`],
      'a retried start of a running container succeeds without starting it again',
    );
    shim.exit(id, 3);
    const c = await until(async () => (repo.get(id)!.state === 'exited' ? repo.get(id) : undefined));
    assert.deepEqual([c.exitCode, c.reason, c.pid], [3, 'Error', 0]);
    await assert.rejects(svc.start(id), { kind: 'FailedPrecondition', message: /is exited; only a created container can be started/ });
  });

  it('stops a running container with its stop signal; stopping again succeeds', async () => {
    const id = await create();
    await svc.start(id);
    await svc.stop(id, 10);
    const c = repo.get(id)!;
    assert.deepEqual([c.state, c.exitCode, c.reason], ['exited', 143, 'Error']);
    assert.ok(rt.calls.includes(`kill ${id} TERM`), rt.calls.join('; '));
    assert.ok(!rt.calls.some((x) => x.startsWith(`kill ${id} KILL`)), 'no SIGKILL after a timely exit');
    await svc.stop(id, 10);
    assert.equal(repo.get(id)!.exitCode, 143);
  });

  it("stops with the signal decided at creation, reading nothing of the image; asks only the image's STOPSIGNAL of a container without one", async () => {
    const id = await create();
    await svc.start(id);
    imageReads.length = 0;
    await svc.stop(id, 10);
    assert.deepEqual(imageReads, [], 'the stop signal recorded at creation decides');
    assert.ok(rt.calls.includes(`kill ${id} TERM`), rt.calls.join('; '));
    // A container whose stop signal was not recorded (made by an older berthd).
    const old = await create('old');
    await svc.start(old);
    repo.updateFacts(old, () => ({ stopSignal: null }));
    imageStopSignal = 'SIGQUIT';
    imageReads.length = 0;
    try {
      await svc.stop(old, 10);
    } finally {
      imageStopSignal = '';
    }
    assert.deepEqual(imageReads, [`stop signal ${img.id}`], 'no image record read, only its stop signal');
    assert.ok(rt.calls.includes(`kill ${old} 3`), rt.calls.join('; '));
  });

  it('kills a container that ignores its stop signal once the timeout is over', async () => {
    const id = await create('k');
    await svc.start(id);
    rt.ignore.add('TERM');
    await svc.stop(id, 1);
    assert.deepEqual([repo.get(id)!.state, repo.get(id)!.exitCode], ['exited', 137]);
    assert.ok(rt.calls.includes(`kill ${id} KILL all`), rt.calls.join('; '));
  });

  it('removes a running container: killed, runtime state, rootfs, layer, shim files, bundle and row gone', async () => {
    const id = await create();
    await svc.start(id);
    await svc.remove(id);
    assert.equal(repo.get(id), undefined);
    assert.deepEqual([[...mounted], [...layers]], [[], []]);
    assert.ok(rt.calls.includes(`kill ${id} KILL all`) && rt.calls.includes(`delete ${id} force`), rt.calls.join('; '));
    assert.equal(existsSync(join(dir, 'root', 'containers', id)), false);
    await svc.remove(id);
  });

  it('recovery: an exit while down is recorded; a container without shim, state or exit file becomes UNKNOWN', async () => {
    const exitedWhileDown = await create('a');
    const lost = await create('b');
    for (const id of [exitedWhileDown, lost]) await svc.start(id);
    svc.close();
    // berthd is down: one container exits with its shim there to write the code; the other
    // loses its shim and then its runtime state.
    rt.procs.get(exitedWhileDown)!.status = 'stopped';
    shim.exits.set(exitedWhileDown, 0);
    shim.shimsAlive.delete(lost);
    rt.procs.delete(lost);
    svc = service();
    await svc.recover();
    assert.deepEqual([repo.get(exitedWhileDown)!.state, repo.get(exitedWhileDown)!.exitCode, repo.get(exitedWhileDown)!.reason], ['exited', 0, 'Completed']);
    const l = repo.get(lost)!;
    assert.deepEqual([l.state, l.reason], ['unknown', 'Unknown']);
    assert.match(l.message, /no exit code was recorded \(its shim died\)/);
    // StopContainer of a lost container: EXITED with the unknown exit code, at once.
    await svc.stop(lost, 30);
    assert.deepEqual([repo.get(lost)!.state, repo.get(lost)!.exitCode], ['exited', 255]);
  });

  it('recovery finishes a creation cut short by a crash: the creating row and what it made are removed', async () => {
    const id = await create();
    repo.delete(id);
    repo.insert({
      id,
      sandboxId: POD,
      name: 'c',
      attempt: 0,
      imageId: img.id,
      imageRef: 'busybox',
      facts: containerFactsV1({}) as unknown as ContainerFacts,
      request: {},
      logPath: '/l',
      createdAt: '1',
    });
    await svc.recover();
    assert.equal(repo.get(id), undefined);
    assert.deepEqual([[...mounted], [...layers]], [[], []]);
  });
});
