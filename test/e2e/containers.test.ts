/**
 * Containers end to end: real conmon and runc, images from the local registry, pods on
 * a bridge network of the test's own.
 */
import { status } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Berthd, until } from '../helpers/berthd.js';
import { runCleanup, type CleanupStep } from '../helpers/cleanup.js';
import { useFixtureRegistry } from '../helpers/fixtures.js';
import { testBridge } from '../helpers/network.js';
import { grpcError } from '../helpers/cri-client.js';

describe('containers', function () {
  this.timeout(90_000);
  const reg = useFixtureRegistry();
  const cleanup: CleanupStep[] = [];
  afterEach(() => runCleanup(cleanup));

  async function setup(b?: Berthd): Promise<{ b: Berthd; pod: string; logDir: string }> {
    if (!b) {
      b = await Berthd.start();
      cleanup.push(() => b!.dispose());
    }
    const net = testBridge(b, 'bc');
    const r = net.tag;
    cleanup.push(net.remove);
    const logDir = mkdtempSync(join(tmpdir(), 'berth-logs-'));
    cleanup.push(() => rmSync(logDir, { recursive: true, force: true }));
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    const { pod_sandbox_id: pod } = await b.runtime.RunPodSandbox({
      config: { metadata: { name: `p${r}`, namespace: 'test', uid: `u${r}`, attempt: 0 }, hostname: `p${r}`, log_directory: logDir },
    });
    return { b, pod, logDir };
  }

  const podCfg = (pod: string, logDir: string) => ({ metadata: { name: 'x', namespace: 'test', uid: 'x', attempt: 0 }, log_directory: logDir, _pod: pod });

  /** A busybox `sleep 1000` container `name` in `pod`, created and started; its id. */
  async function startSleeper(h: { b: Berthd; pod: string; logDir: string }, name: string): Promise<string> {
    const { container_id: id } = await h.b.runtime.CreateContainer({
      pod_sandbox_id: h.pod,
      config: { metadata: { name, attempt: 0 }, image: { image: reg.fx.busybox.ref }, command: ['sleep', '1000'], log_path: `${name}.log` },
      sandbox_config: podCfg(h.pod, h.logDir) as never,
    });
    await h.b.runtime.StartContainer({ container_id: id });
    return id;
  }

  it('runs a busybox container: exit code, reason, CRI-format log, list, remove', async () => {
    const { b, pod, logDir } = await setup();
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: {
        metadata: { name: 'echo', attempt: 0 },
        image: { image: reg.fx.busybox.ref },
        command: ['sh', '-c', 'echo hello; echo oops >&2; exit 3'],
        log_path: 'echo/0.log',
        labels: { role: 'test' },
      },
      sandbox_config: podCfg(pod, logDir) as never,
    });
    let st = (await b.runtime.ContainerStatus({ container_id: id })).status!;
    assert.equal(st.state, 'CONTAINER_CREATED');
    await b.runtime.StartContainer({ container_id: id });
    st = await until(async () => {
      const s = (await b.runtime.ContainerStatus({ container_id: id })).status!;
      return s.state === 'CONTAINER_EXITED' ? s : undefined;
    });
    assert.equal(st.exit_code, 3);
    assert.equal(st.reason, 'Error');
    assert.ok(BigInt(st.finished_at) >= BigInt(st.started_at) && BigInt(st.started_at) >= BigInt(st.created_at));
    assert.equal(st.log_path, join(logDir, 'echo/0.log'));
    const log = readFileSync(st.log_path, 'utf8');
    assert.match(log, /^\S+ stdout F hello$/m);
    assert.match(log, /^\S+ stderr F oops$/m);
    assert.deepEqual(
      (await b.runtime.ListContainers({ filter: { label_selector: { role: 'test' } } })).containers.map((c) => c.id),
      [id],
    );
    assert.deepEqual(
      (await b.runtime.ListContainers({ filter: { pod_sandbox_id: pod, state: { state: 'CONTAINER_EXITED' } } })).containers.map((c) => c.id),
      [id],
    );
    const again = await grpcError(b.runtime.StartContainer({ container_id: id }));
    assert.equal(again.code, status.FAILED_PRECONDITION);
    await b.runtime.RemoveContainer({ container_id: id });
    await b.runtime.RemoveContainer({ container_id: id });
    assert.equal((await grpcError(b.runtime.ContainerStatus({ container_id: id }))).code, status.NOT_FOUND);
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
    assert.deepEqual(readdirSync(join(b.root, 'containers')), []);
  });

  it('StopContainer sends the stop signal, then SIGKILL after the timeout', async () => {
    const { b, pod, logDir } = await setup();
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: {
        metadata: { name: 'sleeper', attempt: 0 },
        image: { image: reg.fx.busybox.ref },
        command: ['sh', '-c', 'trap "" TERM; sleep 1000'],
        log_path: 's.log',
      },
      sandbox_config: podCfg(pod, logDir) as never,
    });
    await b.runtime.StartContainer({ container_id: id });
    assert.equal((await b.runtime.ContainerStatus({ container_id: id })).status!.state, 'CONTAINER_RUNNING');
    // The rootfs overlay is volatile where the kernel has it (5.10+): its unmount syncs nothing.
    const rootfs = join(b.root, 'containers', id, 'rootfs');
    const rootfsMount = (): string | undefined =>
      readFileSync('/proc/self/mountinfo', 'utf8')
        .split('\n')
        .find((l) => l.split(' ')[4] === rootfs);
    const [major = 0, minor = 0] = execFileSync('uname', ['-r'], { encoding: 'utf8' }).split('.').map(Number);
    if (major > 5 || (major === 5 && minor >= 10)) assert.match(rootfsMount() ?? '', /[ ,](fsync=)?volatile(,|$)/, `the rootfs mount: ${rootfsMount()}`);
    const t0 = Date.now();
    // The shell ignores SIGTERM (and so does sleep, which inherits that), so only SIGKILL ends it.
    await b.runtime.StopContainer({ container_id: id, timeout: 1 });
    assert.ok(Date.now() - t0 >= 900, 'waited for the timeout');
    const st = (await b.runtime.ContainerStatus({ container_id: id })).status!;
    assert.equal(st.state, 'CONTAINER_EXITED');
    assert.equal(st.exit_code, 137);
    // Retired once exited: the runtime's state and the rootfs mount go before RemoveContainer; the container stays listed.
    const runtimeState = join(b.state, 'runtime', 'runc', id);
    await until(async () => (!existsSync(runtimeState) && rootfsMount() === undefined) || undefined);
    assert.equal((await b.runtime.ContainerStatus({ container_id: id })).status!.exit_code, 137);
    await b.runtime.StopContainer({ container_id: id, timeout: 1 });
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
    assert.deepEqual((await b.runtime.ListContainers({})).containers, [], 'removing the pod removed its container');
  });

  it('StopPodSandbox stops the pod’s containers', async () => {
    const h = await setup();
    const { b, pod } = h;
    const id = await startSleeper(h, 'sleeper');
    await b.runtime.StopPodSandbox({ pod_sandbox_id: pod });
    assert.equal((await b.runtime.ContainerStatus({ container_id: id })).status!.state, 'CONTAINER_EXITED');
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
  });

  it('ExecSync returns output and exit code, and kills a command that outlives its timeout', async () => {
    const { b, pod, logDir } = await setup();
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: { metadata: { name: 'exec', attempt: 0 }, image: { image: reg.fx.busybox.ref }, command: ['sleep', '1000'], log_path: 'e.log' },
      sandbox_config: podCfg(pod, logDir) as never,
    });
    const notRunning = await grpcError(b.runtime.ExecSync({ container_id: id, cmd: ['true'], timeout: 5 }));
    assert.equal(notRunning.code, status.FAILED_PRECONDITION);
    await b.runtime.StartContainer({ container_id: id });
    const r = await b.runtime.ExecSync({ container_id: id, cmd: ['sh', '-c', 'echo hi; echo err >&2; exit 4'], timeout: 10 });
    assert.equal(r.stdout.toString(), 'hi\n');
    assert.equal(r.stderr.toString(), 'err\n');
    assert.equal(r.exit_code, 4);
    const t0 = Date.now();
    const e = await grpcError(b.runtime.ExecSync({ container_id: id, cmd: ['sleep', '77'], timeout: 1 }));
    assert.equal(e.code, status.DEADLINE_EXCEEDED);
    assert.ok(Date.now() - t0 < 5000);
    const e2 = await grpcError(b.runtime.ExecSync({ container_id: id, cmd: ['sh', '-c', 'sleep 4321'], timeout: 1 }));
    assert.equal(e2.code, status.DEADLINE_EXCEEDED);
    const ps = await b.runtime.ExecSync({ container_id: id, cmd: ['ps'], timeout: 10 });
    assert.ok(!ps.stdout.toString().includes('sleep 77'), 'the timed-out command was killed inside the container');
    assert.ok(!ps.stdout.toString().includes('sleep 4321'), 'and so were its children');
    const procs = (await b.runtime.ExecSync({ container_id: id, cmd: ['ps', '-o', 'pid,stat,args'], timeout: 10 })).stdout.toString();
    assert.ok(!/sleep 4321|\bZ\b/.test(procs), `no killed command lingers, not even as a zombie:\n${procs}`);
    const big = await b.runtime.ExecSync({ container_id: id, cmd: ['sh', '-c', 'head -c 8000000 /dev/zero'], timeout: 20 });
    assert.equal(big.stdout.length, 4 * 1024 * 1024, 'output is capped');
    const bad = await grpcError(b.runtime.ExecSync({ container_id: id, cmd: [], timeout: 1 }));
    assert.equal(bad.code, status.INVALID_ARGUMENT);
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
  });

  it('ReopenContainerLog after a rotation: new lines go to the new file, none is lost', async () => {
    const { b, pod, logDir } = await setup();
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: {
        metadata: { name: 'writer', attempt: 0 },
        image: { image: reg.fx.busybox.ref },
        command: ['sh', '-c', 'i=0; while true; do echo line$i; i=$((i+1)); sleep 0.05; done'],
        log_path: 'w.log',
      },
      sandbox_config: podCfg(pod, logDir) as never,
    });
    await b.runtime.StartContainer({ container_id: id });
    const log = join(logDir, 'w.log');
    const numbers = (f: string) => [...readFileSync(f, 'utf8').matchAll(/ stdout F line(\d+)$/gm)].map((m) => Number(m[1]));
    await until(async () => (numbers(log).length > 3 ? true : undefined));
    execFileSync('mv', [log, `${log}.1`]);
    await b.runtime.ReopenContainerLog({ container_id: id });
    assert.ok(existsSync(log), 'the new log file exists when the call returns');
    await until(async () => (numbers(log).length > 3 ? true : undefined));
    await b.runtime.StopContainer({ container_id: id, timeout: 0 });
    const before = numbers(`${log}.1`);
    const after = numbers(log);
    assert.ok(before.length > 3 && after.length > 3, `lines before ${before.length}, after ${after.length}`);
    assert.deepEqual(
      [...before, ...after],
      [...before, ...after].map((_, i) => i),
      'one unbroken sequence across the two files',
    );
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
  });

  it('UpdateContainerResources changes the memory limit of a running container', async () => {
    const { b, pod, logDir } = await setup();
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: {
        metadata: { name: 'res', attempt: 0 },
        image: { image: reg.fx.busybox.ref },
        command: ['sleep', '1000'],
        log_path: 'r.log',
        linux: { resources: { memory_limit_in_bytes: 256 * 1024 * 1024 } },
      },
      sandbox_config: podCfg(pod, logDir) as never,
    });
    await b.runtime.StartContainer({ container_id: id });
    const pid = JSON.parse((await b.runtime.ContainerStatus({ container_id: id, verbose: true })).info.info!).pid as number;
    const memCgroup = readFileSync(`/proc/${pid}/cgroup`, 'utf8')
      .split('\n')
      .find((l) => /:memory:/.test(l))!
      .split(':')[2]!;
    const limit = () => Number(readFileSync(join('/sys/fs/cgroup/memory', memCgroup, 'memory.limit_in_bytes'), 'utf8'));
    assert.equal(limit(), 256 * 1024 * 1024);
    await b.runtime.UpdateContainerResources({ container_id: id, linux: { memory_limit_in_bytes: 128 * 1024 * 1024 } });
    assert.equal(limit(), 128 * 1024 * 1024);
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
  });

  it('a container killed for exceeding its memory limit reports OOMKilled', async () => {
    const { b, pod, logDir } = await setup();
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: {
        metadata: { name: 'hog', attempt: 0 },
        image: { image: reg.fx.busybox.ref },
        command: ['sh', '-c', 'a=$(head -c 200000000 /dev/zero | tr "\\0" x); echo survived'],
        log_path: 'h.log',
        linux: { resources: { memory_limit_in_bytes: 32 * 1024 * 1024 } },
      },
      sandbox_config: podCfg(pod, logDir) as never,
    });
    await b.runtime.StartContainer({ container_id: id });
    const st = await until(async () => {
      const s = (await b.runtime.ContainerStatus({ container_id: id })).status!;
      return s.state === 'CONTAINER_EXITED' ? s : undefined;
    }, 30_000);
    assert.equal(st.reason, 'OOMKilled');
    assert.equal(st.exit_code, 137);
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
  });

  it('applies the security context: user and groups, read-only rootfs, capabilities, seccomp, no_new_privs, masked paths', async () => {
    const { b, pod, logDir } = await setup();
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: {
        metadata: { name: 'secure', attempt: 0 },
        image: { image: reg.fx.busybox.ref },
        command: ['sleep', '1000'],
        log_path: 'sec.log',
        linux: {
          security_context: {
            run_as_user: { value: 1000 },
            run_as_group: { value: 1000 },
            supplemental_groups: [3000],
            readonly_rootfs: true,
            no_new_privs: true,
            capabilities: { drop_capabilities: ['ALL'], add_capabilities: ['NET_BIND_SERVICE'] },
            seccomp: { profile_type: 'RuntimeDefault' },
            masked_paths: ['/proc/timer_list'],
            readonly_paths: ['/proc/sys'],
          },
        },
      },
      sandbox_config: podCfg(pod, logDir) as never,
    });
    await b.runtime.StartContainer({ container_id: id });
    const exec = async (cmd: string) => (await b.runtime.ExecSync({ container_id: id, cmd: ['sh', '-c', cmd], timeout: 10 })).stdout.toString();
    assert.equal((await exec('id -u; id -g')).trim(), '1000\n1000');
    const groups = (await exec('id -G')).trim().split(' ');
    assert.ok(groups.includes('3000') && groups.includes('2000'), `supplemental and image-defined groups: ${groups.join(' ')}`);
    const st = await exec('grep -E "^(Seccomp|NoNewPrivs|CapEff|CapBnd):" /proc/self/status');
    assert.match(st, /^Seccomp:\s+2$/m, 'seccomp filter mode');
    assert.match(st, /^NoNewPrivs:\s+1$/m);
    assert.match(st, /^CapBnd:\s+0000000000000400$/m, 'only CAP_NET_BIND_SERVICE (bit 10) is left');
    assert.match(await exec('touch /rootfile 2>&1; echo rc=$?'), /Read-only file system[\s\S]*rc=1/);
    // (/proc/kcore would be the classic example, but this kernel has none; runc skips what is absent.)
    assert.match(await exec('cat /proc/self/mountinfo'), / \/proc\/timer_list /, '/proc/timer_list is masked by a mount over it');
    assert.match(await exec('echo 1 > /proc/sys/kernel/ns_last_pid 2>&1; echo rc=$?'), /rc=[12]/);
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
  });

  it('privileged and add-ALL containers get berthd’s own capabilities, no more (so they start)', async () => {
    const { b, pod, logDir } = await setup();
    const hostBnd = /^CapBnd:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]!;
    const cases: Array<[string, Record<string, unknown>]> = [
      ['priv', { privileged: true }],
      ['all', { capabilities: { add_capabilities: ['ALL'] } }],
    ];
    for (const [name, sc] of cases) {
      const { container_id: id } = await b.runtime.CreateContainer({
        pod_sandbox_id: pod,
        config: {
          metadata: { name, attempt: 0 },
          image: { image: reg.fx.busybox.ref },
          command: ['sleep', '1000'],
          log_path: `${name}.log`,
          linux: { security_context: sc as never },
        },
        sandbox_config: podCfg(pod, logDir) as never,
      });
      await b.runtime.StartContainer({ container_id: id });
      const out = (await b.runtime.ExecSync({ container_id: id, cmd: ['grep', 'CapEff', '/proc/self/status'], timeout: 10 })).stdout.toString();
      assert.equal(BigInt(`0x${out.split(/\s+/)[1]}`), BigInt(`0x${hostBnd}`), `${name}: ${out}`);
    }
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
  });

  it('a Localhost seccomp profile is read from the node and applied', async () => {
    const { b, pod, logDir } = await setup();
    const profile = join(logDir, 'no-mkdir.json');
    writeFileSync(
      profile,
      JSON.stringify({ defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['mkdir', 'mkdirat'], action: 'SCMP_ACT_ERRNO', errnoRet: 1 }] }),
    );
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: {
        metadata: { name: 'seccomp', attempt: 0 },
        image: { image: reg.fx.busybox.ref },
        command: ['sleep', '1000'],
        log_path: 'sc.log',
        linux: { security_context: { seccomp: { profile_type: 'Localhost', localhost_ref: profile } } },
      },
      sandbox_config: podCfg(pod, logDir) as never,
    });
    await b.runtime.StartContainer({ container_id: id });
    const r = await b.runtime.ExecSync({ container_id: id, cmd: ['mkdir', '/tmp/x'], timeout: 10 });
    assert.notEqual(r.exit_code, 0);
    assert.match(r.stderr.toString(), /Operation not permitted/);
    const missing = await grpcError(
      b.runtime.CreateContainer({
        pod_sandbox_id: pod,
        config: {
          metadata: { name: 'seccomp2', attempt: 0 },
          image: { image: reg.fx.busybox.ref },
          command: ['true'],
          log_path: 'sc2.log',
          linux: { security_context: { seccomp: { profile_type: 'Localhost', localhost_ref: '/nonexistent/profile.json' } } },
        },
        sandbox_config: podCfg(pod, logDir) as never,
      }),
    );
    assert.equal(missing.code, status.NOT_FOUND);
    assert.match(missing.details, /\/nonexistent\/profile\.json/);
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
  });

  it('runs containers with the crun handler where the host allows it', async function () {
    const hybrid =
      readFileSync('/proc/self/mountinfo', 'utf8').includes(' /sys/fs/cgroup/unified ') && existsSync('/sys/fs/cgroup/memory/memory.limit_in_bytes');
    if (hybrid) {
      console.log('      (skipped: crun 1.8 refuses hybrid cgroups ("cgroups in hybrid mode not supported"), which this host has)');
      this.skip();
    }
    const b = await Berthd.start();
    cleanup.push(() => b.dispose());
    const { pod, logDir } = await setup(b);
    await b.runtime.StopPodSandbox({ pod_sandbox_id: pod });
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
    const { pod_sandbox_id: crunPod } = await b.runtime.RunPodSandbox({
      config: { metadata: { name: 'crunpod', namespace: 'test', uid: 'crun', attempt: 0 }, hostname: 'crunpod', log_directory: logDir },
      runtime_handler: 'crun',
    });
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: crunPod,
      config: { metadata: { name: 'c', attempt: 0 }, image: { image: reg.fx.busybox.ref }, command: ['sh', '-c', 'exit 5'], log_path: 'c.log' },
      sandbox_config: podCfg(crunPod, logDir) as never,
    });
    await b.runtime.StartContainer({ container_id: id });
    const st = await until(async () => {
      const s = (await b.runtime.ContainerStatus({ container_id: id })).status!;
      return s.state === 'CONTAINER_EXITED' ? s : undefined;
    });
    assert.equal(st.exit_code, 5);
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: crunPod });
  });

  it('after kill -9 of a container’s conmon, the container is still reported and can be stopped and removed', async () => {
    const h = await setup();
    const { b, pod } = h;
    const id = await startSleeper(h, 'orphan');
    const info = JSON.parse((await b.runtime.ContainerStatus({ container_id: id, verbose: true })).info.info!) as { shimPid: number; pid: number };
    process.kill(info.shimPid, 'SIGKILL');
    // berthd notices the dead shim (its check runs every 2 s) and follows the container through the runtime.
    await until(async () =>
      b.records().some((r) => r.msg === 'the shim of a running container died; following the container through the runtime' && r.container === id)
        ? true
        : undefined,
    );
    const st = (await b.runtime.ContainerStatus({ container_id: id })).status!;
    assert.equal(st.state, 'CONTAINER_RUNNING', 'the container itself still runs without its shim');
    assert.deepEqual(
      (await b.runtime.ListContainers({})).containers.map((c) => c.id),
      [id],
    );
    await b.runtime.StopContainer({ container_id: id, timeout: 0 });
    assert.equal((await b.runtime.ContainerStatus({ container_id: id })).status!.state, 'CONTAINER_EXITED');
    assert.ok(!existsSync(`/proc/${info.pid}`) || !readFileSync(`/proc/${info.pid}/cmdline`, 'utf8').includes('sleep'), 'the container process is gone');
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
    assert.deepEqual(readdirSync(join(b.root, 'containers')), []);
  });

  it('RemovePodSandbox of a running pod removes its container and namespaces once, leaving no process, mount, netns or cgroup', async function () {
    if (!existsSync('/usr/bin/strace')) {
      console.log('      (skipped: the count of removals is read with strace, which this host lacks)');
      this.skip();
    }
    const h = await setup();
    const { b, pod } = h;
    const id = await startSleeper(h, 'running');
    const pid = JSON.parse((await b.runtime.ContainerStatus({ container_id: id, verbose: true })).info.info!).pid as number;
    // The container's cgroups, one a hierarchy (v1 controllers, or the unified one).
    const cgroups = readFileSync(`/proc/${pid}/cgroup`, 'utf8')
      .split('\n')
      .filter((l) => l !== '' && !l.includes('name=systemd'))
      .map((l) => {
        const [, ctrl, path] = l.split(':') as [string, string, string];
        return join('/sys/fs/cgroup', ctrl === '' ? (existsSync('/sys/fs/cgroup/unified') ? 'unified' : '') : ctrl.split(',')[0]!, path);
      })
      .filter((d) => existsSync(d));
    assert.ok(cgroups.length > 0, 'the container has cgroups to look for');
    const nsDir = join(b.state, 'ns', pod);
    assert.ok(existsSync(join(nsDir, 'net')));

    // berthd's removals and the programs it runs, traced while RemovePodSandbox runs.
    const traceFile = join(b.dir, 'remove.strace');
    const tracer = spawn('strace', ['-f', '-e', 'trace=rmdir,unlink,unlinkat,execve', '-s', '256', '-o', traceFile, '-p', String(b.proc.pid)], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const tracerExit = new Promise((resolve) => tracer.once('exit', resolve));
    cleanup.push(async () => {
      if (tracer.exitCode === null && tracer.signalCode === null) tracer.kill('SIGINT');
      await tracerExit;
    });
    let traceErr = '';
    tracer.stderr!.on('data', (d: Buffer) => (traceErr += d.toString()));
    await until(async () => (/attached/.test(traceErr) ? true : undefined), 10_000);
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
    tracer.kill('SIGINT');
    await tracerExit;
    const trace = readFileSync(traceFile, 'utf8').split('\n');
    rmSync(traceFile);

    const nsRemovals = trace.filter((l) => l.includes(`rmdir("${nsDir}")`));
    assert.equal(nsRemovals.length, 1, `the pod's namespace dir is removed once:\n${nsRemovals.join('\n')}`);
    const pinUnlinks = trace.filter((l) => /unlink(at)?\(/.test(l) && l.includes(`${nsDir}/net"`));
    assert.equal(pinUnlinks.length, 1, `its net pin is unlinked once:\n${pinUnlinks.join('\n')}`);
    const deletes = trace.filter((l) => l.includes('execve(') && l.includes('"delete"') && l.includes(id));
    assert.equal(deletes.length, 1, `the container's runtime delete runs once:\n${deletes.join('\n')}`);

    assert.equal(existsSync(`/proc/${pid}`), false, 'the container process is gone');
    assert.equal(existsSync(nsDir), false, 'no namespace pins');
    assert.deepEqual(
      cgroups.filter((d) => existsSync(d)),
      [],
      'no cgroup of the container',
    );
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[4] ?? '')
      .filter((m) => m.startsWith(b.dir) && (m.includes(pod) || m.includes(id)));
    assert.deepEqual(mounts, [], 'no mount of the pod or the container');
    assert.deepEqual((await b.runtime.ListContainers({})).containers, []);
    assert.deepEqual((await b.runtime.ListPodSandbox({})).items, []);
  });

  it('refuses an unknown pod or image, and a duplicate name', async () => {
    const { b, pod, logDir } = await setup();
    const cfg = (image: string) => ({ metadata: { name: 'c', attempt: 0 }, image: { image }, command: ['true'], log_path: 'c.log' });
    const noPod = await grpcError(
      b.runtime.CreateContainer({ pod_sandbox_id: 'f'.repeat(64), config: cfg(reg.fx.busybox.ref), sandbox_config: podCfg(pod, logDir) as never }),
    );
    assert.equal(noPod.code, status.NOT_FOUND);
    const noImage = await grpcError(
      b.runtime.CreateContainer({ pod_sandbox_id: pod, config: cfg(`${reg.registry.host}/nope:1`), sandbox_config: podCfg(pod, logDir) as never }),
    );
    assert.equal(noImage.code, status.NOT_FOUND);
    assert.match(noImage.details, /pull it first/);
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: cfg(reg.fx.busybox.ref),
      sandbox_config: podCfg(pod, logDir) as never,
    });
    const dup = await grpcError(
      b.runtime.CreateContainer({ pod_sandbox_id: pod, config: cfg(reg.fx.busybox.ref), sandbox_config: podCfg(pod, logDir) as never }),
    );
    assert.equal(dup.code, status.ALREADY_EXISTS);
    assert.ok(dup.details.includes(id));
    const missingCmd = await grpcError(
      b.runtime.CreateContainer({
        pod_sandbox_id: pod,
        config: { metadata: { name: 'd', attempt: 0 }, image: { image: reg.fx.busybox.ref }, command: ['/no/such/binary'], log_path: 'd.log' },
        sandbox_config: podCfg(pod, logDir) as never,
      }),
    );
    assert.match(missingCmd.details, /no such file or directory|not found/);
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
    assert.deepEqual(readdirSync(join(b.root, 'containers')), []);
  });

  it('after kill -9 of berthd, a running container keeps running and an exit meanwhile is recorded with its code', async () => {
    const b = await Berthd.start();
    const { pod, logDir } = await setup(b);
    const mk = async (name: string, cmd: string) =>
      (
        await b.runtime.CreateContainer({
          pod_sandbox_id: pod,
          config: { metadata: { name, attempt: 0 }, image: { image: reg.fx.busybox.ref }, command: ['sh', '-c', cmd], log_path: `${name}.log` },
          sandbox_config: podCfg(pod, logDir) as never,
        })
      ).container_id;
    const long = await mk('long', 'sleep 1000');
    const short = await mk('short', 'sleep 2; exit 7');
    await b.runtime.StartContainer({ container_id: long });
    await b.runtime.StartContainer({ container_id: short });
    await b.stop('SIGKILL');
    // conmon records the short one's exit while berthd is down.
    await until(async () => (existsSync(join(b.state, 'exits', short)) ? true : undefined));
    const again = await Berthd.start({ reuse: { dir: b.dir } });
    cleanup.push(() => again.dispose());
    const s1 = (await again.runtime.ContainerStatus({ container_id: long })).status!;
    assert.equal(s1.state, 'CONTAINER_RUNNING');
    const s2 = (await again.runtime.ContainerStatus({ container_id: short })).status!;
    assert.equal(s2.state, 'CONTAINER_EXITED');
    assert.equal(s2.exit_code, 7);
    await again.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
    assert.ok(!existsSync(join(again.root, 'containers', long)));
  });
});
