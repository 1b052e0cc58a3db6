/**
 * kill -9 of berthd at every step of the lifecycle RPCs (create, start, stop, remove of a
 * container; run, stop, remove of a pod): a preload (test/helpers/kill-point.ts) kills
 * berthd at the start or end of the n-th step it publishes on its trace points, for
 * n = 1, 2, … until the RPC runs through. After each kill a new berthd on the same dirs
 * must list every container and pod that exists in the state the runtime really has,
 * leave nothing it does not list (process, mount, netns pin, cgroup, file), and accept
 * the client's retry of the RPC.
 *
 * PullImage is killed at each of its steps (resolve, each layer's fetch and unpack, the
 * image record's commit) and part-way through fetches and unpacks; after each restart no
 * temp file, untracked blob or snapshot directory, or half-unpacked snapshot may remain,
 * an image that is listed must run a container, and the client's re-pull must succeed.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { buildImage, buildLayer, busyboxEntries, RegistryPusher, type StreamedContent } from '../../hack/test-images/oci.js';
import { Berthd } from '../helpers/berthd.js';
import { runCleanup, type CleanupStep } from '../helpers/cleanup.js';
import { useFixtureRegistry } from '../helpers/fixtures.js';
import { testBridge } from '../helpers/network.js';
import { startRegistryProxy } from '../helpers/registry.js';
import { runToExit } from '../helpers/run-container.js';

const PRELOAD = fileURLToPath(new URL('../helpers/kill-point.js', import.meta.url));
/** Bound on the steps of one RPC, should an RPC never run through. */
const MAX_STEPS = 40;

