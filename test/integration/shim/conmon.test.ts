/**
 * ConmonShim against the real conmon and runc of this machine (root only): a busybox
 * bundle built from the host's static busybox, containers that exit, get killed, fail
 * to create, and outlive the ConmonShim object that made them.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, rmdir, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { until } from '../../helpers/berthd.js';
import { BerthError } from '../../../src/common/errors.js';
import { OciRuntime } from '../../../src/oci/oci-runtime.js';
import { ConmonShim } from '../../../src/shim/conmon.js';
import type { ShimCreateOptions, ShimDirs } from '../../../src/shim/shim.js';

const CONMON = '/usr/bin/conmon';
const RUNC = '/usr/sbin/runc';
const BUSYBOX = '/bin/busybox';
const CGROUP_PARENT = 'berth-test';

const canRun = process.getuid?.() === 0 && [CONMON, RUNC, BUSYBOX].every((p) => existsSync(p));

interface Env {
  dir: string;
  runtimeRoot: string;
  exitDir: string;
  socketDir: string;
  dirs: ShimDirs;
  ids: string[];
}

/** What a test bundle is: the create options plus the shim's paths for it, to check. */
interface TestBundle extends ShimCreateOptions {
  exitDir: string;
  persistDir: string;
  socketDir: string;
}

let seq = 0;
function newId(): string {
  return `bt${process.pid}-${Date.now().toString(36)}-${seq++}`;
}

function spec(id: string, args: string[], opts: { pidNs?: boolean } = {}): unknown {
  const caps = [
    'CAP_CHOWN',
    'CAP_DAC_OVERRIDE',
    'CAP_FSETID',
    'CAP_FOWNER',
    'CAP_MKNOD',
    'CAP_NET_RAW',
    'CAP_SETGID',
    'CAP_SETUID',
    'CAP_SETFCAP',
    'CAP_SETPCAP',
    'CAP_NET_BIND_SERVICE',
    'CAP_SYS_CHROOT',
    'CAP_KILL',
    'CAP_AUDIT_WRITE',
  ];
  const namespaces = [{ type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, { type: 'network' }];
  if (opts.pidNs !== false) namespaces.unshift({ type: 'pid' });
  return {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: 0, gid: 0 },
      args,
      env: ['PATH=/bin'],
      cwd: '/',
      capabilities: { bounding: caps, effective: caps, permitted: caps },
      noNewPrivileges: true,
    },
    root: { path: 'rootfs', readonly: false },
    hostname: 'shim-test',
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc' },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620'] },
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    ],
    linux: {
      namespaces,
      cgroupsPath: `/${CGROUP_PARENT}/${id}`,
      maskedPaths: ['/proc/kcore', '/proc/keys'],
      readonlyPaths: ['/proc/sys', '/proc/sysrq-trigger'],
    },
  };
}

async function makeBundle(env: Env, id: string, args: string[], opts: { pidNs?: boolean } = {}): Promise<TestBundle> {
  const bundle = join(env.dir, 'bundles', id);
  await mkdir(join(bundle, 'rootfs', 'bin'), { recursive: true });
  await copyFile(BUSYBOX, join(bundle, 'rootfs', 'bin', 'busybox'));
  for (const applet of ['sh', 'sleep', 'echo', 'true']) await symlink('busybox', join(bundle, 'rootfs', 'bin', applet));
  await writeFile(join(bundle, 'config.json'), JSON.stringify(spec(id, args, opts)));
  env.ids.push(id);
  return {
    id,
    bundle,
    runtime: new OciRuntime({ handler: 'runc', path: RUNC, root: env.runtimeRoot }),
    logPath: join(env.dir, 'logs', id, '0.log'),
    exitDir: env.exitDir,
    persistDir: join(env.dirs.persistRoot, id),
    socketDir: env.socketDir,
    terminal: false,
    stdin: false,
    stdinOnce: false,
  };
}

/** pids of live conmon processes whose --cid is `id`. */
function conmonsFor(id: string): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      // Read in-process: a `cat` per process made one scan take 10 s on a loaded 2-core
      // machine, longer than the 5 s the tests wait for conmon to show.
      const argv = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
      const i = argv.indexOf('--cid');
      if (i >= 0 && argv[i + 1] === id && argv[0]?.endsWith('conmon')) out.push(Number(p));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

async function ppidOf(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // Fields after the parenthesised comm: state ppid …
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
}

async function vmRssKb(pid: number): Promise<number> {
  const m = /VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? NaN);
}

async function waitGone(pid: number, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    try {
      const st = await readFile(`/proc/${pid}/stat`, 'utf8');
      if (st.slice(st.lastIndexOf(')') + 2).startsWith('Z')) return;
    } catch {
      return;
    }
    await sleep(20);
  }
  throw new Error(`pid ${pid} still alive`);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

