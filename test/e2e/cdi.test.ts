/**
 * CDI devices end to end: a vendor's spec file in berthd's [cdi] spec_dirs, a container
 * that asks for its device through CDI_devices or a cdi.k8s.io annotation, and what the
 * container sees: the device node, the vendor's environment and mount, the hook that ran.
 */
import { status } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Berthd } from '../helpers/berthd.js';
import { grpcError } from '../helpers/cri-client.js';
import { useFixtureRegistry } from '../helpers/fixtures.js';
import { runToExit } from '../helpers/run-container.js';

describe('CDI devices', function () {
  this.timeout(90_000);
  const reg = useFixtureRegistry();
  let b: Berthd;
  let dir: string;
  let pod: string;
  let n = 0;

  before(async function () {
    this.timeout(120_000);
    dir = mkdtempSync(join(tmpdir(), 'berth-cdi-e2e-'));
    for (const d of ['etc-cdi', 'run-cdi', 'vendor-lib', 'logs']) mkdirSync(join(dir, d));
    writeFileSync(join(dir, 'vendor-lib', 'libvendor.so'), 'vendor library\n');
    writeFileSync(
      join(dir, 'etc-cdi', 'vendor.yaml'),
      [
        'cdiVersion: "0.6.0"',
        'kind: vendor.example/null',
        'containerEdits:',
        `  mounts: [{hostPath: "${join(dir, 'vendor-lib')}", containerPath: /usr/lib/vendor, options: [ro, rbind]}]`,
        `  hooks: [{hookName: poststart, path: /bin/sh, args: [sh, -c, "echo ran > ${join(dir, 'hook-ran')}"]}]`,
        'devices:',
        '  - name: "0"',
        '    containerEdits:',
        '      deviceNodes: [{path: /dev/vendor0, hostPath: /dev/null, permissions: rw}]',
        '      env: [VENDOR_VISIBLE_DEVICES=0]',
        '  - name: "1"',
        '    containerEdits:',
        '      deviceNodes: [{path: /dev/vendor1, hostPath: /dev/zero}]',
        '      env: [VENDOR_VISIBLE_DEVICES=1]',
        '',
      ].join('\n'),
    );
    b = await Berthd.start({ config: `[cdi]\nspec_dirs = ["${join(dir, 'etc-cdi')}", "${join(dir, 'run-cdi')}"]\n` });
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    ({ pod_sandbox_id: pod } = await b.runtime.RunPodSandbox({
      config: {
        metadata: { name: 'cdi', namespace: 'test', uid: 'cdi', attempt: 0 },
        log_directory: join(dir, 'logs'),
        linux: { security_context: { namespace_options: { network: 'NODE' } } },
      },
    }));
  });
  after(async () => {
    if (pod) await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
    await b?.dispose();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  async function run(script: string, config: Record<string, unknown>): Promise<{ code: number; out: string }> {
    const name = `c${n++}`;
    const { container_id: id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: {
        metadata: { name, attempt: 0 },
        image: { image: reg.fx.busybox.ref },
        log_path: `${name}.log`,
        command: ['sh', '-c', script],
        ...config,
      } as never,
    });
    return runToExit(b, id);
  }

  it('CDI_devices: the device node, the env, the vendor mount (read-only) and the hook', async () => {
    const r = await run(
      'stat -c "node %F %t:%T" /dev/vendor0; echo data > /dev/vendor0 && echo wrote; echo "env $VENDOR_VISIBLE_DEVICES"; cat /usr/lib/vendor/libvendor.so; touch /usr/lib/vendor/x 2>/dev/null || echo ro',
      { CDI_devices: [{ name: 'vendor.example/null=0' }] },
    );
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /^node character special file 1:3$/m, '/dev/null numbers under the vendor path');
    assert.match(r.out, /^wrote$/m);
    assert.match(r.out, /^env 0$/m);
    assert.match(r.out, /^vendor library$/m);
    assert.match(r.out, /^ro$/m);
    assert.equal(readFileSync(join(dir, 'hook-ran'), 'utf8').trim(), 'ran', 'the poststart hook ran on the host');
  });

  it('cdi.k8s.io annotations ask for devices too; a later device wins for the env', async () => {
    const r = await run('ls /dev/vendor0 /dev/vendor1; echo "env $VENDOR_VISIBLE_DEVICES"', {
      annotations: { 'cdi.k8s.io/vendor': 'vendor.example/null=0,vendor.example/null=1' },
    });
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /^\/dev\/vendor0$/m);
    assert.match(r.out, /^\/dev\/vendor1$/m);
    assert.match(r.out, /^env 1$/m);
  });

  it('an unknown device is NOT_FOUND by name and a malformed one INVALID_ARGUMENT; nothing is left', async () => {
    const config = (names: string[]): never =>
      ({ metadata: { name: `bad${n++}`, attempt: 0 }, image: { image: reg.fx.busybox.ref }, CDI_devices: names.map((name) => ({ name })) }) as never;
    const unknown = await grpcError(b.runtime.CreateContainer({ pod_sandbox_id: pod, config: config(['vendor.example/null=0', 'vendor.example/null=9']) }));
    assert.equal(unknown.code, status.NOT_FOUND);
    assert.match(unknown.details, /CDI device "vendor\.example\/null=9" not found/);
    const bad = await grpcError(b.runtime.CreateContainer({ pod_sandbox_id: pod, config: config(['null=0']) }));
    assert.equal(bad.code, status.INVALID_ARGUMENT);
    assert.match(bad.details, /CDI_devices\[0\]\.name/);
    assert.equal((await b.runtime.ListContainers({})).containers.length, 0);
    // Refused before anything of the container was made: no bundle (the harness checks mounts and processes).
    assert.deepEqual(readdirSync(join(b.root, 'containers')), []);
  });
});
