/**
 * applySysctls inside real pinned namespaces (root): writes land in the pod's namespaces
 * only, never on the host.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKind } from '../../../src/common/errors.js';
import { mountPoints } from '../../../src/common/mount.js';
import { createPinnedNamespaces, removePinnedNamespaces, type PinnedNamespaces } from '../../../src/sandbox/namespaces.js';
import { applySysctls } from '../../../src/sandbox/sysctls.js';

/** A sysctl's value as seen inside the given namespaces. */
function inside(ns: PinnedNamespaces, path: string): string {
  const args = [...(ns.net ? [`--net=${ns.net}`] : []), ...(ns.ipc ? [`--ipc=${ns.ipc}`] : [])];
  return execFileSync('nsenter', [...args, '--', 'cat', `/proc/sys/${path}`], { encoding: 'utf8' }).trim();
}
const onHost = (path: string): string => readFileSync(`/proc/sys/${path}`, 'utf8').trim();

describe('sandbox: sysctls', () => {
  describe('applySysctls', () => {
    let base: string;
    let ns: PinnedNamespaces;
    beforeEach(async () => {
      base = mkdtempSync(join(tmpdir(), 'berth-sysctl-'));
      ns = await createPinnedNamespaces(join(base, 'pod'), ['net', 'ipc']);
    });
    afterEach(async () => {
      await removePinnedNamespaces(join(base, 'pod'));
      assert.deepEqual(
        mountPoints().filter((p) => p.startsWith(base)),
        [],
      );
      rmSync(base, { recursive: true, force: true });
    });

    it('writes inside the pod namespaces only, with one nsenter', async () => {
      const host = {
        port: onHost('net/ipv4/ip_unprivileged_port_start'),
        somaxconn: onHost('net/core/somaxconn'),
        shmmax: onHost('kernel/shmmax'),
        range: onHost('net/ipv4/ip_local_port_range'),
        rp: onHost('net/ipv4/conf/lo/rp_filter'),
      };
      const t0 = process.hrtime.bigint();
      await applySysctls(ns, {
        'net.ipv4.ip_unprivileged_port_start': '80',
        'net.core.somaxconn': '1234',
        'kernel.shmmax': '123456789',
        'net.ipv4.ip_local_port_range': '20000 30000',
        'net/ipv4/conf/lo/rp_filter': '2',
      });
      console.log(`      applySysctls (5 sysctls, net+ipc) ${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(1)} ms`);
      assert.equal(inside(ns, 'net/ipv4/ip_unprivileged_port_start'), '80');
      assert.equal(inside(ns, 'net/core/somaxconn'), '1234');
      assert.equal(inside(ns, 'kernel/shmmax'), '123456789');
      assert.equal(inside(ns, 'net/ipv4/ip_local_port_range'), '20000\t30000');
      assert.equal(inside(ns, 'net/ipv4/conf/lo/rp_filter'), '2');
      assert.equal(onHost('net/ipv4/ip_unprivileged_port_start'), host.port);
      assert.equal(onHost('net/core/somaxconn'), host.somaxconn);
      assert.equal(onHost('kernel/shmmax'), host.shmmax);
      assert.equal(onHost('net/ipv4/ip_local_port_range'), host.range);
      assert.equal(onHost('net/ipv4/conf/lo/rp_filter'), host.rp);
      // The other pod namespace was not entered for a net-only call, and vice versa.
      await applySysctls({ net: ns.net }, { 'net.core.somaxconn': '99' });
      assert.equal(inside(ns, 'net/core/somaxconn'), '99');
      await applySysctls({ ipc: ns.ipc }, { 'kernel.shmmni': '999' });
      assert.equal(inside(ns, 'kernel/shmmni'), '999');
      assert.notEqual(onHost('kernel/shmmni'), '999');
    });

    it('names the sysctl the kernel refuses', async () => {
      await assert.rejects(applySysctls(ns, { 'net.core.somaxconn': '7', 'net.ipv4.ip_forward': 'abc' }), (err: unknown) => {
        assert.ok(isKind(err, 'InvalidArgument'));
        assert.equal(err.message, 'sysctl "net.ipv4.ip_forward" = "abc": the kernel refused it: Invalid argument');
        return true;
      });
      await assert.rejects(applySysctls(ns, { 'net.ipv4.conf.eth9.rp_filter': '1' }), (err: unknown) => {
        assert.ok(isKind(err, 'InvalidArgument'));
        assert.match(err.message, /^sysctl "net.ipv4.conf.eth9.rp_filter": not present in the pod's network namespace/);
        return true;
      });
    });

    it('passes values as data, never as shell text', async () => {
      const marker = join(base, 'pwned');
      for (const value of [`1; touch ${marker}`, `$(touch ${marker})`, `\`touch ${marker}\``, `1' ; touch '${marker}`]) {
        await assert.rejects(applySysctls(ns, { 'net.core.somaxconn': value }), (e) => isKind(e, 'InvalidArgument'));
      }
      assert.equal(existsSync(marker), false);
    });

    it('refuses what would reach the host or a namespace that is not pinned', async () => {
      const hostForward = onHost('net/ipv4/ip_forward');
      await assert.rejects(applySysctls({ ipc: ns.ipc }, { 'net.ipv4.ip_forward': '1' }), /no network namespace of its own/);
      await assert.rejects(applySysctls({ net: ns.net }, { 'kernel.shmmax': '1' }), /no IPC namespace of its own/);
      await assert.rejects(applySysctls(ns, { 'kernel.panic': '1' }), /not namespaced/);
      await assert.rejects(applySysctls({ net: join(base, 'nope') }, { 'net.ipv4.ip_forward': '1' }), (e) => isKind(e, 'FailedPrecondition'));
      assert.equal(onHost('net/ipv4/ip_forward'), hostForward);
      await applySysctls({}, {});
    });
  });
});