(canRun ? describe : describe.skip)('ConmonShim (root, real conmon and runc)', function () {
  this.timeout(60_000);
  let env: Env;
  let shim: ConmonShim;
  let rt: OciRuntime;

  beforeEach(async () => {
    const dir = await mkdtemp(join(tmpdir(), 'berth-shim-'));
    const dirs = { exitDir: join(dir, 'exits'), socketDir: join(dir, 'attach'), persistRoot: join(dir, 'conmon') };
    env = { dir, runtimeRoot: join(dir, 'runc'), exitDir: dirs.exitDir, socketDir: dirs.socketDir, dirs, ids: [] };
    shim = new ConmonShim({ conmonPath: CONMON, dirs });
    rt = new OciRuntime({ handler: 'runc', path: RUNC, root: env.runtimeRoot });
  });

  afterEach(async () => {
    for (const id of env.ids) {
      try {
        execFileSync(RUNC, ['--root', env.runtimeRoot, 'delete', '--force', id], { stdio: 'ignore', timeout: 10_000 });
      } catch {
        // not there
      }
      for (const pid of conmonsFor(id)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
      for (const ctrl of await readdir('/sys/fs/cgroup').catch(() => [])) {
        await rmdir(join('/sys/fs/cgroup', ctrl, CGROUP_PARENT, id)).catch(() => undefined);
      }
    }
    // The shared parent goes only when empty: other runs may use it too.
    for (const ctrl of await readdir('/sys/fs/cgroup').catch(() => [])) {
      await rmdir(join('/sys/fs/cgroup', ctrl, CGROUP_PARENT)).catch(() => undefined);
    }
    await rm(env.dir, { recursive: true, force: true });
  });

  it('creates, starts, records exit code 3 and writes CRI log lines; conmon is not our child', async () => {
    const o = await makeBundle(env, newId(), ['/bin/sh', '-c', 'echo hello; echo oops >&2; exit 3']);
    const h = await shim.create(o);
    assert.ok(h.pid > 0 && h.shimPid > 0);
    assert.notEqual(await ppidOf(h.shimPid), process.pid, 'conmon must be reparented away from berthd');
    assert.deepEqual(await rt.state(o.id), { status: 'created', pid: h.pid });
    assert.equal(await shim.exitCode(o.id), undefined);

    await rt.start(o.id);
    assert.equal(await shim.waitExit(o.id, AbortSignal.timeout(20_000)), 3);
    assert.equal(await shim.exitCode(o.id), 3);
    assert.equal((await readFile(join(o.persistDir, 'exit'), 'utf8')).trim(), '3');
    await waitGone(h.shimPid);

    const lines = (await readFile(o.logPath, 'utf8')).split('\n').filter((l) => l !== '');
    const ts = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}(Z|[+-]\d\d:\d\d) /;
    assert.ok(
      lines.every((l) => ts.test(l)),
      lines.join('\n'),
    );
    assert.deepEqual(lines.map((l) => l.replace(ts, '')).sort(), ['stderr F oops', 'stdout F hello']);

    assert.equal((await rt.state(o.id))?.status, 'stopped');
    await rt.delete(o.id);
    assert.equal(await rt.state(o.id), undefined);
    await rt.delete(o.id); // idempotent
    await rt.delete(o.id, true);

    assert.ok(existsSync(join(o.socketDir, o.id)), 'conmon leaves its attach link');
    await shim.removeFiles(o);
    await shim.removeFiles(o);
    assert.deepEqual(await readdir(o.socketDir), []);
    assert.deepEqual(await readdir(o.exitDir), []);
    assert.equal(existsSync(o.persistDir), false);
    assert.deepEqual((await readdir(o.bundle)).sort(), ['config.json', 'rootfs']);
    assert.ok(existsSync(o.logPath));
  });

  it('records 128+15 for a process killed by SIGTERM (host pid namespace) and 137 for SIGKILL of a pid-1 init', async () => {
    const o = await makeBundle(env, newId(), ['/bin/sleep', '1000'], { pidNs: false });
    await shim.create(o);
    await rt.start(o.id);
    assert.equal((await rt.state(o.id))?.status, 'running');
    await rt.kill(o.id, 'SIGTERM');
    assert.equal(await shim.waitExit(o.id, AbortSignal.timeout(20_000)), 143);

    // In its own pid namespace `sleep` is pid 1 and ignores TERM (no handler); KILL is forced.
    const p = await makeBundle(env, newId(), ['/bin/sleep', '1000']);
    await shim.create(p);
    await rt.start(p.id);
    await rt.kill(p.id, 9, true);
    assert.equal(await shim.waitExit(p.id, AbortSignal.timeout(20_000)), 137);
    await rt.delete(o.id);
    await rt.delete(p.id);
  });

  it("fails a create with runc's own message and leaves no conmon, runc state or files", async () => {
    const o = await makeBundle(env, newId(), ['/nonexistent-binary']);
    await assert.rejects(shim.create(o), (err: unknown) => {
      assert.ok(err instanceof BerthError);
      assert.match(err.message, /nonexistent-binary.*(no such file|not found)/i);
      console.log(`      runc's message: ${err.message}`);
      return true;
    });
    assert.deepEqual(conmonsFor(o.id), []);
    assert.equal(await rt.state(o.id), undefined);
    assert.equal(existsSync(o.persistDir), false, 'the persist dir create claimed is gone');
    assert.deepEqual(await readdir(o.exitDir), []);
    assert.deepEqual(await readdir(o.socketDir), []);
    assert.equal(existsSync(o.logPath), false);
    assert.deepEqual((await readdir(o.bundle)).sort(), ['config.json', 'rootfs']);
    for (const ctrl of ['memory', 'pids']) assert.equal(existsSync(join('/sys/fs/cgroup', ctrl, CGROUP_PARENT, o.id)), false);
  });

  it('fails clearly when the runtime binary is missing', async () => {
    const o = await makeBundle(env, newId(), ['/bin/true']);
    await assert.rejects(
      shim.create({ ...o, runtime: new OciRuntime({ handler: 'runc', path: '/nonexistent/runc', root: env.runtimeRoot }) }),
      /\/nonexistent\/runc.*(ENOENT|No such file)/,
    );
    assert.deepEqual(conmonsFor(o.id), []);
    assert.equal(existsSync(o.persistDir), false);
  });

  it('starts conmon before the bundle is ready and runs the runtime only once it is', async () => {
    const o = await makeBundle(env, newId(), ['/bin/true']);
    const config = await readFile(join(o.bundle, 'config.json'), 'utf8');
    await rm(join(o.bundle, 'config.json'));
    let ready = (): void => undefined;
    const creating = shim.create({ ...o, bundleReady: new Promise<void>((resolve) => (ready = resolve)) });
    await until(async () => (conmonsFor(o.id).length > 0 ? true : undefined), 5000);
    assert.equal(conmonsFor(o.id).length, 1, 'conmon waits on its start pipe');
    await sleep(200);
    assert.equal(await rt.state(o.id), undefined, 'no runtime create before the bundle is ready');
    await writeFile(join(o.bundle, 'config.json'), config);
    ready();
    const h = await creating;
    assert.deepEqual(await rt.state(o.id), { status: 'created', pid: h.pid });
    await rt.delete(o.id, true);
    await shim.removeFiles(o);
  });

  it('rejects with the reason of a failed bundle and leaves no conmon, runtime state or files', async () => {
    const o = await makeBundle(env, newId(), ['/bin/true']);
    const reason = new Error('mount failed');
    let fail = (_e: unknown): void => undefined;
    const creating = shim.create({ ...o, bundleReady: new Promise<void>((_resolve, reject) => (fail = reject)) });
    await until(async () => (conmonsFor(o.id).length > 0 ? true : undefined), 5000);
    fail(reason);
    await assert.rejects(creating, (err: unknown) => err === reason);
    // A conmon released by mistake would run runc and stay to monitor the container: conmon must exit.
    await until(async () => (conmonsFor(o.id).length === 0 ? true : undefined), 5000);
    assert.equal(await rt.state(o.id), undefined);
    assert.equal(existsSync(o.persistDir), false);
    assert.equal(existsSync(o.logPath), false);
    assert.deepEqual(await readdir(o.exitDir).catch(() => []), []);
    assert.deepEqual(await readdir(o.socketDir).catch(() => []), []);
    assert.deepEqual((await readdir(o.bundle)).sort(), ['config.json', 'rootfs']);
  });

  it('refuses bad ids and log paths with ":" before running anything', async () => {
    const o = await makeBundle(env, newId(), ['/bin/true']);
    await assert.rejects(shim.create({ ...o, id: '../x' }), { kind: 'InvalidArgument' });
    await assert.rejects(shim.create({ ...o, logPath: join(env.dir, 'a:b.log') }), { kind: 'InvalidArgument' });
    assert.deepEqual(conmonsFor(o.id), []);
  });

  it('gives up a create cut off by its signal and cleans up', async () => {
    const o = await makeBundle(env, newId(), ['/bin/true']);
    await assert.rejects(shim.create({ ...o, signal: AbortSignal.abort() }));
    await assert.rejects(shim.create({ ...o, timeoutMs: 1 }), { kind: 'DeadlineExceeded' });
    assert.deepEqual(conmonsFor(o.id), []);
    assert.equal(await rt.state(o.id), undefined);
  });

  it('leaves nothing when the deadline lands anywhere inside create', async () => {
    const outcomes: string[] = [];
    for (const ms of [5, 10, 20, 30, 40, 50, 60, 80]) {
      const o = await makeBundle(env, newId(), ['/bin/sleep', '1000']);
      try {
        await shim.create({ ...o, timeoutMs: ms });
        outcomes.push(`${ms}:created`);
        await rt.delete(o.id, true);
        await shim.removeFiles(o);
      } catch (err) {
        assert.ok(err instanceof BerthError && err.kind === 'DeadlineExceeded', String(err));
        outcomes.push(`${ms}:deadline`);
      }
      assert.deepEqual(conmonsFor(o.id), [], `conmon left after ${ms} ms`);
      assert.equal(await rt.state(o.id), undefined);
      assert.equal(existsSync(join(env.runtimeRoot, o.id)), false, `runc state dir left after ${ms} ms`);
      assert.deepEqual(await readdir(o.persistDir).catch(() => []), []);
      assert.deepEqual(await readdir(o.socketDir).catch(() => []), []);
      for (const ctrl of ['memory', 'pids', 'freezer']) {
        assert.equal(existsSync(join('/sys/fs/cgroup', ctrl, CGROUP_PARENT, o.id)), false, `${ctrl} cgroup left after ${ms} ms`);
      }
    }
    console.log(`      deadlines: ${outcomes.join(' ')}`);
  });

  it('lets a new ConmonShim (a restarted berthd) find and kill a container an older one made', async () => {
    const o = await makeBundle(env, newId(), ['/bin/sh', '-c', 'trap "exit 7" TERM; while true; do sleep 1; done']);
    const h = await new ConmonShim({ conmonPath: CONMON, dirs: env.dirs }).create(o);
    await rt.start(o.id);

    const later = new ConmonShim({ conmonPath: CONMON, dirs: env.dirs });
    assert.deepEqual(await rt.state(o.id), { status: 'running', pid: h.pid });
    assert.equal(await later.exitCode(o.id), undefined);
    await assert.rejects(later.create(o), { kind: 'AlreadyExists' });
    assert.equal((await rt.state(o.id))?.status, 'running', 'a refused create leaves the live container alone');
    const ac = new AbortController();
    const waiting = later.waitExit(o.id, ac.signal);
    // A TERM that lands before the shell has set its trap is ignored (it is the pid
    // namespace's init): send it until the container exits.
    const term = setInterval(() => void rt.kill(o.id, 'TERM').catch(() => undefined), 200);
    await rt.kill(o.id, 'TERM');
    try {
      assert.equal(await waiting, 7);
    } finally {
      clearInterval(term);
    }
    await rt.delete(o.id);
    await rt.delete(o.id);
  });

  it('waitExit rejects on abort; delete of a running container needs force', async () => {
    const o = await makeBundle(env, newId(), ['/bin/sleep', '1000']);
    await shim.create(o);
    await rt.start(o.id);
    await assert.rejects(shim.waitExit(o.id, AbortSignal.timeout(100)), { name: 'TimeoutError' });
    await assert.rejects(rt.delete(o.id), { kind: 'FailedPrecondition' });
    await rt.delete(o.id, true);
    assert.equal(await rt.state(o.id), undefined);
    assert.equal(await shim.waitExit(o.id, AbortSignal.timeout(20_000)), 137);
  });

  it('keeps conmon small: its RSS under 16 MiB per container (create+start latency reported)', async () => {
    const times: number[] = [];
    const rss: number[] = [];
    for (let i = 0; i < 3; i++) {
      const o = await makeBundle(env, newId(), ['/bin/sleep', '1000']);
      const t0 = performance.now();
      const h = await shim.create(o);
      await rt.start(o.id);
      times.push(performance.now() - t0);
      rss.push(await vmRssKb(h.shimPid));
      await rt.delete(o.id, true);
      assert.equal(await shim.waitExit(o.id, AbortSignal.timeout(20_000)), 137);
      await waitGone(h.shimPid);
    }
    console.log(`      create+start median ${median(times).toFixed(1)} ms (max ${Math.max(...times).toFixed(1)}); conmon VmRSS median ${median(rss)} kB`);
    for (const kb of rss) assert.ok(kb > 0 && kb < 16 * 1024, `conmon VmRSS ${kb} kB`);
  });
});
