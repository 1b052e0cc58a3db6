/**
 * Image volumes (Mount.image, image_sub_path; KEP-4639) end to end, with berth's own CRI
 * client (crictl v1.29 cannot express them): observed from inside containers, through
 * RemoveImage, and through a berthd restart. The harness's leak check (dispose) fails on
 * any mount left behind.
 */
import { status } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Berthd } from '../helpers/berthd.js';
import { grpcError } from '../helpers/cri-client.js';
import { useFixtureRegistry } from '../helpers/fixtures.js';
import { runToExit } from '../helpers/run-container.js';
import { testBridge } from '../helpers/network.js';

describe('image volumes', function () {
  this.timeout(90_000);
  const reg = useFixtureRegistry();
  let b: Berthd;
  let pod: string;
  let logDir: string;
  let n = 0;

  before(async function () {
    this.timeout(120_000);
    b = await Berthd.start();
    logDir = mkdtempSync(join(tmpdir(), 'berth-imgvol-logs-'));
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    await b.image.PullImage({ image: { image: reg.fx.layered.ref } });
    ({ pod_sandbox_id: pod } = await b.runtime.RunPodSandbox({
      config: {
        metadata: { name: 'imgvol', namespace: 'test', uid: 'imgvol', attempt: 0 },
        hostname: 'imgvol',
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

  const volume = (image: string, containerPath: string, subPath = ''): Record<string, unknown> => ({
    container_path: containerPath,
    host_path: '',
    readonly: true,
    image: { image },
    image_sub_path: subPath,
  });

  async function create(config: Record<string, unknown>): Promise<string> {
    const name = `c${n++}`;
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: { metadata: { name, attempt: 0 }, image: { image: reg.fx.busybox.ref }, log_path: `${name}.log`, ...config } as never,
    });
    return id;
  }

  /** Runs a shell script to its end; its exit code and stdout. */
  async function run(script: string, mounts: Array<Record<string, unknown>>): Promise<{ code: number; out: string }> {
    const id = await create({ command: ['sh', '-c', script], mounts });
    return runToExit(b, id);
  }

  /** berthd's mounts of image volumes (under <state>/mounts) that exist now. */
  const volumeMounts = (): string[] =>
    readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[4] ?? '')
      .filter((p) => p.startsWith(join(b.state, 'mounts') + '/'));

  it("a multi-layer image's merged filesystem, read-only, and a single-layer image", async () => {
    const r = await run(
      [
        'cat /vol/data/plain /vol/data/b',
        'test -e /vol/data/a || echo "a hidden"',
        'test -e /vol/data/rmlater || echo "rmlater hidden"',
        'touch /vol/new 2>/dev/null && echo "wrote" || echo "write refused"',
        'grep " /vol " /proc/self/mounts | grep -q " ro," && echo "ro mount"',
        'test -x /one/bin/busybox && echo "busybox there"',
        'touch /one/new 2>/dev/null || echo "one refused"',
      ].join('; '),
      [volume(reg.fx.layered.ref, '/vol'), volume(reg.fx.busybox.ref, '/one')],
    );
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /^from the uncompressed layer$/m);
    assert.match(r.out, /^b from layer 2$/m);
    assert.match(r.out, /^a hidden$/m);
    assert.match(r.out, /^rmlater hidden$/m);
    assert.match(r.out, /^write refused$/m);
    assert.match(r.out, /^ro mount$/m);
    assert.match(r.out, /^busybox there$/m);
    assert.match(r.out, /^one refused$/m);
    assert.deepEqual(volumeMounts(), [], 'RemoveContainer unmounted the image volumes');
  });

  it('image_sub_path shows only that subdirectory, and a symlink resolves inside the image', async () => {
    const r = await run('ls /sub; cat /file', [volume(reg.fx.layered.ref, '/sub', 'data/dir'), volume(reg.fx.layered.ref, '/file', 'data/link')]);
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out.trim(), 'z\nkeep', 'data/dir holds only z (opaque); data/link → /data/keep of the image');
  });

  it('bad image_sub_path values are INVALID_ARGUMENT naming the field, and leave nothing behind', async () => {
    const before = (await b.runtime.ListContainers({})).containers.length;
    for (const [sub, re] of [
      ['/data', /mounts\[0\]\.image_sub_path "\/data" must be a relative path/],
      ['data/../..', /mounts\[0\]\.image_sub_path .* must not contain "\.\." segments/],
      ['data/nope', /mounts\[0\]\.image_sub_path "data\/nope" does not exist in image sha256:/],
    ] as const) {
      const e = await grpcError(create({ command: ['true'], mounts: [volume(reg.fx.layered.ref, '/v', sub)] }));
      assert.equal(e.code, status.INVALID_ARGUMENT, `${sub}: ${e.details}`);
      assert.match(e.details, re);
    }
    assert.equal((await b.runtime.ListContainers({})).containers.length, before);
    assert.deepEqual(volumeMounts(), []);
    assert.deepEqual(readdirSync(join(b.state, 'mounts')), []);
  });

  it('an absent image is NOT_FOUND, so that kubelet pulls it and retries', async () => {
    const absent = `${reg.registry.host}/berth-test/absent:1`;
    const e = await grpcError(create({ command: ['true'], mounts: [volume(absent, '/v')] }));
    assert.equal(e.code, status.NOT_FOUND);
    assert.match(e.details, /mounts\[0\]\.image: image ".*absent:1" not found; pull it first/);
  });

  it("in a pod with its own user namespace the layers are idmapped: the image's owners show inside", async () => {
    // The root of a pod user namespace is an unprivileged host id that runc must walk the bundle path as.
    chmodSync(b.dir, 0o711);
    const net = testBridge(b, 'bv');
    const base = 65536 * (300 + Math.floor(Math.random() * 100));
    const map = [{ host_id: base, container_id: 0, length: 65536 }];
    const { pod_sandbox_id: upod } = await b.runtime.RunPodSandbox({
      config: {
        metadata: { name: `iv${net.tag}`, namespace: 'test', uid: `iv${net.tag}`, attempt: 0 },
        linux: { security_context: { namespace_options: { pid: 'CONTAINER', userns_options: { mode: 'POD', uids: map, gids: map } } } },
      },
    });
    try {
      const { container_id: id } = await b.runtime.CreateContainer({
        pod_sandbox_id: upod,
        config: {
          metadata: { name: 'uv', attempt: 0 },
          image: { image: reg.fx.busybox.ref },
          command: ['sleep', '600'],
          mounts: [volume(reg.fx.layered.ref, '/vol')],
        } as never,
      });
      await b.runtime.StartContainer({ container_id: id });
      const r = await b.runtime.ExecSync({
        container_id: id,
        cmd: ['sh', '-c', 'stat -c %u:%g /vol/bin/suid /vol/data/dir/z; cat /vol/data/plain; touch /vol/x 2>/dev/null || echo refused'],
        timeout: 10,
      });
      assert.equal(r.stdout.toString(), '0:0\n1000:1000\nfrom the uncompressed layer\nrefused\n', r.stderr.toString());
      await b.runtime.RemoveContainer({ container_id: id });
      assert.deepEqual(volumeMounts(), []);
    } finally {
      await b.runtime.StopPodSandbox({ pod_sandbox_id: upod });
      await b.runtime.RemovePodSandbox({ pod_sandbox_id: upod });
      await net.remove();
    }
  });

  it('RemoveImage is refused while a container uses the image, across a restart, and allowed after RemoveContainer', async () => {
    const id = await create({ command: ['sleep', '600'], mounts: [volume(reg.fx.layered.ref, '/vol')] });
    await b.runtime.StartContainer({ container_id: id });
    let e = await grpcError(b.image.RemoveImage({ image: { image: reg.fx.layered.ref } }));
    assert.equal(e.code, status.FAILED_PRECONDITION);
    assert.match(e.details, new RegExp(`in use as a volume by container ${id} \\(mounts\\[0\\]\\)`));

    // The use is durable: a restarted berthd still refuses, and the volume is still there.
    await b.stop('SIGKILL');
    b = await Berthd.start({ reuse: { dir: b.dir } });
    e = await grpcError(b.image.RemoveImage({ image: { image: reg.fx.layered.ref } }));
    assert.equal(e.code, status.FAILED_PRECONDITION);
    const ls = await b.runtime.ExecSync({ container_id: id, cmd: ['cat', '/vol/data/plain'], timeout: 10 });
    assert.equal(ls.stdout.toString(), 'from the uncompressed layer\n');

    await b.runtime.RemoveContainer({ container_id: id });
    assert.deepEqual(volumeMounts(), []);
    await b.image.RemoveImage({ image: { image: reg.fx.layered.ref } });
    assert.equal((await b.image.ImageStatus({ image: { image: reg.fx.layered.ref } })).image, null);
  });
});
