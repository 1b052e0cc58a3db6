/**
 * The kubelet contract end to end, observed from inside containers: devices and their
 * cgroup rules, privileged containers' host devices and writable /sys, the stop signal,
 * and the AppArmor/SELinux behaviour of a host that has neither (this kind of machine).
 */
import { status } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { buildImage, buildLayer, busyboxEntries, DEFAULT_PATH, RegistryPusher, type LayerEntry } from '../../hack/test-images/oci.js';
import { Berthd, until } from '../helpers/berthd.js';
import { grpcError } from '../helpers/cri-client.js';
import { useFixtureRegistry } from '../helpers/fixtures.js';
import { runToExit } from '../helpers/run-container.js';

describe('kubelet contract', function () {
  this.timeout(90_000);
  const reg = useFixtureRegistry();
  let b: Berthd;
  let pod: string;
  let logDir: string;
  let n = 0;

  before(async function () {
    this.timeout(120_000);
    b = await Berthd.start();
    logDir = mkdtempSync(join(tmpdir(), 'berth-contract-logs-'));
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    ({ pod_sandbox_id: pod } = await b.runtime.RunPodSandbox({
      config: {
        metadata: { name: 'contract', namespace: 'test', uid: 'contract', attempt: 0 },
        hostname: 'contract',
        log_directory: logDir,
        linux: { security_context: { namespace_options: { network: 'NODE' } } },
      },
    }));
  });
  after(async () => {
    if (pod) await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
    await b?.dispose();
    if (logDir) rmSync(logDir, { recursive: true, force: true });
  });

  async function create(config: Record<string, unknown>, image = reg.fx.busybox.ref): Promise<string> {
    const name = `c${n++}`;
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: { metadata: { name, attempt: 0 }, image: { image }, log_path: `${name}.log`, ...config } as never,
    });
    return id;
  }

  /** Runs a shell script to its end; its exit code and stdout. */
  async function run(script: string, config: Record<string, unknown> = {}): Promise<{ code: number; out: string }> {
    const id = await create({ command: ['sh', '-c', script], ...config });
    return runToExit(b, id);
  }

  /** The container's own device cgroup rules (the v1 devices controller), or '' where there is none. */
  const DEVICES_LIST = 'cat /sys/fs/cgroup/devices/devices.list 2>/dev/null; true';

  it('a device: the node with the host numbers, its cgroup rule, and it opens', async function () {
    if (!existsSync('/dev/fuse')) this.skip();
    const r = await run(`stat -c 'node %F %t:%T' /dev/fuse; exec 3<>/dev/fuse && echo opened; ${DEVICES_LIST}`, {
      devices: [{ host_path: '/dev/fuse', container_path: '/dev/fuse', permissions: 'rwm' }],
    });
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /^node character special file a:e5$/m);
    assert.match(r.out, /^opened$/m);
    if (existsSync('/sys/fs/cgroup/devices')) assert.match(r.out, /^c 10:229 rwm$/m);
  });

  it('read-only permissions: the rule says r, and opening for writing is refused', async function () {
    if (!existsSync('/dev/fuse') || !existsSync('/sys/fs/cgroup/devices')) this.skip();
    const r = await run(`exec 3</dev/fuse && echo read-ok; (exec 4>/dev/fuse) 2>/dev/null && echo write-ok; ${DEVICES_LIST}`, {
      devices: [{ host_path: '/dev/fuse', container_path: '/dev/fuse', permissions: 'r' }],
    });
    assert.match(r.out, /^read-ok$/m);
    assert.doesNotMatch(r.out, /write-ok/);
    assert.match(r.out, /^c 10:229 r$/m);
  });

  it('a symlink to a device is followed; the container path stays as asked', async function () {
    if (!existsSync('/dev/fuse')) this.skip();
    const dir = mkdtempSync(join(tmpdir(), 'berth-devlink-'));
    try {
      symlinkSync('/dev/fuse', join(dir, 'fuse-link'));
      const r = await run(`stat -c '%F %t:%T' /dev/myfuse; test -L /dev/myfuse || echo not-a-link`, {
        devices: [{ host_path: join(dir, 'fuse-link'), container_path: '/dev/myfuse', permissions: 'rw' }],
      });
      assert.match(r.out, /^character special file a:e5$/m);
      assert.match(r.out, /^not-a-link$/m);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a directory of devices: every node under it appears under the container path', async function () {
    if (!existsSync('/dev/net/tun')) this.skip();
    const r = await run(`stat -c '%F %t:%T' /dev/vnet/tun; ${DEVICES_LIST}`, {
      devices: [{ host_path: '/dev/net', container_path: '/dev/vnet', permissions: 'rw' }],
    });
    assert.match(r.out, /^character special file a:c8$/m);
    // runc's own defaults already allow the tun device (rwm), so the rule shows as at least rw.
    if (existsSync('/sys/fs/cgroup/devices')) assert.match(r.out, /^c 10:200 rwm?$/m);
  });

  it('a bind mount whose host path does not exist: made as a directory (0755), as containerd and CRI-O do', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'berth-missing-src-'));
    try {
      const src = join(dir, 'a', 'b');
      const r = await run(`echo hi > /data/f && echo wrote`, { mounts: [{ container_path: '/data', host_path: src }] });
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, /^wrote$/m);
      assert.ok(statSync(src).isDirectory());
      assert.equal(statSync(src).mode & 0o777, 0o755);
      assert.equal(readFileSync(join(src, 'f'), 'utf8'), 'hi\n');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a pod log directory with non-ASCII characters: the container runs and logs there', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'berth-logs-utf8-')), 'café ☕ \uFFFD');
    const { pod_sandbox_id: p } = await b.runtime.RunPodSandbox({
      config: {
        metadata: { name: 'utf8-logs', namespace: 'test', uid: 'utf8-logs', attempt: 0 },
        log_directory: dir,
        linux: { security_context: { namespace_options: { network: 'NODE' } } },
      },
    });
    try {
      const { container_id: id } = await b.runtime.CreateContainer({
        pod_sandbox_id: p,
        config: { metadata: { name: 'u', attempt: 0 }, image: { image: reg.fx.busybox.ref }, command: ['echo', 'héllo'], log_path: 'ü.log' } as never,
        sandbox_config: { metadata: { name: 'utf8-logs', namespace: 'test', uid: 'utf8-logs', attempt: 0 }, log_directory: dir },
      });
      const r = await runToExit(b, id);
      assert.equal(r.code, 0);
      assert.equal(r.out, 'héllo');
      assert.ok(existsSync(join(dir, 'ü.log')));
    } finally {
      await b.runtime.RemovePodSandbox({ pod_sandbox_id: p });
      rmSync(dirname(dir), { recursive: true, force: true });
    }
  });

  it('bad devices are INVALID_ARGUMENT naming the field, and leave nothing behind', async () => {
    const cases: Array<[Record<string, string>, RegExp]> = [
      [{ host_path: '/dev/berth-missing', container_path: '/dev/x', permissions: 'rw' }, /devices\[0\]\.host_path "\/dev\/berth-missing" does not exist/],
      [{ host_path: '/etc/hostname', container_path: '/dev/x', permissions: 'rw' }, /devices\[0\]\.host_path "\/etc\/hostname" is not a device node/],
      [{ host_path: '/dev/null', container_path: 'dev/x', permissions: 'rw' }, /devices\[0\]\.container_path/],
      [{ host_path: '/dev/null', container_path: '/dev/../etc/x', permissions: 'rw' }, /devices\[0\]\.container_path .*"\.\."/],
      [{ host_path: '/dev/null', container_path: '/dev/x', permissions: 'rwx' }, /devices\[0\]\.permissions "rwx"/],
    ];
    const before = (await b.runtime.ListContainers({})).containers.length;
    for (const [d, re] of cases) {
      const e = await grpcError(create({ command: ['true'], devices: [d] }));
      assert.equal(e.code, status.INVALID_ARGUMENT, e.details);
      assert.match(e.details, re);
    }
    assert.equal((await b.runtime.ListContainers({})).containers.length, before);
  });

  it('a privileged container sees the host devices (/dev/net/tun) and a writable /sys', async () => {
    const r = await run(`test -c /dev/net/tun && echo tun; test -c /dev/fuse && echo fuse; grep -E ' /sys (sysfs|cgroup) ' /proc/mounts; ${DEVICES_LIST}`, {
      linux: { security_context: { privileged: true, namespace_options: { network: 'NODE', pid: 'CONTAINER' } } },
    });
    if (existsSync('/dev/net/tun')) assert.match(r.out, /^tun$/m);
    if (existsSync('/dev/fuse')) assert.match(r.out, /^fuse$/m);
    assert.match(r.out, /^sysfs \/sys sysfs rw,/m);
    if (existsSync('/sys/fs/cgroup/devices')) assert.match(r.out, /^a \*:\* rwm$/m);
  });

  it('stop_signal SIGUSR1 reaches the container on StopContainer, and ContainerStatus reports it', async () => {
    const id = await create({
      command: ['sh', '-c', "trap 'exit 42' USR1; trap 'exit 15' TERM; echo ready; while true; do sleep 0.1; done"],
      stop_signal: 'SIGNAL_SIGUSR1',
    });
    await b.runtime.StartContainer({ container_id: id });
    assert.equal((await b.runtime.ContainerStatus({ container_id: id })).status!.stop_signal, 'SIGNAL_SIGUSR1');
    const st0 = (await b.runtime.ContainerStatus({ container_id: id })).status!;
    await until(async () => (readFileSync(st0.log_path, 'utf8').includes('ready') ? true : undefined));
    await b.runtime.StopContainer({ container_id: id, timeout: 20 });
    const st = (await b.runtime.ContainerStatus({ container_id: id })).status!;
    assert.equal(st.state, 'CONTAINER_EXITED');
    assert.equal(st.exit_code, 42, 'the USR1 trap ran');
    await b.runtime.RemoveContainer({ container_id: id });
  });

  /** Pushes busybox with `replace` entries (by path) swapped in and USER `user`; its reference. */
  async function pushBusyboxWith(name: string, user: string, replace: LayerEntry[]): Promise<string> {
    const pusher = new RegistryPusher(reg.registry.host);
    try {
      const paths = new Set(replace.map((e) => e.path));
      const layer = await buildLayer([...busyboxEntries().filter((e) => !paths.has(e.path)), ...replace], 'gzip');
      const image = buildImage({ layers: [layer], config: { Env: [`PATH=${DEFAULT_PATH}`], Cmd: ['sh'], User: user } });
      await pusher.pushImage(`berth-test/${name}`, image, ['latest']);
    } finally {
      pusher.close();
    }
    const ref = `${reg.registry.host}/berth-test/${name}:latest`;
    await b.image.PullImage({ image: { image: ref } });
    return ref;
  }

  it('runAsNonRoot: an all-digit image USER above the largest uid is no uid in ImageStatus, and CreateContainer refuses it (never the passwd NAME of those digits, uid 0)', async () => {
    const passwd = 'root:x:0:0:root:/root:/bin/sh\n4294967296:x:0:0::/root:/bin/sh\n';
    const ref = await pushBusyboxWith('digits-user', '4294967296', [{ path: 'etc/passwd', type: 'file', content: passwd }]);
    const img = (await b.image.ImageStatus({ image: { image: ref } })).image!;
    // kubelet's runAsNonRoot check refuses an image user it cannot see as a number, instead of passing a non-zero uid.
    assert.equal(img.uid, null);
    assert.equal(img.username, '4294967296');
    const e = await grpcError(create({ command: ['id', '-u'] }, ref));
    assert.equal(e.code, status.INVALID_ARGUMENT);
    assert.match(e.details, /image USER "4294967296": uid 4294967296 is above 4294967295/);
    // What kubelet sends without runAsNonRoot: the reported username as run_as_username.
    const e2 = await grpcError(create({ command: ['id', '-u'], linux: { security_context: { run_as_username: '4294967296' } } }, ref));
    assert.equal(e2.code, status.INVALID_ARGUMENT);
    assert.match(e2.details, /run_as_username "4294967296" is all digits, so a uid, and above 4294967295/);
  });

  /** What CreateContainer leaves of containers under berthd `b`: rows, bundles, rootfs mounts, active snapshots, conmon dirs. */
  function containerTraces(): Record<string, string[]> {
    const ls = (d: string): string[] => (existsSync(d) ? readdirSync(d).sort() : []);
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[4] ?? '')
      .filter((m) => m.startsWith(b.root + '/containers/') || m.startsWith(b.root + '/snapshots/'));
    return { bundles: ls(join(b.root, 'containers')), snapshots: ls(join(b.root, 'snapshots')), conmon: ls(join(b.state, 'conmon')), mounts };
  }

  it('an image whose /etc/passwd is a FIFO and /etc/group a device node: refused at once (FAILED_PRECONDITION naming the file), berthd does not hang', async () => {
    const special: LayerEntry[] = [
      { path: 'etc/passwd', type: 'fifo' },
      { path: 'etc/group', type: 'character-device', devmajor: 1, devminor: 5 },
    ];
    const ref = await pushBusyboxWith('special-idfiles', 'berth', special);
    const before = containerTraces();
    const rows = (await b.runtime.ListContainers({})).containers!.length;
    // More creates at once than libuv has pool threads (4): a blocking open of the FIFO held one each, for ever.
    const errs = await Promise.all([0, 1, 2, 3, 4, 5].map(() => grpcError(create({ command: ['true'] }, ref))));
    for (const e of errs) {
      assert.equal(e.code, status.FAILED_PRECONDITION, e.details);
      assert.match(e.details, /the image's \/etc\/(passwd is a FIFO \(named pipe\)|group is a character device), not a regular file/);
    }
    assert.deepEqual(containerTraces(), before, 'nothing of the refused containers is left');
    assert.equal((await b.runtime.ListContainers({})).containers!.length, rows);
    // berthd's pool is free: a container is made and run, reading its image's files.
    const r = await run('echo alive');
    assert.deepEqual(r, { code: 0, out: 'alive' });
  });

  it('a numeric USER and a FIFO /etc/passwd (also behind an absolute symlink): refused before the runtime, which would block in it until the create timeout', async () => {
    // runc 1.1 opens the container's /etc/passwd and /etc/group at create whatever the user:
    // were berth to hand it this bundle, CreateContainer would hang for its 60 s timeout.
    const cases: Array<[string, LayerEntry[], RegExp]> = [
      ['fifo-passwd-numeric', [{ path: 'etc/passwd', type: 'fifo' }], /the image's \/etc\/passwd is a FIFO \(named pipe\), not a regular file/],
      [
        'fifo-link-group-numeric',
        [
          { path: 'etc/group', type: 'symlink', linkname: '/srv/group-fifo' },
          { path: 'srv', type: 'directory' },
          { path: 'srv/group-fifo', type: 'fifo' },
        ],
        /the image's \/etc\/group \(resolved to \/srv\/group-fifo\) is a FIFO \(named pipe\), not a regular file/,
      ],
    ];
    for (const [name, entries, message] of cases) {
      const ref = await pushBusyboxWith(name, '1000:1000', entries);
      const before = containerTraces();
      for (const attempt of ['first (read from the mounted rootfs)', 'second (the refusal is known)']) {
        const t0 = Date.now();
        const e = await grpcError(create({ command: ['true'] }, ref));
        const took = Date.now() - t0;
        assert.equal(e.code, status.FAILED_PRECONDITION, `${name}, ${attempt}: ${e.details}`);
        assert.match(e.details, message);
        assert.match(e.details, /rebuild the image with a regular file/);
        // Well under CreateContainer's 60 s runtime timeout: no runtime was waited for.
        assert.ok(took < 15_000, `${name}, ${attempt}: answered in ${took} ms`);
        assert.deepEqual(containerTraces(), before, `${name}, ${attempt}: nothing is left`);
      }
    }
  });

  it('an image whose STOPSIGNAL does not parse can still be stopped: SIGTERM, with a warning', async () => {
    const pusher = new RegistryPusher(reg.registry.host);
    let ref: string;
    try {
      const layer = await buildLayer(busyboxEntries(), 'gzip');
      const image = buildImage({ layers: [layer], config: { Env: [`PATH=${DEFAULT_PATH}`], Cmd: ['sh'], StopSignal: 'SIGBOGUS' } });
      await pusher.pushImage('berth-test/bad-stopsignal', image, ['latest']);
      ref = `${reg.registry.host}/berth-test/bad-stopsignal:latest`;
    } finally {
      pusher.close();
    }
    await b.image.PullImage({ image: { image: ref } });
    const id = await create({ command: ['sh', '-c', "trap 'exit 7' TERM; echo ready; while true; do sleep 0.1; done"] }, ref);
    await b.runtime.StartContainer({ container_id: id });
    const st0 = (await b.runtime.ContainerStatus({ container_id: id })).status!;
    assert.equal(st0.stop_signal, 'SIGNAL_SIGTERM');
    await until(async () => (readFileSync(st0.log_path, 'utf8').includes('ready') ? true : undefined));
    await b.runtime.StopContainer({ container_id: id, timeout: 20 });
    const st = (await b.runtime.ContainerStatus({ container_id: id })).status!;
    assert.equal(st.exit_code, 7, 'SIGTERM was sent');
    assert.ok(b.records().some((r) => r.level === 'warn' && /SIGBOGUS/.test(String(r.warning))));
    await b.runtime.RemoveContainer({ container_id: id });
  });

  it('AppArmor on a host without it: Localhost and RuntimeDefault refused (FAILED_PRECONDITION), Unconfined runs', async function () {
    if (existsSync('/sys/module/apparmor')) this.skip();
    for (const sc of [
      { apparmor: { profile_type: 'Localhost', localhost_ref: 'localhost/my-profile' } },
      { apparmor: { profile_type: 'RuntimeDefault' } },
      { apparmor_profile: 'localhost/my-profile' },
    ]) {
      const e = await grpcError(create({ command: ['true'], linux: { security_context: sc } }));
      assert.equal(e.code, status.FAILED_PRECONDITION, JSON.stringify(sc));
      assert.match(e.details, /apparmor is not supported/);
    }
    const r = await run('echo ran', { linux: { security_context: { apparmor: { profile_type: 'Unconfined' } } } });
    assert.equal(r.out, 'ran');
  });

  it('SELinux options on a host without SELinux: the containers run, one warning, shown in verbose status', async function () {
    if (existsSync('/sys/fs/selinux/enforce')) this.skip();
    const sc = { selinux_options: { user: 'system_u', role: 'system_r', type: 'container_t', level: 's0:c1,c2' } };
    const ids = [
      await create({ command: ['sleep', '60'], linux: { security_context: sc } }),
      await create({ command: ['true'], linux: { security_context: sc } }),
    ];
    const info = JSON.parse((await b.runtime.ContainerStatus({ container_id: ids[0]!, verbose: true })).info.info!) as { selinux?: string };
    assert.match(info.selinux ?? '', /SELinux is not enabled on this host/);
    const warnings = b.records().filter((r) => r.level === 'warn' && /selinux_options ignored/.test(String(r.msg)));
    assert.equal(warnings.length, 1);
    for (const id of ids) await b.runtime.RemoveContainer({ container_id: id });
  });

  it('a pod user namespace cannot share the host network', async () => {
    const userns = await grpcError(
      b.runtime.RunPodSandbox({
        config: {
          metadata: { name: 'userns', namespace: 'test', uid: 'userns', attempt: 0 },
          linux: {
            security_context: {
              namespace_options: { network: 'NODE', userns_options: { mode: 'POD', uids: [{ host_id: 100000, container_id: 0, length: 65536 }] } },
            },
          },
        },
      }),
    );
    assert.equal(userns.code, status.INVALID_ARGUMENT);
    assert.match(userns.details, /userns_options: a pod user namespace cannot be combined with the host's network namespace/);
  });
});
