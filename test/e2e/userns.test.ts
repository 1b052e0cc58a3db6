/**
 * Pods with a user namespace of their own (userns_options mode POD, kubelet's
 * hostUsers: false) and recursive read-only mounts: both made by berthd itself through
 * idmapped and recursive read-only binds, since runc 1.1 can make neither. Observed from
 * inside the containers and from the host; the harness checks that nothing is left.
 */
import { status } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Berthd } from '../helpers/berthd.js';
import { runCleanup, type CleanupStep } from '../helpers/cleanup.js';
import { grpcError } from '../helpers/cri-client.js';
import { useFixtureRegistry } from '../helpers/fixtures.js';
import { testBridge } from '../helpers/network.js';

interface IdMapping {
  host_id: number;
  container_id: number;
  length: number;
}

describe('user namespaces and recursive read-only mounts', function () {
  this.timeout(90_000);
  const reg = useFixtureRegistry();
  const cleanup: CleanupStep[] = [];
  let b: Berthd;
  before(async () => {
    b = await Berthd.start();
    // The root of a pod user namespace is an unprivileged host id that runc must walk the bundle path as.
    chmodSync(b.dir, 0o711);
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
  });
  after(async () => b?.dispose());
  afterEach(() => runCleanup(cleanup));

  // A host range of its own per run, above what distributions give users (subuid).
  const base = 65536 * (200 + Math.floor(Math.random() * 100));
  const podMap: IdMapping[] = [{ host_id: base, container_id: 0, length: 65536 }];

  async function pod(userns?: { mode: 'POD'; uids: IdMapping[]; gids: IdMapping[] }): Promise<string> {
    const net = testBridge(b, 'bu');
    cleanup.push(net.remove);
    const r = net.tag;
    const { pod_sandbox_id: id } = await b.runtime.RunPodSandbox({
      config: {
        metadata: { name: `u${r}`, namespace: 'test', uid: `uid${r}`, attempt: 0 },
        hostname: `u${r}`,
        linux: { security_context: { namespace_options: { pid: 'CONTAINER', ...(userns ? { userns_options: userns } : {}) } } },
      },
    });
    cleanup.push(async () => {
      await b.runtime.StopPodSandbox({ pod_sandbox_id: id });
      await b.runtime.RemovePodSandbox({ pod_sandbox_id: id });
    });
    return id;
  }

  async function container(podId: string, name: string, mounts: Record<string, unknown>[] = []): Promise<string> {
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: podId,
      config: { metadata: { name, attempt: 0 }, image: { image: reg.fx.busybox.ref }, command: ['sleep', '3600'], mounts },
    });
    await b.runtime.StartContainer({ container_id: id });
    return id;
  }

  const sh = async (id: string, script: string): Promise<{ code: number; out: string; err: string }> => {
    const r = await b.runtime.ExecSync({ container_id: id, cmd: ['sh', '-c', script], timeout: 10 });
    return { code: r.exit_code, out: r.stdout.toString(), err: r.stderr.toString() };
  };
  const ok = async (id: string, script: string): Promise<string> => {
    const r = await sh(id, script);
    assert.equal(r.code, 0, `${script}: ${r.err}`);
    return r.out.trim();
  };

  const hostPid = (id: string): number =>
    (JSON.parse(execFileSync('runc', ['--root', join(b.state, 'runtime', 'runc'), 'state', id], { encoding: 'utf8' })) as { pid: number }).pid;

  /** A host directory for volumes, removed after the test. */
  function hostDir(mode: number): string {
    const d = mkdtempSync(join(tmpdir(), 'berth-userns-'));
    chmodSync(d, mode);
    cleanup.push(() => rmSync(d, { recursive: true, force: true }));
    return d;
  }

  it('runs a pod in its own user namespace: the map, image files owned by root, host ids, a shared namespace', async () => {
    const plain = hostDir(0o1777);
    const mapped = hostDir(0o755);
    const podId = await pod({ mode: 'POD', uids: podMap, gids: podMap });
    const a = await container(podId, 'a', [
      { container_path: '/plain', host_path: plain },
      { container_path: '/mapped', host_path: mapped, uidMappings: podMap, gidMappings: podMap },
    ]);
    const c = await container(podId, 'c');
    assert.equal((await ok(a, 'cat /proc/self/uid_map')).split(/\s+/).join(' '), `0 ${base} 65536`);
    assert.equal((await ok(a, 'cat /proc/self/gid_map')).split(/\s+/).join(' '), `0 ${base} 65536`);
    // Image files owned by root are root's inside, and the pod's root may write the rootfs.
    assert.equal(await ok(a, 'stat -c %u:%g /bin/busybox / /etc'), '0:0\n0:0\n0:0');
    await ok(a, 'echo x > /etc/new && echo y >> /etc/passwd');
    // On the host, the container's process runs as the pod's host root.
    const status = readFileSync(`/proc/${hostPid(a)}/status`, 'utf8');
    assert.match(status, new RegExp(`^Uid:\\s+${base}\\s+${base}\\s+${base}\\s+${base}$`, 'm'));
    // A plain volume: what the pod's root writes is owned by its host id.
    await ok(a, 'echo hi > /plain/f');
    assert.equal(statSync(join(plain, 'f')).uid, base);
    // An idmapped volume (mappings on the mount): root-owned on the host is root-owned inside, and back.
    assert.equal(await ok(a, 'stat -c %u /mapped'), '0');
    await ok(a, 'echo hi > /mapped/f');
    assert.equal(statSync(join(mapped, 'f')).uid, 0);
    // sysfs shows the pod's own network, which the pod's user namespace owns: its root may configure it.
    await ok(a, 'ls /sys/class/net/eth0 >/dev/null');
    const pins = join(b.state, 'ns', podId);
    execFileSync('nsenter', [`--user=${join(pins, 'user')}`, `--net=${join(pins, 'net')}`, 'ip', 'link', 'set', 'lo', 'mtu', '60000']);
    // Both containers are in one user namespace, which is not the host's.
    const ns = await ok(a, 'readlink /proc/self/ns/user');
    assert.equal(await ok(c, 'readlink /proc/self/ns/user'), ns);
    assert.notEqual(ns, execFileSync('readlink', ['/proc/self/ns/user'], { encoding: 'utf8' }).trim());
  });

  it('refuses bad mappings, naming the field', async () => {
    const cases: Array<[string, IdMapping[], RegExp]> = [
      [
        'overlap',
        [
          { host_id: base, container_id: 0, length: 65536 },
          { host_id: base + 10, container_id: 65536, length: 10 },
        ],
        /uids\[0\] and .*uids\[1\]: the host ranges overlap/,
      ],
      [
        'gap',
        [
          { host_id: base, container_id: 0, length: 65536 },
          { host_id: base + 70000, container_id: 70000, length: 10 },
        ],
        /uids: the container ranges are not contiguous/,
      ],
      ['short', [{ host_id: base, container_id: 0, length: 1000 }], /uids: 1000 ids mapped; .*at least 65536/],
      ['no root', [{ host_id: base, container_id: 1, length: 65536 }], /uids: container id 0 is not mapped/],
    ];
    for (const [what, uids, msg] of cases) {
      const err = await grpcError(pod({ mode: 'POD', uids, gids: podMap }));
      assert.equal(err.code, status.INVALID_ARGUMENT, what);
      assert.match(err.details, /namespace_options\.userns_options\.uids/, what);
      assert.match(err.details, msg, what);
    }
    // Mappings on a mount of a pod without a user namespace.
    const podId = await pod();
    const err = await grpcError(container(podId, 'x', [{ container_path: '/m', host_path: hostDir(0o755), uidMappings: podMap, gidMappings: podMap }]));
    assert.equal(err.code, status.INVALID_ARGUMENT);
    assert.match(err.details, /mounts\[0\]\.uidMappings/);
  });

  it('honours recursive_read_only: a submount is read-only too, where readonly alone covers only the top', async () => {
    const top = hostDir(0o755);
    mkdirSync(join(top, 'sub'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', join(top, 'sub')]);
    cleanup.push(() => void execFileSync('umount', ['-l', join(top, 'sub')]));
    const podId = await pod();
    const id = await container(podId, 'rro', [
      { container_path: '/rro', host_path: top, readonly: true, recursive_read_only: true },
      { container_path: '/ro', host_path: top, readonly: true },
    ]);
    const rro = await sh(id, 'touch /rro/sub/f');
    assert.notEqual(rro.code, 0);
    assert.match(rro.err, /Read-only file system/);
    assert.notEqual((await sh(id, 'touch /rro/f')).code, 0);
    await ok(id, 'touch /ro/sub/f');
    assert.notEqual((await sh(id, 'touch /ro/f')).code, 0);
    await b.runtime.RemoveContainer({ container_id: id });

    const bad = await grpcError(container(podId, 'bad', [{ container_path: '/rro', host_path: top, recursive_read_only: true }]));
    assert.equal(bad.code, status.INVALID_ARGUMENT);
    assert.match(bad.details, /mounts\[0\]\.recursive_read_only needs readonly/);
    const prop = await grpcError(
      container(podId, 'bad2', [
        { container_path: '/rro', host_path: top, readonly: true, recursive_read_only: true, propagation: 'PROPAGATION_HOST_TO_CONTAINER' },
      ]),
    );
    assert.equal(prop.code, status.INVALID_ARGUMENT);
    assert.match(prop.details, /propagation PROPAGATION_PRIVATE/);
  });
});
