/**
 * berthd doctor's judging (pure) and its node scan over a root and state dir the test
 * lays out by hand (no mounts, no cgroups, no root needed): what the database knows is
 * known, what it does not is leaked with its repair, and work in flight is judged by
 * whether berthd runs.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultConfig, type BerthConfig } from '../../../src/config/schema.js';
import type { DbView } from '../../../src/doctor/db-view.js';
import { findingOf, judge, type Observation } from '../../../src/doctor/findings.js';
import { scanNode, slicePath } from '../../../src/doctor/node-scan.js';

const POD = 'a'.repeat(64);
const CTR = 'b'.repeat(64);
const GONE = 'c'.repeat(64);

function view(over: Partial<DbView> = {}): DbView {
  return {
    sandboxes: new Map([[POD, 'ready']]),
    containers: new Map([[CTR, 'running']]),
    snapshots: new Map([['1', 'committed']]),
    blobs: new Set(['sha256:' + '1'.repeat(64)]),
    unreferencedBlobs: [],
    cgroupParents: new Set(['/kubepods/pod1']),
    networks: [],
    containerPids: new Map(),
    ...over,
  };
}

describe('doctor: judging findings (pure)', () => {
  it('knows a pod or container ID the database holds, and calls any other leaked', () => {
    assert.equal(judge({ kind: 'berth-id', id: POD }, view(), true).known, true);
    assert.equal(judge({ kind: 'berth-id', id: CTR }, view(), false).known, true);
    const gone = judge({ kind: 'berth-id', id: GONE }, view(), true);
    assert.equal(gone.known, false);
    assert.match(gone.why, /no pod sandbox or container cccccccccccc/);
    assert.equal(judge({ kind: 'none' }, view(), true).known, false);
  });

  it('judges work in flight, a fresh blob file and an unreferenced blob row by whether berthd runs', () => {
    assert.equal(judge({ kind: 'in-flight' }, view(), true).known, true);
    assert.equal(judge({ kind: 'in-flight' }, view(), false).known, false);
    const digest = 'sha256:' + '2'.repeat(64);
    assert.equal(judge({ kind: 'blob-file', digest, recent: true }, view(), true).known, true, 'a download between rename and row');
    assert.equal(judge({ kind: 'blob-file', digest, recent: true }, view(), false).known, false);
    assert.equal(judge({ kind: 'blob-file', digest, recent: false }, view(), true).known, false);
    assert.equal(judge({ kind: 'unreferenced-blob', digest }, view(), true).known, true, 'a pull in flight may hold it');
    assert.match(judge({ kind: 'unreferenced-blob', digest }, view(), false).why, /orphaned/);
  });

  it('a leaked finding carries its repair and says how; a known one carries none', () => {
    const o: Observation = {
      category: 'exit file',
      subject: `/run/berth/exits/${GONE}`,
      owner: { kind: 'berth-id', id: GONE },
      detail: 'exit code 0',
      repair: { kind: 'remove', path: `/run/berth/exits/${GONE}` },
    };
    const leaked = findingOf(o, view(), true);
    assert.equal(leaked.status, 'leaked');
    assert.equal(leaked.owner, GONE);
    assert.deepEqual(leaked.repair, o.repair);
    assert.match(leaked.action, /^remove \(berthd doctor --repair\)$/);
    assert.match(leaked.detail, /^exit code 0; no pod sandbox/);
    const known = findingOf({ ...o, owner: { kind: 'berth-id', id: CTR } }, view(), true);
    assert.equal(known.status, 'known');
    assert.equal(known.action, 'none');
    assert.equal(known.repair, undefined);
  });

  it('expands systemd slice names to their cgroup paths', () => {
    assert.equal(slicePath('kubepods-burstable-pod1.slice'), '/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice');
    assert.equal(slicePath('system.slice'), '/system.slice');
    assert.equal(slicePath('-.slice'), '/');
    assert.equal(slicePath(''), '/');
  });
});

describe('doctor: node scan over hand-made dirs', () => {
  let dir: string;
  let config: BerthConfig;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'berth-doctor-unit-'));
    config = { ...defaultConfig(), root: join(dir, 'root'), state: join(dir, 'state'), cni: { conf_dir: join(dir, 'cni'), bin_dirs: [] } };
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  function touch(path: string, text = ''): void {
    mkdirSync(join(path, '..'), { recursive: true });
    writeFileSync(path, text);
  }

  it('finds the per-pod and per-container dirs and files, snapshots, downloads, blobs and IPAM reservations', () => {
    const { root, state } = config;
    for (const id of [CTR, GONE]) {
      mkdirSync(join(root, 'containers', id, 'rootfs'), { recursive: true });
      touch(join(state, 'exits', id), '0');
      mkdirSync(join(state, 'runtime', 'runc', id), { recursive: true });
    }
    mkdirSync(join(root, 'sandboxes', POD), { recursive: true });
    mkdirSync(join(root, 'sandboxes', 'not-an-id'), { recursive: true });
    touch(join(state, 'ns', 'stray-pin'));
    mkdirSync(join(root, 'snapshots', '1'), { recursive: true });
    mkdirSync(join(root, 'snapshots', '7'), { recursive: true });
    touch(join(root, 'content', 'ingest', 'tmp-1'));
    const kept = '1'.repeat(64);
    const stray = '9'.repeat(64);
    touch(join(root, 'content', 'blobs', 'sha256', kept), 'x');
    touch(join(root, 'content', 'blobs', 'sha256', stray), 'y');
    const old = new Date(Date.now() - 3600_000);
    utimesSync(join(root, 'content', 'blobs', 'sha256', stray), old, old);
    const ipam = join(dir, 'ipam');
    touch(join(ipam, 'podnet', '10.1.0.2'), `${POD}\r\neth0`);
    touch(join(ipam, 'podnet', '10.1.0.3'), `${GONE}\r\neth0`);
    touch(join(ipam, 'podnet', '10.1.0.4'), `someone-else\r\neth0`);
    touch(join(ipam, 'podnet', 'last_reserved_ip.0'), '10.1.0.4');
    touch(join(ipam, 'podnet', 'lock'));
    touch(
      join(config.cni.conf_dir, '10-pod.conflist'),
      JSON.stringify({ cniVersion: '1.0.0', name: 'podnet', plugins: [{ type: 'bridge', ipam: { type: 'host-local', dataDir: ipam } }] }),
    );

    const obs = scanNode({
      config,
      cgroupParents: new Set(),
      networks: [{ cniVersion: '1.0.0', name: 'podnet', plugins: [{ type: 'bridge', ipam: { type: 'host-local', dataDir: ipam } }], file: 'x' }],
    });
    const status = (running: boolean): Record<string, string> =>
      Object.fromEntries(obs.map((o) => [`${o.category} ${o.subject.slice(dir.length)}`, findingOf(o, view(), running).status]));
    assert.deepEqual(status(true), {
      [`bundle /root/containers/${CTR}`]: 'known',
      [`bundle /root/containers/${GONE}`]: 'leaked',
      [`exit file /state/exits/${CTR}`]: 'known',
      [`exit file /state/exits/${GONE}`]: 'leaked',
      [`runtime state /state/runtime/runc/${CTR}`]: 'known',
      [`runtime state /state/runtime/runc/${GONE}`]: 'leaked',
      [`pod dir /root/sandboxes/${POD}`]: 'known',
      'pod dir /root/sandboxes/not-an-id': 'leaked',
      'namespace pin /state/ns/stray-pin': 'leaked',
      'snapshot /root/snapshots/1': 'known',
      'snapshot /root/snapshots/7': 'leaked',
      'download /root/content/ingest/tmp-1': 'known',
      [`blob /root/content/blobs/sha256/${kept}`]: 'known',
      [`blob /root/content/blobs/sha256/${stray}`]: 'leaked',
      'ipam reservation /ipam/podnet/10.1.0.2': 'known',
      'ipam reservation /ipam/podnet/10.1.0.3': 'leaked',
    });
    assert.equal(status(false)['download /root/content/ingest/tmp-1'], 'leaked', 'a download left over once berthd stopped');
    const runtime = obs.find((o) => o.subject.endsWith(`runc/${GONE}`))!;
    assert.deepEqual(runtime.repair, { kind: 'runtime-delete', handler: 'runc', root: join(config.state, 'runtime', 'runc'), id: GONE, path: runtime.subject });
  });

  it('finds nothing in dirs that do not exist (a state dir after a reboot)', () => {
    assert.deepEqual(scanNode({ config, cgroupParents: new Set(), networks: [] }), []);
  });
});
