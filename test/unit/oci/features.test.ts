import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runtimeHandlerList } from '../../../src/cri/runtime/status.js';
import { appArmorFacility, BERTH_IMPLEMENTS, handlerFeatures, seLinuxFacility, supplementalGroupsPolicy } from '../../../src/oci/features.js';

describe('oci/features', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'berth-features-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const all = { recursiveReadOnlyMounts: true, userNamespaces: true, supplementalGroupsPolicyStrict: true };
  const none = { recursiveReadOnlyMounts: false, userNamespaces: false, supplementalGroupsPolicyStrict: false };

  const pass = { ok: true };
  const fail = { ok: false, reason: 'EINVAL' };
  const probesOk = { idmappedMounts: pass, recursiveReadOnly: pass };

  it('a handler feature is true only when its mount probe passed, the runtime is runnable and berth implements it', () => {
    const rt = '/bin/sh';
    assert.deepEqual(handlerFeatures(rt, probesOk, all), { recursiveReadOnlyMounts: true, userNamespaces: true });
    assert.deepEqual(handlerFeatures(rt, probesOk, none), { recursiveReadOnlyMounts: false, userNamespaces: false }, 'no code path');
    assert.deepEqual(
      handlerFeatures(rt, { idmappedMounts: fail, recursiveReadOnly: pass }, all),
      { recursiveReadOnlyMounts: true, userNamespaces: false },
      'no idmapped mounts here',
    );
    assert.deepEqual(
      handlerFeatures(rt, { idmappedMounts: pass, recursiveReadOnly: fail }, all),
      { recursiveReadOnlyMounts: false, userNamespaces: true },
      'no recursive read-only here',
    );
    assert.deepEqual(
      handlerFeatures(join(dir, 'missing-runc'), probesOk, all),
      { recursiveReadOnlyMounts: false, userNamespaces: false },
      'runtime not runnable',
    );
    assert.equal(supplementalGroupsPolicy(all), true);
    assert.equal(supplementalGroupsPolicy(none), false);
  });

  it('berth implements all three', () => {
    assert.deepEqual(BERTH_IMPLEMENTS, all);
    assert.equal(supplementalGroupsPolicy(), true);
  });

  it('AppArmor is there only when the module says "Y"; SELinux only when selinuxfs says enforcing or permissive', () => {
    const aa = join(dir, 'enabled');
    assert.deepEqual(appArmorFacility(aa), { available: false, reason: `AppArmor is not in this kernel (${aa} does not exist)` });
    writeFileSync(aa, 'N\n');
    assert.equal(appArmorFacility(aa).available, false);
    writeFileSync(aa, 'Y\n');
    assert.deepEqual(appArmorFacility(aa), { available: true });
    const se = join(dir, 'selinux');
    assert.match(seLinuxFacility(se).reason!, /selinuxfs is not mounted/);
    mkdirSync(se);
    writeFileSync(join(se, 'enforce'), '1');
    assert.deepEqual(seLinuxFacility(se), { available: true, reason: 'enforcing' });
    writeFileSync(join(se, 'enforce'), '0');
    assert.deepEqual(seLinuxFacility(se), { available: true, reason: 'permissive' });
  });

  it('lists the default handler as "" and then every handler by name', () => {
    const list = runtimeHandlerList({ default_runtime: 'runc', runtimes: { runc: { path: '/bin/sh' }, crun: { path: join(dir, 'missing') } } }, probesOk);
    assert.deepEqual(
      list.map((h) => h.name),
      ['', 'crun', 'runc'],
    );
    const on = { recursive_read_only_mounts: true, user_namespaces: true };
    const off = { recursive_read_only_mounts: false, user_namespaces: false };
    assert.deepEqual(
      list.map((h) => h.features),
      [on, off, on],
      'the default handler, then crun (not runnable), then runc',
    );
  });
});
