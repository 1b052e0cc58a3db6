/**
 * Containers under bad input and faults, end to end against real conmon and runc:
 * refused requests leave nothing half-made, runc's own message reaches the caller, and
 * kill -9 of berthd (in the middle of CreateContainer too) or of a conmon leaves every
 * container reported with its true state, or gone without a trace.
 */
import { status } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Berthd, until } from '../helpers/berthd.js';
import { gone, killAndWait } from '../helpers/processes.js';
import { runCleanup, type CleanupStep } from '../helpers/cleanup.js';
import { useFixtureRegistry } from '../helpers/fixtures.js';
import { testBridge } from '../helpers/network.js';
import { grpcError } from '../helpers/cri-client.js';

describe('container faults', function () {
  this.timeout(60_000);
  const reg = useFixtureRegistry();
  const cleanup: CleanupStep[] = [];
  // A leak Berthd.dispose() finds fails the test.
  afterEach(() => runCleanup(cleanup));

  interface Harness {
    /** The berthd of the moment (a new one after each restart). */
    b: Berthd;
    pod: string;
    podCfg: Record<string, unknown>;
    /** kill -9 of berthd, then a new berthd on the same dirs (after `meanwhile`). */
    restart(meanwhile?: () => Promise<void> | void): Promise<Berthd>;
  }

  /**
   * A berthd with the busybox image and a ready pod on a bridge of the test's own. As
   * kubelet does by default, containers get PID namespaces of their own (no infra
   * process), so every conmon and runc state under the test's dir is a container's.
   */
  async function setup(): Promise<Harness> {
    const h = { b: await Berthd.start() } as Harness;
    cleanup.push(() => h.b.dispose());
    const net = testBridge(h.b, 'bf');
    const r = net.tag;
    cleanup.push(net.remove);
    const logDir = mkdtempSync(join(tmpdir(), 'berth-logs-'));
    cleanup.push(() => rmSync(logDir, { recursive: true, force: true }));
    await h.b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    h.podCfg = {
      metadata: { name: `p${r}`, namespace: 'test', uid: `u${r}`, attempt: 0 },
      hostname: `p${r}`,
      log_directory: logDir,
      linux: { security_context: { namespace_options: { pid: 'CONTAINER' } } },
    };
    h.pod = (await h.b.runtime.RunPodSandbox({ config: h.podCfg as never })).pod_sandbox_id;
    h.restart = async (meanwhile) => {
      await h.b.stop('SIGKILL');
      await meanwhile?.();
      h.b = await Berthd.start({ reuse: { dir: h.b.dir } });
      return h.b;
    };
    return h;
  }

  const ctr = (name: string, command: string[], extra: Record<string, unknown> = {}) => ({
    metadata: { name, attempt: 0 },
    image: { image: reg.fx.busybox.ref },
    command,
    log_path: `${name}.log`,
    ...extra,
  });

  async function create(h: Harness, name: string, command: string[], extra: Record<string, unknown> = {}): Promise<string> {
    return (await h.b.runtime.CreateContainer({ pod_sandbox_id: h.pod, config: ctr(name, command, extra) as never, sandbox_config: h.podCfg as never }))
      .container_id;
  }

  const ls = (d: string): string[] => (existsSync(d) ? readdirSync(d).sort() : []);
  const cmdlines = (): Array<{ pid: number; argv: string[] }> =>
    readdirSync('/proc')
      .filter((p) => /^\d+$/.test(p))
      .flatMap((p) => {
        try {
          return [{ pid: Number(p), argv: readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0') }];
        } catch {
          return [];
        }
      });

  /**
   * Everything of containers that exists on the machine for berthd `b`: bundle dirs,
   * runc states, conmon dirs, exit files, attach links, rootfs mounts, and conmon and
   * runc processes. (Active snapshots and cgroups are checked where it matters.)
   */
  function traces(b: Berthd): Record<string, string[]> {
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[4] ?? '')
      .filter((m) => m.startsWith(join(b.root, 'containers') + '/'));
    const procs = cmdlines()
      .filter((p) => p.argv.some((a) => a.includes(b.dir)) && /(^|\/)(conmon|runc)$/.test(p.argv[0] ?? ''))
      .map((p) => `${p.pid} ${p.argv.join(' ').slice(0, 120)}`);
    return {
      bundles: ls(join(b.root, 'containers')),
      runc: ls(join(b.state, 'runtime', 'runc')),
      conmon: ls(join(b.state, 'conmon')),
      exits: ls(join(b.state, 'exits')),
      attach: ls(join(b.state, 'attach')),
      mounts,
      procs,
    };
  }

  /** The cgroups whose name holds `id`: under the v1 memory controller and the v2 hierarchy (hybrid hosts have both). */
  function cgroupsOf(id: string): string[] {
    const out: string[] = [];
    const roots = ['/sys/fs/cgroup/memory', '/sys/fs/cgroup/unified'].filter((d) => existsSync(d));
    for (const root of roots.length > 0 ? roots : ['/sys/fs/cgroup']) {
      try {
        for (const e of readdirSync(root, { recursive: true }) as string[]) if (e.endsWith(id) || e.includes(`${id}.scope`)) out.push(join(root, e));
      } catch {
        // a cgroup went away during the walk
      }
    }
    return out;
  }

  function assertNoTraces(b: Berthd, what: string): void {
    const t = traces(b);
    assert.deepEqual(t, { bundles: [], runc: [], conmon: [], exits: [], attach: [], mounts: [], procs: [] }, `${what}: nothing of a container is left`);
  }

  const statusOf = async (b: Berthd, id: string) => (await b.runtime.ContainerStatus({ container_id: id })).status!;
  const pidsOf = async (b: Berthd, id: string) =>
    JSON.parse((await b.runtime.ContainerStatus({ container_id: id, verbose: true })).info.info!) as { pid: number; shimPid: number };
  const runc = (b: Berthd, ...args: string[]) =>
    execFileSync('runc', ['--root', join(b.state, 'runtime', 'runc'), ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

  it('refuses bad input with the precise code and runc’s own message, leaving nothing half-made', async () => {
    const h = await setup();
    const { b } = h;
    const snapshots = ls(join(b.root, 'snapshots'));

    const noPod = await grpcError(
      b.runtime.CreateContainer({ pod_sandbox_id: 'e'.repeat(64), config: ctr('a', ['true']) as never, sandbox_config: h.podCfg as never }),
    );
    assert.equal(noPod.code, status.NOT_FOUND);
    assert.match(noPod.details, /e{64}/);
    const noImage = await grpcError(
      b.runtime.CreateContainer({
        pod_sandbox_id: h.pod,
        config: { ...ctr('a', ['true']), image: { image: `${reg.registry.host}/absent:1` } } as never,
        sandbox_config: h.podCfg as never,
      }),
    );
    assert.equal(noImage.code, status.NOT_FOUND);
    assert.match(noImage.details, /absent:1/);

    const group = await grpcError(create(h, 'group', ['true'], { linux: { security_context: { run_as_group: { value: 5 } } } }));
    assert.equal(group.code, status.INVALID_ARGUMENT);
    assert.match(group.details, /run_as_group requires run_as_user/);

    // runc itself refuses these: its message reaches the caller, and conmon, runc's
    // state, the rootfs mount and the bundle are all undone.
    const noExe = await grpcError(create(h, 'noexe', ['no-such-program', 'x']));
    assert.equal(noExe.code, status.FAILED_PRECONDITION);
    assert.match(noExe.details, /runc create failed: .*exec: "no-such-program": executable file not found in \$PATH/);
    // A missing host path is made as a directory (as containerd and CRI-O do), but a
    // dangling symlink is left as it is: runc cannot mount what it names.
    const linkDir = mkdtempSync(join(tmpdir(), 'berth-faults-'));
    cleanup.push(() => rmSync(linkDir, { recursive: true, force: true }));
    const dangling = join(linkDir, 'dangling');
    symlinkSync('/nonexistent/berth-faults-' + randomBytes(3).toString('hex'), dangling);
    const noSource = await grpcError(create(h, 'nosource', ['true'], { mounts: [{ container_path: '/data', host_path: dangling }] }));
    assert.equal(noSource.code, status.FAILED_PRECONDITION);
    assert.ok(noSource.details.includes(`stat ${dangling}: no such file or directory`), noSource.details);

    // Unknown containers: NOT_FOUND, except RemoveContainer (CRI: idempotent).
    const unknown = 'c'.repeat(64);
    for (const call of [
      b.runtime.ContainerStatus({ container_id: unknown }),
      b.runtime.StartContainer({ container_id: unknown }),
      b.runtime.StopContainer({ container_id: unknown, timeout: 1 }),
    ]) {
      assert.equal((await grpcError(call)).code, status.NOT_FOUND);
    }
    await b.runtime.RemoveContainer({ container_id: unknown });

    assert.deepEqual((await b.runtime.ListContainers({})).containers, []);
    assertNoTraces(b, 'after refused creations');
    assert.deepEqual(ls(join(b.root, 'snapshots')), snapshots, 'no active snapshot is left');

    // A stopped pod takes no new container; a removed one is not found.
    await b.runtime.StopPodSandbox({ pod_sandbox_id: h.pod });
    const stopped = await grpcError(create(h, 'late', ['true']));
    assert.equal(stopped.code, status.FAILED_PRECONDITION);
    assert.match(stopped.details, /not ready/);
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: h.pod });
    assert.equal((await grpcError(create(h, 'later', ['true']))).code, status.NOT_FOUND);
    assertNoTraces(b, 'at the end');
  });

  it('kill -9 of berthd: after restart every container is listed with its true state and exit code', async () => {
    const h = await setup();
    const created = await create(h, 'created', ['sleep', '1000']);
    const running = await create(h, 'running', ['sleep', '1000']);
    const before = await create(h, 'before', ['sh', '-c', 'exit 2']);
    const meanwhile = await create(h, 'meanwhile', ['sh', '-c', 'while [ ! -e /tmp/go ]; do sleep 0.05; done; exit 7']);
    const killed = await create(h, 'killed', ['sleep', '1000']);
    for (const id of [running, before, meanwhile, killed]) await h.b.runtime.StartContainer({ container_id: id });
    await until(async () => ((await statusOf(h.b, before)).state === 'CONTAINER_EXITED' ? true : undefined));
    const killedPid = (await pidsOf(h.b, killed)).pid;
    const runningPid = (await pidsOf(h.b, running)).pid;
    const b = await h.restart(async () => {
      // While berthd is down: one container finishes, another is killed from outside.
      writeFileSync(join(h.b.root, 'containers', meanwhile, 'rootfs', 'tmp', 'go'), '');
      await killAndWait(killedPid);
      await until(async () => (existsSync(join(h.b.state, 'exits', meanwhile)) && existsSync(join(h.b.state, 'exits', killed)) ? true : undefined));
    });
    const states = Object.fromEntries((await b.runtime.ListContainers({})).containers.map((c) => [c.id, c.state]));
    assert.deepEqual(states, {
      [created]: 'CONTAINER_CREATED',
      [running]: 'CONTAINER_RUNNING',
      [before]: 'CONTAINER_EXITED',
      [meanwhile]: 'CONTAINER_EXITED',
      [killed]: 'CONTAINER_EXITED',
    });
    const codes = async (id: string) => {
      const s = await statusOf(b, id);
      return [s.exit_code, s.reason];
    };
    assert.deepEqual(await codes(before), [2, 'Error']);
    assert.deepEqual(await codes(meanwhile), [7, 'Error']);
    assert.deepEqual(await codes(killed), [137, 'Error']);
    assert.ok(BigInt((await statusOf(b, meanwhile)).finished_at) > 0n);
    // The running one is the same process, and the new berthd drives it; the created one starts.
    assert.equal((await pidsOf(b, running)).pid, runningPid);
    assert.equal((await b.runtime.ExecSync({ container_id: running, cmd: ['sh', '-c', 'echo alive'], timeout: 10 })).stdout.toString(), 'alive\n');
    await b.runtime.StartContainer({ container_id: created });
    assert.equal((await statusOf(b, created)).state, 'CONTAINER_RUNNING');
    await b.runtime.StopContainer({ container_id: running, timeout: 0 });
    assert.equal((await statusOf(b, running)).exit_code, 137);
    await b.runtime.StopPodSandbox({ pod_sandbox_id: h.pod });
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: h.pod });
    assertNoTraces(b, 'after the pod was removed');
  });

  it('a container whose shim and runtime state vanished while berthd was down is UNKNOWN, stoppable and removable without a trace', async () => {
    const h = await setup();
    const noState = await create(h, 'nostate', ['sleep', '1000']);
    const stopped = await create(h, 'stopped', ['sleep', '1000']);
    for (const id of [noState, stopped]) await h.b.runtime.StartContainer({ container_id: id });
    const pids = { [noState]: await pidsOf(h.b, noState), [stopped]: await pidsOf(h.b, stopped) };
    assert.ok(cgroupsOf(noState).length > 0 && cgroupsOf(stopped).length > 0, 'the containers have cgroups (so the check below means something)');
    const b = await h.restart(async () => {
      for (const id of [noState, stopped]) {
        await killAndWait(pids[id]!.shimPid);
        await killAndWait(pids[id]!.pid);
      }
      runc(h.b, 'delete', '--force', noState);
      assert.match(runc(h.b, 'state', stopped), /"status": "stopped"/);
      assert.deepEqual(ls(join(h.b.state, 'exits')), [], 'no exit file: the shims died before their containers');
    });
    for (const id of [noState, stopped]) {
      const s = await statusOf(b, id);
      assert.equal(s.state, 'CONTAINER_UNKNOWN', id === noState ? 'no runtime state' : 'runtime state "stopped"');
      assert.equal(s.reason, 'Unknown');
      assert.match(s.message, /shim/);
      assert.equal((await grpcError(b.runtime.StartContainer({ container_id: id }))).code, status.FAILED_PRECONDITION);
      assert.equal((await grpcError(b.runtime.ExecSync({ container_id: id, cmd: ['true'], timeout: 5 }))).code, status.FAILED_PRECONDITION);
    }
    const listed = (await b.runtime.ListContainers({ filter: { state: { state: 'CONTAINER_UNKNOWN' } } })).containers.map((c) => c.id).sort();
    assert.deepEqual(listed, [noState, stopped].sort(), 'reported, not forgotten');

    // StopContainer (what kubelet does to an UNKNOWN container) succeeds at once, as
    // containerd's: EXITED with the unknown exit code 255, the reason kept.
    const t0 = Date.now();
    await b.runtime.StopContainer({ container_id: noState, timeout: 30 });
    assert.ok(Date.now() - t0 < 3000, `stopping a lost container does not wait for a timeout (${Date.now() - t0} ms)`);
    const s = await statusOf(b, noState);
    assert.deepEqual([s.state, s.exit_code, s.reason], ['CONTAINER_EXITED', 255, 'Unknown']);
    assert.match(s.message, /shim/);
    assert.ok(BigInt(s.finished_at) >= BigInt(s.started_at));
    await b.runtime.StopContainer({ container_id: noState, timeout: 30 });
    await b.runtime.RemoveContainer({ container_id: noState });
    assert.equal((await grpcError(b.runtime.ContainerStatus({ container_id: noState }))).code, status.NOT_FOUND);
    // The other one is removed straight from UNKNOWN.
    await b.runtime.RemoveContainer({ container_id: stopped });
    assert.deepEqual((await b.runtime.ListContainers({})).containers, []);
    assertNoTraces(b, 'after RemoveContainer');
    assert.deepEqual([...cgroupsOf(noState), ...cgroupsOf(stopped)], [], 'no cgroup is left');
    await b.runtime.StopPodSandbox({ pod_sandbox_id: h.pod });
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: h.pod });
  });

  it('kill -9 of a conmon: the container is reported while it runs, and UNKNOWN once it dies without its shim', async () => {
    const h = await setup();
    const a = await create(h, 'a', ['sleep', '1000']);
    const c = await create(h, 'c', ['sleep', '1000']);
    for (const id of [a, c]) await h.b.runtime.StartContainer({ container_id: id });
    const pa = await pidsOf(h.b, a);
    const pc = await pidsOf(h.b, c);
    await killAndWait(pa.shimPid);
    await killAndWait(pc.shimPid);
    assert.equal((await statusOf(h.b, a)).state, 'CONTAINER_RUNNING', 'it still runs without its shim');
    await killAndWait(pa.pid);
    const sa = await until(async () => {
      const s = await statusOf(h.b, a);
      return s.state !== 'CONTAINER_RUNNING' ? s : undefined;
    }, 10_000);
    assert.deepEqual([sa.state, sa.reason], ['CONTAINER_UNKNOWN', 'Unknown']);
    assert.match(sa.message, /shim/);
    // Through a restart as well: still running, then lost.
    const b = await h.restart();
    assert.equal((await statusOf(b, c)).state, 'CONTAINER_RUNNING');
    assert.equal((await b.runtime.ExecSync({ container_id: c, cmd: ['true'], timeout: 10 })).exit_code, 0);
    await killAndWait(pc.pid);
    const sc = await until(async () => {
      const s = await statusOf(b, c);
      return s.state !== 'CONTAINER_RUNNING' ? s : undefined;
    }, 10_000);
    assert.equal(sc.state, 'CONTAINER_UNKNOWN');
    assert.equal((await statusOf(b, a)).state, 'CONTAINER_UNKNOWN');
    await b.runtime.StopPodSandbox({ pod_sandbox_id: h.pod });
    assert.deepEqual([(await statusOf(b, a)).state, (await statusOf(b, c)).exit_code], ['CONTAINER_EXITED', 255]);
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: h.pod });
    assertNoTraces(b, 'after the pod was removed');
    assert.deepEqual([...cgroupsOf(a), ...cgroupsOf(c)], []);
  });

  it('kill -9 of berthd during CreateContainer leaves a complete container or nothing', async () => {
    const h = await setup();
    const snapshots = ls(join(h.b.root, 'snapshots'));
    const conmonRunning = (b: Berthd) => cmdlines().some((p) => /(^|\/)conmon$/.test(p.argv[0] ?? '') && p.argv.some((x) => x.includes(b.dir)));
    // Moments to kill at: the bundle is being written; conmon runs `runc create`; runc has
    // made its state; and a moment chosen at random within a whole creation.
    const t0 = Date.now();
    await h.b.runtime.RemoveContainer({ container_id: await create(h, 'timing', ['true']) });
    const createMs = Date.now() - t0;
    const round: Array<[string, ((b: Berthd) => boolean) | 'random']> = [
      ['bundle', (b) => ls(join(b.root, 'containers')).length > 0],
      ['conmon', conmonRunning],
      ['runc state', (b) => ls(join(b.state, 'runtime', 'runc')).length > 0],
      ['random', 'random'],
    ];
    // BERTH_FAULTS_ROUNDS=n for a longer hunt.
    const moments = Array.from({ length: Number(process.env.BERTH_FAULTS_ROUNDS ?? 1) }, () => round).flat();
    const outcomes: string[] = [];
    for (const [i, [moment, when]] of moments.entries()) {
      const at = Date.now() + Math.random() * createMs;
      const cond = when === 'random' ? () => Date.now() >= at : when;
      const b0 = h.b;
      const call = create(h, `c${i}`, ['sleep', '1000']).then(
        (id) => ({ id }),
        (err: Error) => ({ err }),
      );
      const end = Date.now() + 10_000;
      while (!cond(b0)) {
        assert.ok(Date.now() < end, `the moment "${moment}" came within 10 s`);
        await new Promise((r) => setImmediate(r));
      }
      const b = await h.restart();
      const res = await call;
      const listed = (await b.runtime.ListContainers({})).containers;
      if (listed.length === 0) {
        outcomes.push(`${moment}: nothing`);
        assert.ok('err' in res, `${moment}: a container whose creation was acknowledged (${'id' in res ? res.id : ''}) must survive`);
      } else {
        outcomes.push(`${moment}: complete`);
        assert.equal(listed.length, 1);
        const id = listed[0]!.id;
        if ('id' in res) assert.equal(id, res.id);
        assert.equal(listed[0]!.state, 'CONTAINER_CREATED', `${moment}: the container is whole`);
        assert.match(runc(b, 'state', id), /"status": "created"/);
        await b.runtime.StartContainer({ container_id: id });
        assert.equal((await b.runtime.ExecSync({ container_id: id, cmd: ['true'], timeout: 10 })).exit_code, 0, `${moment}: it starts and runs`);
        await b.runtime.RemoveContainer({ container_id: id });
      }
      assertNoTraces(b, `killed at "${moment}"`);
      assert.deepEqual(ls(join(b.root, 'snapshots')), snapshots, `killed at "${moment}": no active snapshot is left`);
    }
    console.log(`      (outcomes: ${outcomes.join('; ')})`);
    await h.b.runtime.StopPodSandbox({ pod_sandbox_id: h.pod });
    await h.b.runtime.RemovePodSandbox({ pod_sandbox_id: h.pod });
  });

  it('a container that SIGKILL cannot end (its cgroup frozen) is not recorded exited: StopContainer fails and it stays RUNNING until it really ends', async function () {
    const FREEZER = '/sys/fs/cgroup/freezer';
    if (!existsSync(join(FREEZER, 'freezer.state')) && !existsSync(join(FREEZER, 'cgroup.procs'))) this.skip();
    // A pod cgroup parent of the test's own, frozen in the v1 freezer: the container's
    // processes stop where they are and a SIGKILL stays pending until the thaw, as for a
    // process in uninterruptible sleep. (runc's kill --all thaws the container's own
    // cgroup, not its parent.)
    const parent = `/berth-frz-${randomBytes(4).toString('hex')}`;
    const freezer = join(FREEZER, parent);
    cleanup.push(() => {
      for (const ctrl of readdirSync('/sys/fs/cgroup')) {
        const d = join('/sys/fs/cgroup', ctrl, parent);
        if (!existsSync(d)) continue;
        if (existsSync(join(d, 'freezer.state'))) writeFileSync(join(d, 'freezer.state'), 'THAWED');
        rmdirSync(d);
      }
    });
    const b = await Berthd.start();
    cleanup.push(() => b.dispose());
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    const logDir = mkdtempSync(join(tmpdir(), 'berth-logs-'));
    cleanup.push(() => rmSync(logDir, { recursive: true, force: true }));
    const tag = randomBytes(2).toString('hex');
    const podCfg = {
      metadata: { name: `frz${tag}`, namespace: 'test', uid: `frz${tag}`, attempt: 0 },
      hostname: `frz${tag}`,
      log_directory: logDir,
      linux: { cgroup_parent: parent, security_context: { namespace_options: { network: 'NODE', pid: 'CONTAINER' } } },
    };
    const pod = (await b.runtime.RunPodSandbox({ config: podCfg as never })).pod_sandbox_id;
    const id = (await b.runtime.CreateContainer({ pod_sandbox_id: pod, config: ctr('stuck', ['sleep', '1000']) as never, sandbox_config: podCfg as never }))
      .container_id;
    await b.runtime.StartContainer({ container_id: id });
    const { pid } = await pidsOf(b, id);
    assert.ok(existsSync(freezer), `the container's freezer cgroup is under ${freezer}`);
    writeFileSync(join(freezer, 'freezer.state'), 'FROZEN');
    await until(async () => (readFileSync(join(freezer, 'freezer.state'), 'utf8').trim() === 'FROZEN' ? true : undefined), 5000);

    const t0 = Date.now();
    const e = await grpcError(b.runtime.StopContainer({ container_id: id, timeout: 0 }));
    assert.equal(e.code, status.DEADLINE_EXCEEDED, e.details);
    assert.match(e.details, new RegExp(`container ${id}: still (running|paused) in the runtime 10 s after SIGKILL`));
    assert.ok(Date.now() - t0 >= 10_000, 'it waited for the exit');
    assert.ok(!gone(pid), 'the frozen process is alive');
    const st = await statusOf(b, id);
    assert.deepEqual([st.state, st.exit_code, st.finished_at], ['CONTAINER_RUNNING', 0, '0'], 'no exit is recorded for a live container');
    assert.match(runc(b, 'state', id), /"status": "(running|paused)"/);

    // Thawed, the pending SIGKILL lands: the exit is recorded as it really happened.
    writeFileSync(join(freezer, 'freezer.state'), 'THAWED');
    const ended = await until(async () => {
      const s = await statusOf(b, id);
      return s.state === 'CONTAINER_EXITED' ? s : undefined;
    }, 10_000);
    assert.deepEqual([ended.exit_code, ended.reason], [137, 'Error']);
    assert.ok(gone(pid));
    await b.runtime.StopContainer({ container_id: id, timeout: 0 });
    await b.runtime.StopPodSandbox({ pod_sandbox_id: pod });
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
    assertNoTraces(b, 'after the pod was removed');
  });
});
