/**
 * CDI (src/containers/cdi.ts): qualified names, spec files in JSON and YAML, directory
 * priority, conflicts, and the edits applied to a generated spec. Runs without root on
 * spec files in a temp dir.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKind } from '../../../src/common/errors.js';
import { applyCdiEdits, CdiRegistry, parseQualifiedName, parseSpec, requestedCdiDevices } from '../../../src/containers/cdi.js';
import { generateSpec } from '../../../src/containers/spec.js';
import { config, input } from '../../helpers/container-spec.js';

describe('containers: CDI', () => {
  let dir: string;
  let etc: string;
  let run: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'berth-cdi-'));
    etc = join(dir, 'etc-cdi');
    run = join(dir, 'run-cdi');
    mkdirSync(etc);
    mkdirSync(run);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const vendorJson = (over: Record<string, unknown> = {}): string =>
    JSON.stringify({
      cdiVersion: '0.6.0',
      kind: 'vendor.example/gpu',
      containerEdits: { env: ['VENDOR_LIB=/usr/lib/vendor'] },
      devices: [
        {
          name: '0',
          containerEdits: {
            deviceNodes: [{ path: '/dev/vendor0', hostPath: '/dev/null' }],
            env: ['VENDOR_VISIBLE=0'],
            mounts: [{ hostPath: '/usr/lib/x', containerPath: '/usr/lib/vendor', options: ['ro', 'bind'] }],
            hooks: [{ hookName: 'createContainer', path: '/usr/bin/vendor-hook', args: ['vendor-hook', 'create'] }],
            additionalGids: [44],
          },
        },
        { name: '1', containerEdits: { deviceNodes: [{ path: '/dev/vendor1', permissions: 'rw' }], env: ['VENDOR_VISIBLE=1'] } },
      ],
      ...over,
    });

  it('parses qualified names and refuses malformed ones with the field named', () => {
    assert.deepEqual(parseQualifiedName('vendor.example/gpu=0', 'f'), { kind: 'vendor.example/gpu', name: '0' });
    assert.deepEqual(parseQualifiedName('nvidia.com/gpu=GPU-1a2b:3', 'f'), { kind: 'nvidia.com/gpu', name: 'GPU-1a2b:3' });
    for (const bad of ['gpu=0', 'vendor.example/gpu', 'vendor.example/gpu=', '/gpu=0', 'vendor.example/a/b=0', 'Vendor.example/gpu=0']) {
      assert.throws(
        () => parseQualifiedName(bad, 'CDI_devices[0].name'),
        (e: unknown) => isKind(e, 'InvalidArgument') && /CDI_devices\[0\]\.name/.test((e as Error).message),
        bad,
      );
    }
  });

  it('collects devices from CDI_devices and cdi.k8s.io annotations, each once', () => {
    const names = requestedCdiDevices([{ name: 'vendor.example/gpu=0' }], {
      'cdi.k8s.io/b': 'vendor.example/gpu=1, vendor.example/gpu=0',
      'cdi.k8s.io/a': 'vendor.example/nic=eth1',
      'other.io/x': 'not=cdi',
    });
    assert.deepEqual(names, ['vendor.example/gpu=0', 'vendor.example/nic=eth1', 'vendor.example/gpu=1']);
    assert.throws(() => requestedCdiDevices([], { 'cdi.k8s.io/x': 'junk' }), /annotations\["cdi\.k8s\.io\/x"\]/);
  });

  it('resolves devices from JSON and YAML spec files, with spec-wide edits applied once', () => {
    writeFileSync(join(etc, 'vendor.json'), vendorJson());
    writeFileSync(
      join(etc, 'nic.yaml'),
      ['cdiVersion: "0.5.0"', 'kind: vendor.example/nic', 'devices:', '  - name: eth1', '    containerEdits:', '      env: ["NIC=eth1"]', ''].join('\n'),
    );
    const reg = new CdiRegistry([etc, run]);
    const edits = reg.resolve(['vendor.example/gpu=0', 'vendor.example/gpu=1', 'vendor.example/nic=eth1']);
    assert.deepEqual(edits.env, ['VENDOR_LIB=/usr/lib/vendor', 'VENDOR_VISIBLE=0', 'VENDOR_VISIBLE=1', 'NIC=eth1']);
    assert.deepEqual(edits.deviceNodes, [
      { host_path: '/dev/null', container_path: '/dev/vendor0', permissions: 'rwm' },
      { host_path: '/dev/vendor1', container_path: '/dev/vendor1', permissions: 'rw' },
    ]);
    assert.deepEqual(edits.mounts, [{ destination: '/usr/lib/vendor', type: 'bind', source: '/usr/lib/x', options: ['ro', 'bind'] }]);
    assert.deepEqual(edits.hooks, { createContainer: [{ path: '/usr/bin/vendor-hook', args: ['vendor-hook', 'create'] }] });
    assert.deepEqual(edits.additionalGids, [44]);
  });

  it('names every unknown device (NotFound) and says which spec files could not be read', () => {
    writeFileSync(join(etc, 'vendor.json'), vendorJson());
    writeFileSync(join(etc, 'broken.json'), '{"cdiVersion": "0.6.0", "kind": "nope"');
    const reg = new CdiRegistry([etc, run]);
    assert.throws(
      () => reg.resolve(['vendor.example/gpu=0', 'vendor.example/gpu=7', 'other.example/x=y']),
      (e: unknown) =>
        isKind(e, 'NotFound') &&
        /"vendor\.example\/gpu=7", "other\.example\/x=y" not found/.test((e as Error).message) &&
        /broken\.json/.test((e as Error).message),
    );
  });

  it('a later directory wins; a device defined twice in one directory is refused', () => {
    writeFileSync(join(etc, 'vendor.json'), vendorJson());
    writeFileSync(join(run, 'vendor.json'), vendorJson({ containerEdits: undefined, devices: [{ name: '0', containerEdits: { env: ['FROM_RUN=1'] } }] }));
    const reg = new CdiRegistry([etc, run]);
    assert.deepEqual(reg.resolve(['vendor.example/gpu=0']).env, ['FROM_RUN=1']);
    // /etc's device 1 is still there: the override is per device.
    assert.deepEqual(reg.resolve(['vendor.example/gpu=1']).env, ['VENDOR_LIB=/usr/lib/vendor', 'VENDOR_VISIBLE=1']);

    writeFileSync(join(run, 'again.json'), vendorJson({ containerEdits: undefined, devices: [{ name: '0', containerEdits: {} }] }));
    assert.throws(
      () => reg.resolve(['vendor.example/gpu=0']),
      (e: unknown) => isKind(e, 'FailedPrecondition') && /defined twice/.test((e as Error).message),
    );
  });

  it('notices a changed spec file (re-read by modification time)', () => {
    const file = join(etc, 'vendor.json');
    writeFileSync(file, vendorJson());
    const reg = new CdiRegistry([etc]);
    assert.ok(reg.resolve(['vendor.example/gpu=1']));
    writeFileSync(file, vendorJson({ devices: [{ name: '2', containerEdits: {} }] }));
    const later = new Date(Date.now() + 5000);
    utimesSync(file, later, later);
    assert.throws(
      () => reg.resolve(['vendor.example/gpu=1']),
      (e: unknown) => isKind(e, 'NotFound'),
    );
    assert.ok(reg.resolve(['vendor.example/gpu=2']));
  });

  it('refuses spec files with bad fields, naming them', () => {
    const cases: Array<[Record<string, unknown>, RegExp]> = [
      [{ cdiVersion: 'one' }, /cdiVersion/],
      [{ kind: 'nodomain' }, /kind/],
      [{ devices: [] }, /devices: expected a non-empty list/],
      [{ devices: [{ name: 'a', containerEdits: { env: ['NOVALUE'] } }] }, /env: "NOVALUE"/],
      [{ devices: [{ name: 'a', containerEdits: { hooks: [{ hookName: 'whenever', path: '/x' }] } }] }, /hookName "whenever"/],
      [{ devices: [{ name: 'a', containerEdits: { deviceNodes: [{ path: 'dev/x' }] } }] }, /deviceNodes\[0\]\.path/],
      [
        {
          devices: [
            { name: 'a', containerEdits: {} },
            { name: 'a', containerEdits: {} },
          ],
        },
        /appears twice/,
      ],
    ];
    for (const [over, pattern] of cases) assert.throws(() => parseSpec('/x/v.json', vendorJson(over)), pattern);
  });

  it('applies env, mounts, hooks and groups to a generated spec', () => {
    writeFileSync(join(etc, 'vendor.json'), vendorJson());
    const edits = new CdiRegistry([etc]).resolve(['vendor.example/gpu=0']);
    const { spec } = generateSpec(input({ config: config({ envs: [{ key: 'VENDOR_VISIBLE', value: 'none' }] }) }));
    const out = applyCdiEdits(spec, edits);
    assert.ok(out.process.env.includes('VENDOR_VISIBLE=0'));
    assert.ok(!out.process.env.includes('VENDOR_VISIBLE=none'));
    assert.ok(out.process.env.includes('VENDOR_LIB=/usr/lib/vendor'));
    assert.deepEqual(
      out.mounts.find((m) => m.destination === '/usr/lib/vendor'),
      { destination: '/usr/lib/vendor', type: 'bind', source: '/usr/lib/x', options: ['ro', 'bind'] },
    );
    assert.deepEqual(out.hooks?.createContainer, [{ path: '/usr/bin/vendor-hook', args: ['vendor-hook', 'create'] }]);
    assert.ok(out.process.user.additionalGids?.includes(44));
    // Nothing asked: the spec is returned as it was.
    assert.equal(applyCdiEdits(spec, new CdiRegistry([etc]).resolve([])), spec);
  });
});
