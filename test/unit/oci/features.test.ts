import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runtimeHandlerList } from '../../../src/cri/runtime/status.js';
import { appArmorFacility, BERTH_IMPLEMENTS, handlerFeatures, kernelVersion, seLinuxFacility, supplementalGroupsPolicy } from '../../../src/oci/features.js';

describe('oci/features', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'berth-features-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const all = { recursiveReadOnlyMounts: true, userNamespaces: true, supplementalGroupsPolicyStrict: true };
  const none = { recursiveReadOnlyMounts: false, userNamespaces: false, supplementalGroupsPolicyStrict: false };

  it('parses kernel releases', () => {
    assert.deepEqual(kernelVersion('6.18.44-fc-v1300'), [6, 18]);
    assert.deepEqual(kernelVersion('5.12.0'), [5, 12]);
    assert.equal(kernelVersion('garbage'), undefined);
  });

  it('a handler feature is true only when the kernel can, the runtime is runnable and berth implements it', () => {
    const rt = '/bin/sh';
    const modern = { release: '6.1.0-18-amd64', maxUserNamespaces: 1000 };
    assert.deepEqual(handlerFeatures(rt, modern, all), { recursiveReadOnlyMounts: true, userNamespaces: true });
    assert.deepEqual(handlerFeatures(rt, modern, none), { recursiveReadOnlyMounts: false, userNamespaces: false }, 'berth has no code path yet');
    assert.deepEqual(
      handlerFeatures(rt, { release: '5.11.0', maxUserNamespaces: 1000 }, all),
      { recursiveReadOnlyMounts: false, userNamespaces: false },
      'no mount_setattr',
    );
    assert.deepEqual(
      handlerFeatures(rt, { release: '5.15.0', maxUserNamespaces: 1000 }, all),
      { recursiveReadOnlyMounts: true, userNamespaces: false },
      'no idmapped overlay',
    );
    assert.deepEqual(
      handlerFeatures(rt, { ...modern, maxUserNamespaces: 0 }, all),
      { recursiveReadOnlyMounts: true, userNamespaces: false },
      'user namespaces disabled',
    );
    assert.deepEqual(
      handlerFeatures(join(dir, 'missing-runc'), modern, all),
      { recursiveReadOnlyMounts: false, userNamespaces: false },
      'runtime not runnable',
    );
    assert.equal(supplementalGroupsPolicy(all), true);
    assert.equal(supplementalGroupsPolicy(none), false);
  });

  it('today berth implements none of them, so this host reports false whatever its kernel', () => {
    assert.deepEqual(BERTH_IMPLEMENTS, none);
    assert.deepEqual(handlerFeatures('/bin/sh'), { recursiveReadOnlyMounts: false, userNamespaces: false });
    assert.equal(supplementalGroupsPolicy(), false);
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
    const list = runtimeHandlerList({ default_runtime: 'runc', runtimes: { runc: { path: '/bin/sh' }, crun: { path: '/bin/sh' } } });
    assert.deepEqual(
      list.map((h) => h.name),
      ['', 'crun', 'runc'],
    );
    for (const h of list) assert.deepEqual(h.features, { recursive_read_only_mounts: false, user_namespaces: false });
  });
});
