/**
 * What berthd tells kubelet about its features and this host: Status runtime_handlers and
 * features, the facilities the host lacks in verbose info, and CheckpointContainer's reason.
 */
import { status } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Berthd } from '../helpers/berthd.js';
import { runCleanup, type CleanupStep } from '../helpers/cleanup.js';
import { grpcError } from '../helpers/cri-client.js';

function readOr(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

describe('runtime features', function () {
  this.timeout(60_000);
  const cleanup: CleanupStep[] = [];
  afterEach(() => runCleanup(cleanup));

  it('Status lists every handler, the default one also as "", with the features this host\'s mount probes showed working', async () => {
    const b = await Berthd.start();
    cleanup.push(() => b.dispose());
    const st = await b.runtime.Status({ verbose: true });
    assert.deepEqual(
      st.runtime_handlers.map((h) => h.name),
      ['', 'crun', 'runc'],
    );
    for (const h of st.runtime_handlers) {
      // This kind of host (kernel 6.x) makes idmapped and recursive read-only mounts: the probes pass.
      assert.deepEqual(h.features, { recursive_read_only_mounts: true, user_namespaces: true }, `handler "${h.name}"`);
    }
    assert.deepEqual(st.features, { supplemental_groups_policy: true, user_namespaces_host_network: false });

    const host = JSON.parse(st.info.hostFeatures!) as Record<string, { available: boolean; reason?: string }>;
    assert.equal(host.apparmor!.available, readOr('/sys/module/apparmor/parameters/enabled') === 'Y');
    const enforce = readOr('/sys/fs/selinux/enforce');
    assert.equal(host.selinux!.available, enforce === '0' || enforce === '1');
    if (!host.apparmor!.available) assert.match(host.apparmor!.reason!, /AppArmor/);
    if (!host.selinux!.available) assert.match(host.selinux!.reason!, /SELinux/);
    assert.equal(typeof host.criu!.available, 'boolean');
    if (!host.criu!.available) assert.match(host.criu!.reason!, /criu (is not installed|check fails)/);
    assert.equal((await b.runtime.Status({})).info.hostFeatures, undefined, 'only when verbose');
  });

  it('CheckpointContainer answers UNIMPLEMENTED and says why on this host', async () => {
    const b = await Berthd.start();
    cleanup.push(() => b.dispose());
    const err = await grpcError(b.runtime.CheckpointContainer({ container_id: 'x', location: '/tmp/x.tar' }));
    assert.equal(err.code, status.UNIMPLEMENTED);
    assert.match(
      err.details,
      /^CheckpointContainer: berth does not implement checkpoint\/restore \(it would need CRIU; (criu check passes|criu is not installed|criu check fails)/,
    );
    const host = JSON.parse((await b.runtime.Status({ verbose: true })).info.hostFeatures!) as { criu: { available: boolean; reason?: string } };
    if (!host.criu.available) assert.ok(err.details.includes(host.criu.reason!), 'the same verdict as Status, from the one probe');
  });
});