describe('kill points', function () {
  this.timeout(900_000);
  const reg = useFixtureRegistry();
  const cleanup: CleanupStep[] = [];
  afterEach(() => runCleanup(cleanup));

  const ls = (d: string): string[] => (existsSync(d) ? readdirSync(d).sort() : []);
  const procsOf = (b: Berthd): Array<{ pid: number; argv: string[] }> =>
    readdirSync('/proc')
      .filter((p) => /^\d+$/.test(p) && Number(p) !== b.proc.pid)
      .flatMap((p) => {
        try {
          const argv = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
          return argv.some((a) => a.includes(b.dir)) ? [{ pid: Number(p), argv }] : [];
        } catch {
          return [];
        }
      });
  const mountsUnder = (d: string): string[] =>
    readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[4] ?? '')
      .filter((m) => m.startsWith(d + '/'));
  function cgroupsOf(id: string): string[] {
    const out: string[] = [];
    for (const root of ['/sys/fs/cgroup/memory', '/sys/fs/cgroup/unified', '/sys/fs/cgroup'].filter((d) => existsSync(d)).slice(0, 2)) {
      try {
        for (const e of readdirSync(root, { recursive: true }) as string[]) if (e.endsWith(id) || e.includes(`${id}.scope`)) out.push(join(root, e));
      } catch {
        // a cgroup went away during the walk
      }
    }
    return out;
  }
  const runcState = (b: Berthd, id: string): string => {
    try {
      const out = execFileSync('runc', ['--root', join(b.state, 'runtime', 'runc'), 'state', id], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      return (JSON.parse(out) as { status: string }).status;
    } catch {
      return 'none';
    }
  };

  /** Every object berth lists is as the runtime has it, and nothing exists that berth does not list. */
  async function assertConsistent(b: Berthd, seen: Set<string>, what: string): Promise<void> {
    const ctrs = (await b.runtime.ListContainers({})).containers;
    const pods = (await b.runtime.ListPodSandbox({})).items;
    const ids = new Set([...ctrs.map((c) => c.id), ...pods.map((p) => p.id)]);
    const expect: Record<string, string[]> = {
      CONTAINER_CREATED: ['created'],
      CONTAINER_RUNNING: ['running'],
      CONTAINER_EXITED: ['stopped', 'none'],
      CONTAINER_UNKNOWN: ['stopped', 'none'],
    };
    for (const c of ctrs) {
      const st = runcState(b, c.id);
      assert.ok(expect[c.state]!.includes(st), `${what}: container ${c.id.slice(0, 12)} is listed ${c.state}, the runtime has it ${st}`);
    }
    const unlisted = (xs: string[]) => xs.filter((x) => !ids.has(x));
    assert.deepEqual(unlisted(ls(join(b.state, 'runtime', 'runc'))), [], `${what}: runtime states of unlisted containers`);
    assert.deepEqual(unlisted(ls(join(b.root, 'containers'))), [], `${what}: bundles of unlisted containers`);
    assert.deepEqual(unlisted(ls(join(b.state, 'conmon'))), [], `${what}: shim dirs of unlisted containers`);
    assert.deepEqual(unlisted(ls(join(b.state, 'ns'))), [], `${what}: namespace pins of unlisted pods`);
    assert.deepEqual(unlisted(ls(join(b.root, 'sandboxes'))), [], `${what}: dirs of unlisted pods`);
    const live = new Set(ctrs.filter((c) => c.state === 'CONTAINER_CREATED' || c.state === 'CONTAINER_RUNNING').map((c) => c.id));
    const strays = procsOf(b).filter((p) => {
      const cid = p.argv[p.argv.indexOf('--cid') + 1];
      return !(p.argv.includes('--cid') && cid !== undefined && (live.has(cid) || pods.some((x) => x.id === cid)));
    });
    assert.deepEqual(
      strays.map((p) => p.argv.join(' ').slice(0, 160)),
      [],
      `${what}: processes that are no listed container's shim`,
    );
    const mounts = mountsUnder(b.dir).filter((m) => !ids.has(/\/([0-9a-f]{64})(\/|$)/.exec(m)?.[1] ?? '') && !m.includes('/snapshots/'));
    assert.deepEqual(mounts, [], `${what}: mounts of unlisted objects`);
    for (const p of pods.filter((x) => x.state === 'SANDBOX_READY'))
      assert.ok(existsSync(join(b.state, 'ns', p.id, 'net')), `${what}: ready pod ${p.id} has its netns`);
    const cgroups = [...seen].filter((id) => !ids.has(id)).flatMap(cgroupsOf);
    assert.deepEqual(cgroups, [], `${what}: cgroups of unlisted containers`);
  }

  interface Round<T> {
    /** Makes what the RPC works on; runs on a berthd that is not armed. */
    prepare(b: Berthd): Promise<T>;
    /** The RPC, as a client sends it (and sends it again after a failure). */
    rpc(b: Berthd, t: T): Promise<unknown>;
    /** After the retry: what must be true. */
    after?(b: Berthd, t: T): Promise<void>;
  }

  /**
   * Runs `round` with berthd killed at step 1, 2, … of its RPC (after `prepare`), each
   * followed by a restart, the consistency check, the retried RPC, and the clean-up of
   * everything but the base pod.
   */
  async function everyStep<T>(name: string, round: Round<T>): Promise<string[]> {
    const killDir = mkdtempSync(join(tmpdir(), 'berth-kill-'));
    cleanup.push(() => rmSync(killDir, { recursive: true, force: true }));
    const file = join(killDir, 'arm');
    const opts = { nodeArgs: ['--import', PRELOAD], env: { BERTH_KILL_POINT_FILE: file } };
    let b = await Berthd.start(opts);
    cleanup.push(() => b.dispose());
    const net = testBridge(b, 'kp');
    cleanup.push(net.remove);
    const logDir = mkdtempSync(join(tmpdir(), 'berth-logs-'));
    cleanup.push(() => rmSync(logDir, { recursive: true, force: true }));
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    const seen = new Set<string>();
    const hits: string[] = [];
    for (let n = 1; n <= MAX_STEPS; n++) {
      const t = await round.prepare(b);
      writeFileSync(file, `${name}-${n} ${n}`);
      const res = await round.rpc(b, t).then(
        () => undefined,
        (err: unknown) => err,
      );
      rmSync(file, { force: true });
      const hit = existsSync(`${file}.hit`) ? readFileSync(`${file}.hit`, 'utf8') : undefined;
      if (hit === undefined) {
        assert.equal(res, undefined, `${name}: the RPC runs through when not killed`);
        await round.after?.(b, t);
        await resetTo(b, logDir);
        return hits;
      }
      rmSync(`${file}.hit`);
      hits.push(hit.slice(0, 60));
      for (const id of hit.match(/[0-9a-f]{64}/g) ?? []) seen.add(id);
      for (const id of ls(join(b.root, 'containers'))) seen.add(id);
      const dir = b.dir;
      await b.stop('SIGKILL');
      b = await Berthd.start({ ...opts, reuse: { dir } });
      const what = `${name}, killed at step ${n} (${hit.slice(0, 100)})`;
      await assertConsistent(b, seen, what);
      await round.rpc(b, t).catch((err: Error) => assert.fail(`${what}: the retried RPC failed: ${err.message}`));
      await round.after?.(b, t);
      await assertConsistent(b, seen, `${what}, after the retry`);
      await resetTo(b, logDir);
    }
    assert.fail(`${name}: the RPC did not run through within ${MAX_STEPS} steps`);
  }

  /** Removes every pod (and so every container). */
  async function resetTo(b: Berthd, _logDir: string): Promise<void> {
    for (const p of (await b.runtime.ListPodSandbox({})).items) {
      await b.runtime.StopPodSandbox({ pod_sandbox_id: p.id });
      await b.runtime.RemovePodSandbox({ pod_sandbox_id: p.id });
    }
  }

  let podSeq = 0;
  const podCfg = (): Record<string, unknown> => {
    const i = podSeq++;
    return {
      metadata: { name: `kp${i}`, namespace: 'test', uid: `kp-${process.pid}-${i}`, attempt: 0 },
      hostname: `kp${i}`,
      log_directory: mkdtempSync(join(tmpdir(), 'berth-kp-logs-')),
      linux: { security_context: { namespace_options: { pid: 'CONTAINER' } } },
    };
  };
  const runPod = async (b: Berthd) => {
    const cfg = podCfg();
    cleanup.push(() => rmSync(cfg.log_directory as string, { recursive: true, force: true }));
    return { cfg, id: (await b.runtime.RunPodSandbox({ config: cfg as never })).pod_sandbox_id };
  };
  const ctrCfg = (name: string) => ({
    metadata: { name, attempt: 0 },
    image: { image: reg.fx.busybox.ref },
    command: ['sleep', '1000'],
    log_path: `${name}.log`,
  });
  const createIn = async (b: Berthd, pod: { cfg: Record<string, unknown>; id: string }) =>
    (await b.runtime.CreateContainer({ pod_sandbox_id: pod.id, config: ctrCfg('c') as never, sandbox_config: pod.cfg as never })).container_id;
  const stateOf = async (b: Berthd, id: string) => (await b.runtime.ContainerStatus({ container_id: id })).status!.state;

  it('CreateContainer', async () => {
    const hits = await everyStep('create', {
      prepare: runPod,
      // A retry after a kill: the container exists whole (AlreadyExists names it) or not at all.
      rpc: async (b, pod) => {
        const listed = (await b.runtime.ListContainers({ filter: { pod_sandbox_id: pod.id } })).containers;
        if (listed.length > 0) return;
        await createIn(b, pod);
      },
      after: async (b, pod) => {
        const [c] = (await b.runtime.ListContainers({ filter: { pod_sandbox_id: pod.id } })).containers;
        assert.equal(c?.state, 'CONTAINER_CREATED');
        await b.runtime.StartContainer({ container_id: c.id });
        assert.equal((await b.runtime.ExecSync({ container_id: c.id, cmd: ['true'], timeout: 10 })).exit_code, 0);
      },
    });
    console.log(`      (killed at: ${hits.join('; ')})`);
  });

  it('StartContainer', async () => {
    const hits = await everyStep('start', {
      prepare: async (b) => createIn(b, await runPod(b)),
      rpc: (b, id) => b.runtime.StartContainer({ container_id: id }),
      after: async (b, id) => {
        assert.equal(await stateOf(b, id), 'CONTAINER_RUNNING');
        const st = (await b.runtime.ContainerStatus({ container_id: id })).status!;
        assert.ok(BigInt(st.started_at) >= BigInt(st.created_at), 'started after created');
      },
    });
    console.log(`      (killed at: ${hits.join('; ')})`);
  });

  it('StopContainer and RemoveContainer', async () => {
    const started = async (b: Berthd) => {
      const id = await createIn(b, await runPod(b));
      await b.runtime.StartContainer({ container_id: id });
      return id;
    };
    const stops = await everyStep('stop', {
      prepare: started,
      rpc: (b, id) => b.runtime.StopContainer({ container_id: id, timeout: 0 }),
      after: async (b, id) => assert.equal(await stateOf(b, id), 'CONTAINER_EXITED'),
    });
    const removes = await everyStep('remove', {
      prepare: started,
      rpc: (b, id) => b.runtime.RemoveContainer({ container_id: id }),
      after: async (b, id) => assert.equal((await b.runtime.ListContainers({ filter: { id } })).containers.length, 0),
    });
    console.log(`      (stop killed at: ${stops.join('; ')}; remove killed at: ${removes.join('; ')})`);
  });

  it('RunPodSandbox, StopPodSandbox and RemovePodSandbox', async () => {
    const runs = await everyStep('run-pod', {
      prepare: async () => podCfg(),
      rpc: async (b, cfg) => {
        const uid = (cfg.metadata as { uid: string }).uid;
        if ((await b.runtime.ListPodSandbox({})).items.some((p) => p.metadata?.uid === uid && p.state === 'SANDBOX_READY')) return;
        await b.runtime.RunPodSandbox({ config: cfg as never });
      },
    });
    const withCtr = async (b: Berthd) => {
      const pod = await runPod(b);
      await b.runtime.StartContainer({ container_id: await createIn(b, pod) });
      return pod.id;
    };
    const stops = await everyStep('stop-pod', {
      prepare: withCtr,
      rpc: (b, id) => b.runtime.StopPodSandbox({ pod_sandbox_id: id }),
      after: async (b, id) => {
        assert.equal((await b.runtime.PodSandboxStatus({ pod_sandbox_id: id })).status!.state, 'SANDBOX_NOTREADY');
        for (const c of (await b.runtime.ListContainers({ filter: { pod_sandbox_id: id } })).containers) assert.equal(c.state, 'CONTAINER_EXITED');
      },
    });
    const removes = await everyStep('remove-pod', {
      prepare: withCtr,
      rpc: (b, id) => b.runtime.RemovePodSandbox({ pod_sandbox_id: id }),
      after: async (b, id) => assert.equal((await b.runtime.ListPodSandbox({ filter: { id } })).items.length, 0),
    });
    console.log(`      (run killed at: ${runs.join('; ')}; stop: ${stops.join('; ')}; remove: ${removes.join('; ')})`);
  });

  it('PullImage', async () => {
    const work = mkdtempSync(join(tmpdir(), 'berth-kp-image-'));
    cleanup.push(() => rmSync(work, { recursive: true, force: true }));
    // busybox, 16 MiB that does not compress (an unpack long enough to be cut part-way) and
    // a small zstd layer the proxy trickles (a fetch long enough to be cut part-way).
    const big: StreamedContent = {
      size: 16 << 20,
      *chunks() {
        for (let i = 0; i < 16; i++) yield randomBytes(1 << 20);
      },
    };
    const layers = [
      await buildLayer(busyboxEntries(), 'gzip'),
      await buildLayer([{ path: 'big.bin', type: 'file', content: big }], 'gzip', { file: join(work, 'big'), gzipLevel: 1 }),
      await buildLayer(
        [
          { path: 'small', type: 'directory' },
          { path: 'small/x.bin', type: 'file', content: randomBytes(256 << 10) },
        ],
        'zstd',
      ),
    ];
    const built = buildImage({ layers, config: { Cmd: ['sh'] } });
    const pusher = new RegistryPusher(reg.registry.host);
    try {
      await pusher.pushImage('kp/pull', built, ['latest']);
    } finally {
      pusher.close();
    }
    const proxy = await startRegistryProxy(reg.registry.host, { faults: [{ kind: 'trickle', bytesPerTick: 16 << 10, tickMs: 20, digest: layers[2]!.digest }] });
    cleanup.push(() => proxy.stop());
    const ref = `${proxy.host}/kp/pull:latest`;

    const killDir = mkdtempSync(join(tmpdir(), 'berth-kill-'));
    cleanup.push(() => rmSync(killDir, { recursive: true, force: true }));
    const file = join(killDir, 'arm');
    const opts = {
      nodeArgs: ['--import', PRELOAD],
      env: { BERTH_KILL_POINT_FILE: file, BERTH_KILL_POINTS: 'berth:image.pull,berth:image.fetch,berth:image.unpack,berth:db.write' },
      readyTimeoutMs: 60_000,
    };
    let b = await Berthd.start(opts);
    cleanup.push(() => b.dispose());

    const files = (d: string): string[] => (existsSync(d) ? (readdirSync(d, { recursive: true }) as string[]).sort() : []);
    /** What the database holds of the image stores. */
    const rows = (bd: Berthd) => {
      const db = new Database(join(bd.root, 'berth.db'), { readonly: true, fileMustExist: true });
      try {
        return {
          blobs: db
            .prepare<[], { digest: string }>('SELECT digest FROM blobs')
            .all()
            .map((r) => r.digest),
          snapshots: db.prepare<[], { id: number; kind: string }>('SELECT id, kind FROM snapshots').all(),
          images: db
            .prepare<[], { id: string }>('SELECT id FROM images')
            .all()
            .map((r) => r.id),
        };
      } finally {
        db.close();
      }
    };
    /** Runs a container of the image that reads a file of every layer. */
    const usable = async (bd: Berthd, what: string): Promise<void> => {
      const pod = podCfg();
      (pod.linux as { security_context: { namespace_options: Record<string, string> } }).security_context.namespace_options.network = 'NODE';
      cleanup.push(() => rmSync(pod.log_directory as string, { recursive: true, force: true }));
      const podId = (await bd.runtime.RunPodSandbox({ config: pod as never })).pod_sandbox_id;
      const id = (
        await bd.runtime.CreateContainer({
          pod_sandbox_id: podId,
          config: {
            metadata: { name: 'c', attempt: 0 },
            image: { image: ref },
            command: ['sh', '-c', 'test "$(wc -c < /big.bin)" -eq 16777216 && test "$(wc -c < /small/x.bin)" -eq 262144 && echo ok'],
            log_path: 'c.log',
          } as never,
          sandbox_config: pod as never,
        })
      ).container_id;
      const { code, out } = await runToExit(bd, id);
      assert.deepEqual({ code, out: out.trim() }, { code: 0, out: 'ok' }, `${what}: a container runs from the image`);
      await bd.runtime.StopPodSandbox({ pod_sandbox_id: podId });
      await bd.runtime.RemovePodSandbox({ pod_sandbox_id: podId });
    };
    /** After a restart: nothing half-done or untracked is left, and a listed image works. */
    const assertRecovered = async (bd: Berthd, what: string): Promise<void> => {
      assert.deepEqual(files(join(bd.root, 'content', 'ingest')), [], `${what}: download temp files`);
      assert.deepEqual(files(join(bd.root, 'content', 'trash')), [], `${what}: trash`);
      const r = rows(bd);
      assert.deepEqual(
        r.snapshots.filter((x) => x.kind !== 'committed'),
        [],
        `${what}: snapshots neither committed nor in use (half-unpacked)`,
      );
      assert.deepEqual(ls(join(bd.root, 'snapshots')), r.snapshots.map((x) => String(x.id)).sort(), `${what}: snapshot directories are those recorded`);
      assert.deepEqual(
        files(join(bd.root, 'content', 'blobs', 'sha256')),
        r.blobs.map((d) => d.slice('sha256:'.length)).sort(),
        `${what}: blobs are those recorded`,
      );
      assert.deepEqual(mountsUnder(bd.dir), [], `${what}: mounts`);
      assert.deepEqual(
        procsOf(bd).map((p) => p.argv.join(' ')),
        [],
        `${what}: processes`,
      );
      const listed = (await bd.image.ListImages({})).images.map((i) => i.id);
      assert.deepEqual(listed, r.images, `${what}: listed images are the recorded ones`);
      if (listed.includes(built.configBlob.digest)) await usable(bd, `${what}, listed after the restart`);
    };
    /** After RemoveImage: garbage collection finds everything, so nothing was untracked. */
    const assertEmpty = async (bd: Berthd, what: string): Promise<void> => {
      await bd.image.RemoveImage({ image: { image: ref } });
      assert.deepEqual(files(join(bd.root, 'snapshots')), [], `${what}: snapshot directories after RemoveImage`);
      assert.deepEqual(files(join(bd.root, 'content', 'blobs', 'sha256')), [], `${what}: blobs after RemoveImage`);
      assert.deepEqual(rows(bd), { blobs: [], snapshots: [], images: [] }, `${what}: rows after RemoveImage`);
    };

    const arms = [
      ...Array.from({ length: MAX_STEPS }, (_, i) => `pull-${i + 1} ${i + 1}`),
      `mid-fetch-trickled mid berth:image.fetch ${layers[2]!.digest}`,
      `mid-fetch-big mid berth:image.fetch ${layers[1]!.digest}`,
      `mid-unpack-big mid berth:image.unpack ${layers[1]!.digest}`,
      `mid-unpack-busybox mid berth:image.unpack ${layers[0]!.digest}`,
    ];
    const hits: string[] = [];
    let ranThrough = false;
    for (const arm of arms) {
      const numbered = !arm.includes(' mid ');
      if (numbered && ranThrough) continue;
      writeFileSync(file, arm);
      const res = await b.image.PullImage({ image: { image: ref } }).then(
        () => undefined,
        (err: unknown) => err,
      );
      rmSync(file, { force: true });
      const hit = existsSync(`${file}.hit`) ? readFileSync(`${file}.hit`, 'utf8') : undefined;
      if (hit === undefined) {
        assert.ok(numbered, `${arm}: the kill never came`);
        assert.equal(res, undefined, 'the pull runs through when not killed');
        await usable(b, 'not killed');
        await assertEmpty(b, 'not killed');
        ranThrough = true;
        continue;
      }
      rmSync(`${file}.hit`);
      const ctx = JSON.parse(hit.slice(hit.indexOf('{'))) as { digest?: string; table?: string };
      const layer = layers.findIndex((l) => l.digest === ctx.digest);
      hits.push(`${hit.split(' ').slice(0, 2).join(' ')}${layer >= 0 ? ` layer ${layer}` : ''}${ctx.table ? ` ${ctx.table}` : ''}`);
      const dir = b.dir;
      await b.stop('SIGKILL');
      b = await Berthd.start({ ...opts, reuse: { dir } });
      const what = `PullImage killed at ${arm.split(' ')[0]} (${hit.slice(0, 120)})`;
      await assertRecovered(b, what);
      await b.image.PullImage({ image: { image: ref } }).catch((err: Error) => assert.fail(`${what}: the re-pull failed: ${err.message}`));
      await usable(b, `${what}, re-pulled`);
      await assertEmpty(b, what);
    }
    assert.ok(ranThrough, `PullImage did not run through within ${MAX_STEPS} steps`);
    console.log(`      (killed at: ${hits.join('; ')})`);
  });
});
