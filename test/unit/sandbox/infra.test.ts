/**
 * The OCI spec of a pod's infra process (pure): what it joins, what it may do.
 */
import assert from 'node:assert/strict';
import { infraSpec, type InfraSpecInput } from '../../../src/sandbox/infra.js';

const base: InfraSpecInput = {
  sandboxId: 'a'.repeat(64),
  rootfs: '/var/lib/berth/sandboxes/x/infra/rootfs',
  infraPath: '/usr/bin/catatonit',
  namespaces: { net: '/run/berth/ns/x/net', ipc: '/run/berth/ns/x/ipc', uts: '/run/berth/ns/x/uts' },
  cgroupDriver: 'cgroupfs',
  cgroupParent: '/kubepods/besteffort/pod1',
  minOomScoreAdj: 0,
};

describe('pod infra spec (pure)', () => {
  it('runs catatonit in pause mode from a read-only bind, in a new PID namespace and the pod’s pinned ones', () => {
    const s = infraSpec(base);
    assert.deepEqual(s.process.args, ['/catatonit', '-P']);
    assert.equal(s.root.readonly, true);
    assert.deepEqual(
      s.mounts.find((m) => m.destination === '/catatonit'),
      { destination: '/catatonit', type: 'bind', source: '/usr/bin/catatonit', options: ['rbind', 'ro', 'nosuid', 'nodev'] },
    );
    assert.ok(
      s.mounts.some((m) => m.destination === '/proc' && m.type === 'proc'),
      'runc needs /proc inside',
    );
    assert.deepEqual(s.linux.namespaces, [
      { type: 'pid' },
      { type: 'mount' },
      { type: 'network', path: '/run/berth/ns/x/net' },
      { type: 'uts', path: '/run/berth/ns/x/uts' },
      { type: 'ipc', path: '/run/berth/ns/x/ipc' },
    ]);
    assert.equal(s.linux.cgroupsPath, `/kubepods/besteffort/pod1/berth-${'a'.repeat(64)}`);
    assert.equal(s.hostname, undefined, 'the UTS namespace is joined, its hostname already set');
  });

  it('is unprivileged: 65535, no capabilities, no_new_privs, RuntimeDefault seccomp, no devices', () => {
    const s = infraSpec(base);
    assert.deepEqual(s.process.user, { uid: 65535, gid: 65535 });
    for (const set of Object.values(s.process.capabilities!)) assert.deepEqual(set, []);
    assert.equal(s.process.noNewPrivileges, true);
    assert.equal(s.linux.seccomp?.defaultAction, 'SCMP_ACT_ERRNO');
    assert.ok(!s.linux.seccomp!.syscalls!.some((r) => r.action === 'SCMP_ACT_ALLOW' && r.names.includes('mount')), 'mount needs CAP_SYS_ADMIN, which it lacks');
    assert.deepEqual(s.linux.resources.devices, [{ allow: false, access: 'rwm' }]);
    assert.ok(s.linux.maskedPaths.includes('/proc/kcore'));
  });

  it('host network and host IPC: joins none, so the host’s are used', () => {
    const s = infraSpec({ ...base, namespaces: {} });
    assert.deepEqual(s.linux.namespaces, [{ type: 'pid' }, { type: 'mount' }]);
  });

  it('asks for oom_score_adj -998 as kubelet’s pause does, clamped to berthd’s own', () => {
    assert.equal(infraSpec(base).process.oomScoreAdj, 0);
    assert.equal(infraSpec({ ...base, minOomScoreAdj: -999 }).process.oomScoreAdj, -998);
  });

  it('uses the systemd driver’s slice:prefix:name form', () => {
    assert.equal(
      infraSpec({ ...base, cgroupDriver: 'systemd', cgroupParent: 'kubepods-pod1.slice' }).linux.cgroupsPath,
      `kubepods-pod1.slice:berth:${'a'.repeat(64)}`,
    );
  });
});
