/**
 * berth driven the way users drive a CRI runtime by hand: with crictl (cri-tools). Each
 * test runs the crictl binary against a real berthd's socket and checks what crictl
 * prints and how it exits. crictl is never built or installed by the repo: without it on
 * PATH the whole file is skipped, with the reason printed.
 *
 * Streaming (exec, attach, port-forward) goes through berth's SPDY server, as it does for kubelet.
 * `crictl events` (GetContainerEvents) and `crictl metricsp` (ListPodSandboxMetrics; crictl
 * has had it since 1.29, the version these tests were written against) are checked too.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { randomBytes } from 'node:crypto';
import { accessSync, constants, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { pushFixtures, type Fixtures } from '../../hack/test-images/oci.js';
import { Berthd, until } from '../helpers/berthd.js';
import { runCleanup, type CleanupStep } from '../helpers/cleanup.js';
import { testBridge, type TestBridge } from '../helpers/network.js';
import { startRegistry, type Registry } from '../helpers/registry.js';

/** crictl on PATH, or undefined. */
function findCrictl(): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue;
    const p = join(dir, 'crictl');
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

describe('crictl against berthd', function () {
  this.timeout(60_000);
  const crictlBin = findCrictl();
  let registry: Registry | undefined;
  let fx: Fixtures;
  let b: Berthd | undefined;
  let work: string;
  let net: TestBridge | undefined;
  const cleanup: CleanupStep[] = [];

  before(async function () {
    if (!crictlBin) {
      console.log('      (skipped: crictl is not on PATH; install cri-tools to run these tests — the repo never builds or installs it)');
      this.skip();
    }
    this.timeout(120_000);
    registry = await startRegistry();
    fx = await pushFixtures(registry.host);
    b = await Berthd.start();
    net = testBridge(b, 'bk');
    work = mkdtempSync(join(tmpdir(), 'berth-crictl-'));
    // Every test needs the image; the first one checks what `crictl pull` prints.
    await ok(['pull', fx.busybox.ref]);
  });

  after(async () => {
    try {
      if (b) {
        // Whatever a failed test left: crictl's own way to clean up, then the harness's leak check.
        await crictl(['rmp', '-fa']).catch(() => undefined);
        await b.dispose();
      }
    } finally {
      net?.remove();
      if (work) rmSync(work, { recursive: true, force: true });
      await registry?.stop();
    }
  });

  afterEach(() => runCleanup(cleanup));

  /** Runs crictl against berthd's socket; resolves with its exit code and output (never rejects on a non-zero exit). */
  function crictl(args: string[], opts: { timeoutMs?: number; onStdout?: (all: string) => void; input?: string } = {}): Promise<Run> {
    const sock = `unix://${b!.socket}`;
    const t0 = Date.now();
    return new Promise((resolve, reject) => {
      const child = spawn(crictlBin!, ['--runtime-endpoint', sock, '--image-endpoint', sock, '--timeout', '20s', ...args], {
        stdio: [opts.input !== undefined ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      });
      if (opts.input !== undefined) child.stdin!.end(opts.input);
      let stdout = '';
      let stderr = '';
      child.stdout!.on('data', (d: Buffer) => {
        stdout += d.toString();
        opts.onStdout?.(stdout);
      });
      child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`crictl ${args.join(' ')} did not finish within ${opts.timeoutMs ?? 30_000} ms\nstdout: ${stdout}\nstderr: ${stderr}`));
      }, opts.timeoutMs ?? 30_000);
      child.once('error', reject);
      child.once('close', (code) => {
        clearTimeout(timer);
        resolve({ code, stdout, stderr, ms: Date.now() - t0 });
      });
    });
  }

  /** crictl that must succeed; returns its trimmed stdout. */
  async function ok(args: string[]): Promise<string> {
    const r = await crictl(args);
    assert.equal(r.code, 0, `crictl ${args.join(' ')} failed (${r.code}):\n${r.stderr}${r.stdout}`);
    return r.stdout.trim();
  }

  const lines = (s: string): string[] =>
    s
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '');

  let seq = 0;
  /** Writes a pod config for crictl (`runp`, `create`, `run`) and returns its path and name. */
  function podConfig(extra: Record<string, unknown> = {}): { path: string; name: string; logDir: string } {
    const name = `pod${++seq}-${randomBytes(2).toString('hex')}`;
    const logDir = join(work, name);
    const path = join(work, `${name}.json`);
    writeFileSync(
      path,
      JSON.stringify({ metadata: { name, namespace: 'crictl', uid: `uid-${name}`, attempt: 0 }, hostname: name, log_directory: logDir, linux: {}, ...extra }),
    );
    return { path, name, logDir };
  }

  function containerConfig(name: string, command: string[], extra: Record<string, unknown> = {}): string {
    const path = join(work, `${name}-${++seq}.json`);
    writeFileSync(path, JSON.stringify({ metadata: { name }, image: { image: fx.busybox.ref }, command, log_path: `${name}.0.log`, linux: {}, ...extra }));
    return path;
  }

  /** `crictl runp`, with the pod removed after the test. */
  async function runp(): Promise<{ pod: string; cfg: string; logDir: string; name: string }> {
    const p = podConfig();
    const pod = await ok(['runp', p.path]);
    assert.match(pod, /^[0-9a-f]{64}$/, 'runp prints the pod id');
    cleanup.push(async () => {
      await crictl(['stopp', pod]);
      await crictl(['rmp', '-f', pod]);
    });
    return { pod, cfg: p.path, logDir: p.logDir, name: p.name };
  }

  async function createAndStart(pod: string, podCfg: string, name: string, command: string[], extra: Record<string, unknown> = {}): Promise<string> {
    const id = await ok(['create', pod, containerConfig(name, command, extra), podCfg]);
    assert.match(id, /^[0-9a-f]{64}$/, 'create prints the container id');
    assert.equal(await ok(['start', id]), id, 'start prints the id it started');
    return id;
  }

  interface Inspect {
    status: Record<string, unknown> & {
      state: string;
      exitCode: number;
      reason: string;
      logPath: string;
      createdAt: string;
      startedAt: string;
      finishedAt: string;
      metadata: { name: string; attempt: number };
    };
    info: Record<string, unknown> & {
      pid: number;
      sandboxID: string;
      runtimeSpec: { process: { args: string[] }; linux?: { resources?: { memory?: { limit?: number } } } };
    };
  }
  const inspect = async (id: string): Promise<Inspect> => JSON.parse(await ok(['inspect', id])) as Inspect;

  /** Processes whose command line mentions `s` (a pod or container id). */
  function processesMentioning(s: string): string[] {
    const found: string[] = [];
    for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
        if (cmd.includes(s)) found.push(`${pid}: ${cmd.slice(0, 200)}`);
      } catch {
        // gone meanwhile
      }
    }
    return found;
  }

  /**
   * A cgroup file of a process: under the v1 hierarchy that has `controller`, wherever it
   * is mounted (`cpu,cpuacct` or `cpu`), or on a pure v2 host the unified one.
   */
  function cgroupFile(pid: number, controller: string, v1File: string, v2File: string): string {
    const own = readFileSync(`/proc/${pid}/cgroup`, 'utf8')
      .split('\n')
      .map((l) => l.split(':'));
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => {
        const [pre, post] = l.split(' - ');
        const f = pre?.split(' ') ?? [];
        const g = post?.split(' ') ?? [];
        return { root: f[3] ?? '', point: f[4] ?? '', type: g[0] ?? '', opts: (g[2] ?? '').split(',') };
      });
    const v1 = own.find((l) => l[1]?.split(',').includes(controller));
    const v1Mount = mounts.find((m) => m.type === 'cgroup' && m.opts.includes(controller));
    if (v1 && v1Mount) return join(v1Mount.point, v1[2]!.slice(v1Mount.root === '/' ? 0 : v1Mount.root.length), v1File);
    const v2Mount = mounts.find((m) => m.type === 'cgroup2')!;
    return join(v2Mount.point, own.find((l) => l[0] === '0')![2]!, v2File);
  }

  it('pull, runp, create, start, ps (filters, -q, -o json), inspect, rm', async () => {
    const pulled = await ok(['pull', fx.busybox.ref]);
    assert.match(pulled, new RegExp(`Image is up to date for ${fx.busybox.id}`));
    assert.ok(lines(await ok(['images', '-q'])).includes(fx.busybox.id), 'crictl images lists the pulled image');
    await ok(['pull', fx.busybox135.ref]);

    const { pod, cfg, name: podName } = await runp();
    assert.deepEqual(lines(await ok(['pods', '-q', '--name', podName])), [pod]);
    const podInspect = JSON.parse(await ok(['inspectp', pod])) as { status: { state: string; id: string } };
    assert.equal(podInspect.status.state, 'SANDBOX_READY');

    const web = await ok(['create', pod, containerConfig('web', ['sleep', '1000'], { labels: { tier: 'front' } }), cfg]);
    const job = await ok(['create', pod, containerConfig('job', ['sh', '-c', 'echo done']), cfg]);
    assert.match(web, /^[0-9a-f]{64}$/);
    assert.match(job, /^[0-9a-f]{64}$/);

    // Created, not started: ps (running only by default) shows neither.
    assert.deepEqual(lines(await ok(['ps', '-q', '--pod', pod])), []);
    assert.deepEqual(lines(await ok(['ps', '-q', '--state', 'created', '--pod', pod])).sort(), [web, job].sort());
    let st = await inspect(web);
    assert.equal(st.status.state, 'CONTAINER_CREATED');
    assert.equal(st.status.metadata.name, 'web');
    assert.equal(st.status.startedAt, '0001-01-01T00:00:00Z', 'crictl prints Go’s zero time for a container never started');
    assert.ok(st.info.pid > 0, 'a created container has its init process waiting');
    assert.deepEqual(
      st.status.image,
      { image: fx.busybox.ref, annotations: {}, userSpecifiedImage: fx.busybox.ref, runtimeHandler: '' },
      'the ImageSpec as crictl sent it',
    );
    assert.equal(st.info.sandboxID, pod);
    assert.deepEqual(st.info.runtimeSpec.process.args, ['sleep', '1000'], 'info.runtimeSpec is the OCI spec the container runs with');

    assert.equal(await ok(['start', web]), web);
    assert.equal(await ok(['start', job.slice(0, 12)]), job.slice(0, 12), 'start takes an id prefix');
    st = await inspect(web);
    assert.equal(st.status.state, 'CONTAINER_RUNNING');
    assert.ok(Date.parse(st.status.startedAt) >= Date.parse(st.status.createdAt), `started ${st.status.startedAt} after created ${st.status.createdAt}`);
    assert.match(readFileSync(`/proc/${st.info.pid}/cmdline`, 'utf8'), /^sleep\0+1000\0$/, 'info.pid is the container’s process');
    await until(async () => ((await inspect(job)).status.state === 'CONTAINER_EXITED' ? true : undefined));

    assert.deepEqual(lines(await ok(['ps', '-q', '--pod', pod])), [web], 'ps shows running containers only');
    assert.deepEqual(lines(await ok(['ps', '-q', '-a', '--pod', pod])).sort(), [web, job].sort());
    assert.deepEqual(lines(await ok(['ps', '-q', '--pod', pod.slice(0, 10), '-a'])).sort(), [web, job].sort(), '--pod takes a prefix');
    assert.deepEqual(lines(await ok(['ps', '-q', '--state', 'exited', '--pod', pod])), [job]);
    assert.deepEqual(lines(await ok(['ps', '-q', '-a', '--name', '^jo'])), [job], '--name is a regular expression');
    assert.deepEqual(lines(await ok(['ps', '-q', '-a', '--name', 'nothing-like-it'])), []);
    assert.deepEqual(lines(await ok(['ps', '-q', '-a', '--label', 'tier=front'])), [web]);
    assert.deepEqual(lines(await ok(['ps', '-q', '-a', '--id', web.slice(0, 8)])), [web], '--id takes a prefix');
    assert.deepEqual(lines(await ok(['ps', '-q', '--latest', '--pod', pod])), [job], '--latest: the newest container in any state');

    const table = lines(await ok(['ps', '-a', '--pod', pod]));
    assert.match(table[0]!, /^CONTAINER\s+IMAGE\s+CREATED\s+STATE\s+NAME\s+ATTEMPT\s+POD ID\s+POD$/);
    assert.ok(
      table.some((l) => l.startsWith(web.slice(0, 13)) && /\bRunning\s+web\s+0\s/.test(l)),
      table.join('\n'),
    );
    assert.ok(
      table.some((l) => l.startsWith(job.slice(0, 13)) && /\bExited\s+job\s+0\s/.test(l)),
      table.join('\n'),
    );
    const listed = JSON.parse(await ok(['ps', '-a', '-o', 'json', '--pod', pod])) as {
      containers: Array<{ id: string; podSandboxId: string; state: string; labels: Record<string, string>; imageRef: string }>;
    };
    const webEntry = listed.containers.find((c) => c.id === web)!;
    assert.equal(webEntry.podSandboxId, pod);
    assert.equal(webEntry.state, 'CONTAINER_RUNNING');
    assert.deepEqual(webEntry.labels, { tier: 'front' });
    assert.equal(webEntry.imageRef, fx.busybox.digestRef, 'the repo digest, as containerd and CRI-O report it');
    assert.deepEqual(lines(await ok(['ps', '-q', '-a', '--pod', pod, '--image', fx.busybox.id])).sort(), [web, job].sort(), '--image matches by image ID');
    assert.deepEqual(
      lines(await ok(['ps', '-q', '-a', '--pod', pod, '--image', fx.busybox135.ref])).sort(),
      [web, job].sort(),
      'or by any name of the same image',
    );

    const tpl = await ok(['inspect', '-o', 'go-template', '--template', '{{.status.state}} {{.info.pid}}', web]);
    assert.match(tpl, /^CONTAINER_RUNNING [1-9]\d*$/);
    const quiet = JSON.parse(await ok(['inspect', '-q', job])) as Record<string, unknown>;
    assert.deepEqual(Object.keys(quiet), ['status'], 'inspect -q asks for no verbose info');

    // rm: a running container needs -f; an exited one goes as is; the pod is then empty.
    const refused = await crictl(['rm', web]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /is running, please stop it first/);
    assert.equal(await ok(['rm', job]), job);
    assert.equal(await ok(['rm', '-f', web]), `${web}\n${web}`, 'rm -f stops (printing the id), then removes (printing it again)');
    assert.deepEqual(lines(await ok(['ps', '-a', '-q', '--pod', pod])), []);
    const gone = await crictl(['inspect', web]);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /NotFound.*not found/);
    assert.equal(await ok(['stopp', pod]), `Stopped sandbox ${pod}`);
    assert.equal(await ok(['rmp', pod]), `Removed sandbox ${pod}`);
    assert.deepEqual(lines(await ok(['pods', '-q'])), []);
  });

  it('logs: stdout and stderr apart, partial lines joined, --tail, -t; logs -f follows and ends with the container', async () => {
    const { pod, cfg } = await runp();
    const id = await createAndStart(pod, cfg, 'talker', [
      'sh',
      '-c',
      'echo first; echo oops >&2; printf "part-"; sleep 0.3; echo joined; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo second; sleep 0.5; echo last',
    ]);
    const follow = { sawFirst: false };
    let resolveFirst: () => void;
    const firstSeen = new Promise<void>((r) => (resolveFirst = r));
    const following = crictl(['logs', '-f', id], {
      timeoutMs: 20_000,
      onStdout: (all) => {
        if (!follow.sawFirst && all.includes('joined')) {
          follow.sawFirst = true;
          resolveFirst();
        }
      },
    });
    await Promise.race([firstSeen, following.then((r) => assert.fail(`logs -f ended early:\n${r.stdout}\n${r.stderr}`))]);
    // Now that logs -f has shown what was there, make the container write more, then exit.
    assert.equal((await crictl(['exec', '-s', id, 'touch', '/tmp/go'])).code, 0);
    const f = await following;
    assert.equal(f.code, 0, f.stderr);
    assert.equal(f.stdout, 'first\npart-joined\nsecond\nlast\n', 'logs -f shows lines written after it started, and ends when the container exits');
    assert.equal(f.stderr, 'oops\n');
    assert.equal((await inspect(id)).status.state, 'CONTAINER_EXITED');

    const all = await crictl(['logs', id]);
    assert.equal(all.code, 0);
    assert.equal(all.stdout, 'first\npart-joined\nsecond\nlast\n');
    assert.equal(all.stderr, 'oops\n');
    assert.equal((await crictl(['logs', '--tail', '1', id])).stdout, 'last\n');
    const stamped = lines((await crictl(['logs', '-t', id])).stdout);
    assert.equal(stamped.length, 4);
    for (const l of stamped) assert.match(l, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d) \S/, l);
    const st = await inspect(id);
    assert.ok(existsSync(st.status.logPath), `the log file ${st.status.logPath}`);
  });

  it('exec -s: output, exit codes, --timeout kills the command; refused on a stopped container', async () => {
    const { pod, cfg } = await runp();
    const id = await createAndStart(pod, cfg, 'exec', ['sleep', '1000']);
    const r = await crictl(['exec', '-s', id, 'sh', '-c', 'echo out; echo err >&2']);
    assert.equal(r.code, 0);
    assert.equal(r.stdout, 'out\n\nerr\n\n', 'crictl prints stdout, then stderr, each with a newline after');
    const env = await ok(['exec', '--sync', id, 'env']);
    assert.match(env, /^PATH=\/usr\/local\/sbin:/m, 'the image’s environment');
    const failed = await crictl(['exec', '-s', id, 'sh', '-c', 'echo why >&2; exit 3']);
    assert.equal(failed.code, 1);
    assert.match(failed.stderr, /command 'sh -c echo why >&2; exit 3' exited with 3: why/);
    const t0 = Date.now();
    const slow = await crictl(['exec', '-s', '--timeout', '1', id, 'sleep', '600']);
    assert.equal(slow.code, 1);
    assert.match(slow.stderr, /command \\"sleep 600\\" timed out/);
    assert.ok(Date.now() - t0 < 6000, `--timeout 1 answered after ${Date.now() - t0} ms`);
    const ps = await ok(['exec', '-s', id, 'ps', '-o', 'pid,args']);
    assert.doesNotMatch(ps, /sleep 600/, 'the timed-out command was killed');
    await ok(['stop', '-t', '0', id]);
    const stopped = await crictl(['exec', '-s', id, 'true']);
    assert.equal(stopped.code, 1);
    assert.match(stopped.stderr, /FailedPrecondition.*not running/);
  });

  it('stop: -t waits for a process that ignores SIGTERM, then kills it; one that handles SIGTERM exits at once', async () => {
    const { pod, cfg } = await runp();
    const stubborn = await createAndStart(pod, cfg, 'stubborn', ['sh', '-c', 'trap "" TERM; while true; do sleep 0.1; done']);
    const polite = await createAndStart(pod, cfg, 'polite', ['sh', '-c', 'trap "exit 0" TERM; while true; do sleep 0.1; done']);

    const s = await crictl(['stop', '--timeout', '2', stubborn]);
    assert.equal(s.code, 0, s.stderr);
    assert.equal(s.stdout.trim(), stubborn);
    assert.ok(s.ms >= 1900 && s.ms < 8000, `stop -t 2 took ${s.ms} ms`);
    let st = await inspect(stubborn);
    assert.equal(st.status.state, 'CONTAINER_EXITED');
    assert.equal(st.status.exitCode, 137);
    assert.equal(st.status.reason, 'Error');
    assert.ok(Date.parse(st.status.finishedAt) >= Date.parse(st.status.startedAt));

    const p = await crictl(['stop', '-t', '10', polite]);
    assert.equal(p.code, 0, p.stderr);
    assert.ok(p.ms < 4000, `a container that exits on SIGTERM stops without the timeout (${p.ms} ms)`);
    st = await inspect(polite);
    assert.equal(st.status.exitCode, 0);
    assert.equal(st.status.reason, 'Completed');
    assert.equal((await crictl(['stop', polite])).code, 0, 'stopping a stopped container succeeds');
    assert.deepEqual(lines(await ok(['ps', '-q', '--pod', pod])), []);
    assert.deepEqual(lines(await ok(['ps', '-q', '--state', 'exited', '--pod', pod])).sort(), [stubborn, polite].sort());
    assert.equal(await ok(['rm', stubborn, polite]), `${stubborn}\n${polite}`);
  });

  it('update: --memory and --cpu-quota/--cpu-period reach the cgroup and show in inspect', async () => {
    const { pod, cfg } = await runp();
    const id = await createAndStart(pod, cfg, 'res', ['sleep', '1000'], { linux: { resources: { memory_limit_in_bytes: 256 * 1024 * 1024 } } });
    const { pid } = (await inspect(id)).info;
    const memFile = cgroupFile(pid, 'memory', 'memory.limit_in_bytes', 'memory.max');
    const memory = (): number => Number(readFileSync(memFile, 'utf8'));
    const quota = (): string => {
      const f = cgroupFile(pid, 'cpu', 'cpu.cfs_quota_us', 'cpu.max');
      if (f.endsWith('cpu.max')) return readFileSync(f, 'utf8').trim();
      return `${readFileSync(f, 'utf8').trim()} ${readFileSync(f.replace(/cpu\.cfs_quota_us$/, 'cpu.cfs_period_us'), 'utf8').trim()}`;
    };
    assert.equal(memory(), 256 * 1024 * 1024);
    assert.equal(await ok(['update', '--memory', String(128 * 1024 * 1024), id]), id);
    assert.equal(memory(), 128 * 1024 * 1024);
    assert.equal(await ok(['update', '--cpu-quota', '50000', '--cpu-period', '100000', id]), id);
    assert.equal(quota(), '50000 100000');
    assert.equal(memory(), 128 * 1024 * 1024, 'a CPU-only update leaves the memory limit alone');
    const st = await inspect(id);
    const res = (st.status.resources as { linux: Record<string, unknown> }).linux;
    assert.equal(res.memoryLimitInBytes, String(128 * 1024 * 1024), 'inspect shows the memory limit in force');
    assert.equal(res.cpuQuota, '50000');
    assert.equal(res.cpuPeriod, '100000');
    const seen = await ok(['exec', '-s', id, 'sh', '-c', 'cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes']);
    assert.equal(seen, String(128 * 1024 * 1024), 'the container sees its new limit');
    await ok(['stop', '-t', '0', id]);
    const late = await crictl(['update', '--memory', String(64 * 1024 * 1024), id]);
    assert.equal(late.code, 1);
    assert.match(late.stderr, /FailedPrecondition.*exited/);
  });

  it('exec over the streaming server (SPDY): output, stderr apart, exit codes, stdin, a terminal; nothing left behind', async () => {
    const { pod, cfg } = await runp();
    const id = await createAndStart(pod, cfg, 'ex', ['sleep', '1000']);
    const r = await crictl(['exec', id, 'sh', '-c', 'echo out; echo err >&2; exit 3']);
    // crictl exits 1 and names the command's code, which it learned from berth's status.
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /command terminated with exit code 3/);
    assert.equal(r.stdout, 'out\n');
    assert.match(r.stderr, /^err$/m);
    assert.equal((await crictl(['exec', id, 'true'])).code, 0);
    // stdin, to its end of file.
    const cat = await crictl(['exec', '-i', id, 'sh', '-c', 'cat; echo done'], { input: 'line one\nline two\n' });
    assert.equal(cat.code, 0, cat.stderr);
    assert.equal(cat.stdout, 'line one\nline two\ndone\n');
    // A large output arrives whole.
    const big = await crictl(['exec', id, 'sh', '-c', 'head -c 3000000 /dev/zero | tr "\\0" x']);
    assert.equal(big.code, 0, big.stderr);
    assert.equal(big.stdout.length, 3_000_000);
    // A terminal (crictl wants one on its own stdin: script(1) gives it a pty). The
    // command sees a tty of the terminal's size, and what is typed reaches it.
    const sock = `unix://${b!.socket}`;
    const t = await new Promise<{ code: number | null; out: string }>((resolve, reject) => {
      // runc -t sizes its own terminal just after the command starts (then follows the
      // client's resize): the command waits, up to 5 s, for the size to arrive.
      const wait = 'i=0; until [ "$(stty size 2>/dev/null)" = "45 123" ] || [ $i -ge 50 ]; do sleep 0.1; i=$((i+1)); done';
      const cmd = `stty cols 123 rows 45; ${crictlBin!} --runtime-endpoint ${sock} exec -it ${id} sh -c '${wait}; tty; stty size; read x; echo "typed:$x"; exit 5'`;
      const child = spawn('script', ['-qec', cmd, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('45 123') && !out.includes('typed:')) child.stdin.write('hello\r');
      });
      child.stderr.on('data', (d: Buffer) => (out += d.toString()));
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`exec -it did not finish: ${out}`));
      }, 20_000);
      child.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code, out });
      });
    });
    assert.match(t.out, /\/dev\/pts\/\d+\r\n/);
    assert.match(t.out, /45 123\r\n/, 'the terminal has the client’s size');
    assert.match(t.out, /typed:hello\r\n/);
    assert.match(t.out, /exit code 5/);
    // A command that does not exist: runc's message, a non-zero code.
    const missing = await crictl(['exec', id, 'no-such-command']);
    assert.notEqual(missing.code, 0);
    assert.match(missing.stderr + missing.stdout, /no-such-command/);
    // Nothing of the sessions remains: no runc exec, no pid file.
    await until(async () => (processesMentioning(`exec`).filter((p) => p.includes(id)).length === 0 ? true : undefined), 5000);
    assert.deepEqual(
      readdirSync(join(b!.state, 'conmon', id)).filter((f) => f.startsWith('exec-')),
      [],
    );
    await ok(['stop', '-t', '0', id]);
    const stopped = await crictl(['exec', id, 'true']);
    assert.notEqual(stopped.code, 0);
    assert.match(stopped.stderr, /not running/);
  });

  it('attach (SPDY): input reaches the main process, its output comes back; stdin_once ends it', async () => {
    const { pod, cfg } = await runp();
    const id = await createAndStart(pod, cfg, 'att', ['sh', '-c', 'echo ready; while read l; do echo "got:$l"; echo "err:$l" >&2; done; echo bye'], {
      stdin: true,
      stdin_once: true,
    });
    await until(async () => ((await crictl(['logs', id])).stdout.includes('ready') ? true : undefined), 5000);
    const r = await crictl(['attach', '-i', id], { input: 'one\ntwo\n' });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'got:one\ngot:two\nbye\n');
    assert.match(r.stderr, /err:one\n(.|\n)*err:two/);
    await until(async () => ((await inspect(id)).status.state === 'CONTAINER_EXITED' ? true : undefined), 5000);
    assert.equal((await inspect(id)).status.exitCode, 0);
    // Without stdin in the container, asking for it is refused.
    const plain = await createAndStart(pod, cfg, 'noin', ['sleep', '1000']);
    const refused = await crictl(['attach', '-i', plain], { input: '' });
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /created without stdin/);
  });

  it('port-forward (SPDY): connections reach a server on the pod’s own loopback; a closed port is reported', async () => {
    const { pod, cfg } = await runp();
    await createAndStart(pod, cfg, 'web', [
      'sh',
      '-c',
      'mkdir -p /www && echo hello-from-the-pod > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www',
    ]);
    const local = 20000 + Math.floor(Math.random() * 20000);
    const sock = `unix://${b!.socket}`;
    const pf = spawn(crictlBin!, ['--runtime-endpoint', sock, 'port-forward', pod, `${local}:8080`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let pfOut = '';
    pf.stdout.on('data', (d: Buffer) => (pfOut += d.toString()));
    pf.stderr.on('data', (d: Buffer) => (pfOut += d.toString()));
    cleanup.push(() => {
      pf.kill('SIGKILL');
    });
    await until(async () => (pfOut.includes(`127.0.0.1:${local}`) ? true : undefined), 10_000);
    const get = (): Promise<string> =>
      new Promise((resolve, reject) => {
        const c = connect({ host: '127.0.0.1', port: local }, () => c.end('GET /index.html HTTP/1.0\r\n\r\n'));
        let body = '';
        c.on('data', (d: Buffer) => (body += d.toString()));
        c.on('end', () => resolve(body));
        c.on('error', reject);
      });
    // httpd listens on the pod's 127.0.0.1 only: reachable through port-forward alone.
    const answers = await until(async () => {
      const r = await get().catch(() => '');
      return r.includes('hello-from-the-pod') ? r : undefined;
    }, 10_000);
    assert.match(answers, /^HTTP\/1\.[01] 200/);
    // Several connections, one after the other and at once.
    const many = await Promise.all([get(), get(), get()]);
    for (const r of many) assert.match(r, /hello-from-the-pod/);
    pf.kill('SIGTERM');

    // A port nothing listens on: crictl reports berth's error for that connection.
    const closed = spawn(crictlBin!, ['--runtime-endpoint', sock, 'port-forward', pod, `${local + 1}:9`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let closedOut = '';
    closed.stdout.on('data', (d: Buffer) => (closedOut += d.toString()));
    closed.stderr.on('data', (d: Buffer) => (closedOut += d.toString()));
    cleanup.push(() => {
      closed.kill('SIGKILL');
    });
    await until(async () => (closedOut.includes(`127.0.0.1:${local + 1}`) ? true : undefined), 10_000);
    await new Promise<void>((resolve) => {
      const c = connect({ host: '127.0.0.1', port: local + 1 }, () => c.end());
      c.on('close', () => resolve());
      c.on('error', () => resolve());
    });
    await until(async () => (/error forwarding port 9 to pod/.test(closedOut) ? true : undefined), 10_000);
    closed.kill('SIGTERM');
  });

  it('the kubelet contract through crictl: a device and its cgroup rule, a privileged container with the host devices, the repo digest as imageRef', async function () {
    if (!existsSync('/dev/fuse') || !existsSync('/dev/net/tun')) this.skip();
    const { pod, cfg } = await runp();
    const dev = await createAndStart(pod, cfg, 'dev', ['sleep', '1000'], {
      devices: [{ host_path: '/dev/fuse', container_path: '/dev/fuse', permissions: 'rw' }],
    });
    const out = await ok(['exec', '-s', dev, 'sh', '-c', 'stat -c "%F %t:%T" /dev/fuse; cat /sys/fs/cgroup/devices/devices.list 2>/dev/null; true']);
    assert.match(out, /^character special file a:e5$/m, '/dev/fuse with the host numbers (10:229)');
    if (existsSync('/sys/fs/cgroup/devices')) assert.match(out, /^c 10:229 rw$/m, 'the requested permissions in the device cgroup');
    assert.match(String((await inspect(dev)).status.imageRef), /^[^@]+\/busybox@sha256:[0-9a-f]{64}$/, 'imageRef is the repo digest');

    const p = podConfig({ linux: { security_context: { privileged: true } } });
    const ppod = await ok(['runp', p.path]);
    cleanup.push(async () => {
      await crictl(['stopp', ppod]);
      await crictl(['rmp', '-f', ppod]);
    });
    const priv = await createAndStart(ppod, p.path, 'priv', ['sleep', '1000'], { linux: { security_context: { privileged: true } } });
    const pout = await ok(['exec', '-s', priv, 'sh', '-c', 'test -c /dev/net/tun && echo tun; grep " /sys " /proc/self/mounts']);
    assert.match(pout, /^tun$/m, 'the host device /dev/net/tun is there');
    assert.match(pout, /^sysfs \/sys sysfs rw[, ]/m, '/sys is writable');
  });

  it('stats and statsp: CPU, memory and the writable layer of containers, and the pod', async () => {
    const { pod, cfg } = await runp();
    const id = await createAndStart(pod, cfg, 'st', [
      'sh',
      '-c',
      'dd if=/dev/zero of=/dev/shm/m bs=1048576 count=16 2>/dev/null; dd if=/dev/zero of=/w bs=1024 count=1024 2>/dev/null; touch /ready; sleep 1000',
    ]);
    await until(async () => ((await crictl(['exec', '-s', id, 'test', '-f', '/ready'])).code === 0 ? true : undefined));
    // crictl clears the screen before its table.
    // eslint-disable-next-line no-control-regex
    const table = (await ok(['stats', '--id', id, '-s', '1'])).replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');
    assert.match(table, /^CONTAINER\s+NAME\s+CPU %\s+MEM\s+DISK\s+INODES/m);
    assert.match(table, new RegExp(`^${id.slice(0, 13)}\\s+st\\s+\\d+\\.\\d+\\s+1[6-9]\\.\\d+MB\\s+1\\.\\d+MB\\s+\\d+`, 'm'));
    const json = JSON.parse(await ok(['stats', '-o', 'json', '-p', pod])) as {
      stats: Array<{ attributes: { id: string }; memory: { workingSetBytes: { value: string } }; writableLayer: { usedBytes: { value: string } } }>;
    };
    assert.deepEqual(
      json.stats.map((x) => x.attributes.id),
      [id],
    );
    assert.ok(Number(json.stats[0]!.memory.workingSetBytes.value) >= 16 * 1024 * 1024);
    const podJson = JSON.parse(await ok(['statsp', '-o', 'json', '--id', pod])) as {
      stats: Array<{ attributes: { id: string }; linux: { memory: { workingSetBytes: { value: string } }; containers: unknown[] } }>;
    };
    assert.equal(podJson.stats[0]!.attributes.id, pod);
    assert.equal(podJson.stats[0]!.linux.containers.length, 1);
    assert.ok(Number(podJson.stats[0]!.linux.memory.workingSetBytes.value) >= 16 * 1024 * 1024);
  });

  it('run: pod and container in one go (pulling the image), then stopp/rmp take both away', async () => {
    const p = podConfig();
    const ctr = containerConfig('oneshot', ['sh', '-c', 'echo from-run; sleep 1000']);
    const r = await crictl(['run', '--runtime', 'runc', ctr, p.path], { timeoutMs: 30_000 });
    assert.equal(r.code, 0, r.stderr);
    const id = r.stdout.trim();
    assert.match(id, /^[0-9a-f]{64}$/, 'run prints the container id');
    const pod = lines(await ok(['pods', '-q', '--name', p.name]))[0]!;
    assert.match(pod, /^[0-9a-f]{64}$/);
    cleanup.push(async () => {
      await crictl(['rmp', '-f', pod]);
    });
    const st = await inspect(id);
    assert.equal(st.status.state, 'CONTAINER_RUNNING');
    assert.equal(st.info.sandboxID, pod);
    assert.equal(st.status.logPath, join(p.logDir, 'oneshot.0.log'));
    await until(async () => ((await crictl(['logs', id])).stdout === 'from-run\n' ? true : undefined), 5000);
    assert.equal((await ok(['exec', '-s', id, 'hostname'])).trim(), p.name, 'the pod’s hostname');
    const podSt = JSON.parse(await ok(['inspectp', pod])) as { status: { state: string; network: { ip: string } } };
    assert.equal(podSt.status.state, 'SANDBOX_READY');
    assert.match(podSt.status.network.ip, /^10\.\d+\.\d+\.\d+$/, 'the pod has an address on the test’s bridge');

    assert.equal(await ok(['stopp', pod]), `Stopped sandbox ${pod}`);
    assert.equal((await inspect(id)).status.state, 'CONTAINER_EXITED', 'stopp stopped the container');
    assert.equal(await ok(['rmp', pod]), `Removed sandbox ${pod}`);
    assert.deepEqual(
      lines(await ok(['ps', '-a', '-q'])).filter((c) => c === id),
      [],
      'rmp removed the container',
    );
    assert.deepEqual(lines(await ok(['pods', '-q', '--name', p.name])), []);
    assert.deepEqual(processesMentioning(pod), [], 'nothing of the pod runs on (its infra process went with it)');
    assert.deepEqual(processesMentioning(id), []);
  });

  /** JSON documents printed one after another (crictl prints each indented, over several lines). */
  function jsonDocuments(text: string): Array<Record<string, unknown>> {
    const docs: Array<Record<string, unknown>> = [];
    let depth = 0;
    let begin = -1;
    let inString = false;
    for (let i = 0; i < text.length; i++) {
      const ch = text[i];
      if (inString) {
        if (ch === '\\') i++;
        else if (ch === '"') inString = false;
      } else if (ch === '"') inString = true;
      else if (ch === '{') {
        if (depth++ === 0) begin = i;
      } else if (ch === '}' && --depth === 0) docs.push(JSON.parse(text.slice(begin, i + 1)) as Record<string, unknown>);
    }
    return docs;
  }

  it('events: a container’s CREATED, STARTED, STOPPED and DELETED, in order, each with its pod', async () => {
    const sock = `unix://${b!.socket}`;
    const watcher = spawn(crictlBin!, ['--runtime-endpoint', sock, '--timeout', '20s', 'events', '-o', 'json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    watcher.stdout.on('data', (d: Buffer) => (out += d.toString()));
    watcher.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const closed = new Promise<void>((resolve) => watcher.once('close', () => resolve()));
    cleanup.push(async () => {
      watcher.kill('SIGTERM');
      await closed;
    });
    // The stream is open once berthd counts a subscriber; crictl prints nothing until the first event, so give it a moment.
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(watcher.exitCode, null, `crictl events is still streaming: ${err}`);

    const { pod, cfg } = await runp();
    const id = await createAndStart(pod, cfg, 'ev', ['sh', '-c', 'sleep 1000']);
    assert.equal(await ok(['stop', '-t', '0', id]), id);
    assert.equal(await ok(['rm', id]), id);

    type Ev = { containerId: string; containerEventType: string; createdAt: string; podSandboxStatus?: { id: string } };
    const mine = (): Ev[] => (jsonDocuments(out) as unknown as Ev[]).filter((e) => e.containerId === id);
    await until(async () => (mine().length >= 4 ? true : undefined), 10_000).catch(() => undefined);
    const events = mine();
    assert.deepEqual(
      events.map((e) => e.containerEventType),
      ['CONTAINER_CREATED_EVENT', 'CONTAINER_STARTED_EVENT', 'CONTAINER_STOPPED_EVENT', 'CONTAINER_DELETED_EVENT'],
      `crictl events printed:\n${out}\n${err}`,
    );
    for (const e of events) assert.equal(e.podSandboxStatus?.id, pod, 'each event carries its pod’s status');
    const times = events.map((e) => BigInt(e.createdAt));
    assert.ok(
      times.every((t, i) => i === 0 || t >= times[i - 1]!),
      `event times do not go back: ${times.join(', ')}`,
    );
  });

  it('metricsp: the cAdvisor metrics of a pod and its running container (ListPodSandboxMetrics)', async () => {
    const { pod, cfg } = await runp();
    const id = await createAndStart(pod, cfg, 'mp', ['sh', '-c', 'dd if=/dev/zero of=/dev/shm/m bs=1048576 count=8 2>/dev/null; touch /ready; sleep 1000']);
    await until(async () => ((await crictl(['exec', '-s', id, 'test', '-f', '/ready'])).code === 0 ? true : undefined));
    type M = { name: string; metricType: string; labelValues: string[]; value: { value: string } };
    const json = JSON.parse(await ok(['metricsp', '-o', 'json'])) as {
      podMetrics: Array<{ podSandboxId: string; metrics: M[]; containerMetrics: Array<{ containerId: string; metrics: M[] }> }>;
    };
    const pm = json.podMetrics.find((p) => p.podSandboxId === pod);
    assert.ok(pm, `metricsp lists the pod: ${JSON.stringify(json.podMetrics.map((p) => p.podSandboxId))}`);
    assert.deepEqual(
      pm.containerMetrics.map((c) => c.containerId),
      [id],
    );
    const ws = pm.containerMetrics[0]!.metrics.find((m) => m.name === 'container_memory_working_set_bytes');
    assert.ok(ws, 'the container has container_memory_working_set_bytes');
    assert.equal(ws.metricType, 'GAUGE');
    assert.ok(Number(ws.value.value) >= 8 * 1024 * 1024, `working set ${ws.value.value} holds the 8 MiB written to /dev/shm`);
    assert.ok(ws.labelValues.includes(id), 'labelled with the container id');
    const cpu = pm.containerMetrics[0]!.metrics.find((m) => m.name === 'container_cpu_usage_seconds_total');
    assert.equal(cpu?.metricType, 'COUNTER');
    assert.ok(
      pm.metrics.some((m) => m.name === 'container_memory_working_set_bytes'),
      'and the pod has its own',
    );
  });
});
