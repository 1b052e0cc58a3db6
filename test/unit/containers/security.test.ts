/**
 * AppArmor, SELinux, stop signals and supplemental groups in the container spec
 * (apparmor.ts, selinux.ts, signals.ts, user.ts through generateSpec).
 */
import assert from 'node:assert/strict';
import { isKind } from '../../../src/common/errors.js';
import { appArmorProfile, defaultAppArmorProfileText, parseProfileString } from '../../../src/containers/apparmor.js';
import { podMcsLevel, SELINUX_IGNORED, selinuxLabels } from '../../../src/containers/selinux.js';
import { criSignalName, criSignalNumber, effectiveStopSignal } from '../../../src/containers/signals.js';
import { generateSpec } from '../../../src/containers/spec.js';
import { config, image, input, securityContext, withSc } from '../../helpers/container-spec.js';

const local = { profile_type: 'Localhost' as const, localhost_ref: 'localhost/my-prof' };
const rd = { profile_type: 'RuntimeDefault' as const, localhost_ref: '' };
const unconfined = { profile_type: 'Unconfined' as const, localhost_ref: '' };

describe('container spec: AppArmor', () => {
  it('without AppArmor: an explicit RuntimeDefault or Localhost is FAILED_PRECONDITION ("apparmor is not supported"); none or Unconfined run', () => {
    for (const req of [local, rd]) {
      for (const privileged of [false, true]) {
        assert.throws(
          () => appArmorProfile(req, { enabled: false, privileged }),
          (e: unknown) => isKind(e, 'FailedPrecondition') && /apparmor is not supported/.test((e as Error).message),
        );
      }
    }
    assert.equal(appArmorProfile(undefined, { enabled: false, privileged: false }), undefined);
    assert.equal(appArmorProfile(unconfined, { enabled: false, privileged: false }), undefined);
    assert.throws(() => generateSpec(withSc({ apparmor: local })), /apparmor is not supported/);
    assert.equal(generateSpec(withSc({ apparmor: unconfined })).spec.process.apparmorProfile, undefined);
  });

  it('with AppArmor: Localhost by name, RuntimeDefault and none → the default profile, privileged and Unconfined unconfined', () => {
    const on = { enabled: true, privileged: false };
    assert.equal(appArmorProfile(local, on), 'my-prof');
    assert.equal(appArmorProfile(rd, on), 'berth-default');
    assert.equal(appArmorProfile(undefined, on), 'berth-default');
    assert.equal(appArmorProfile(unconfined, on), undefined);
    assert.equal(appArmorProfile(rd, { enabled: true, privileged: true }), undefined);
    assert.equal(appArmorProfile(local, { enabled: true, privileged: true }), 'my-prof');
    assert.throws(() => appArmorProfile({ profile_type: 'Localhost', localhost_ref: '' }, on), /localhost_ref is required/);
    const spec = generateSpec(withSc({ apparmor: rd }, { appArmorEnabled: true, appArmorDefaultProfile: 'berth-default' })).spec;
    assert.equal(spec.process.apparmorProfile, 'berth-default');
  });

  it('deprecated strings', () => {
    assert.deepEqual(parseProfileString('runtime/default', 'f'), rd);
    assert.deepEqual(parseProfileString('unconfined', 'f'), unconfined);
    assert.deepEqual(parseProfileString('localhost/p', 'f'), { profile_type: 'Localhost', localhost_ref: 'p' });
    assert.equal(parseProfileString('', 'f'), undefined);
    assert.throws(() => parseProfileString('bogus', 'linux.security_context.apparmor_profile'), /apparmor_profile "bogus"/);
  });

  it('the default profile names itself, keeps the runtime able to signal it, and denies mounts and kernel knobs', () => {
    const text = defaultAppArmorProfileText('berth-default');
    assert.match(text, /^profile berth-default flags=\(attach_disconnected,mediate_deleted\) \{$/m);
    assert.match(text, /signal \(receive\) peer=unconfined,/);
    assert.match(text, /deny mount,/);
    assert.match(text, /deny @\{PROC\}\/sysrq-trigger rwklx,/);
    assert.match(text, /deny \/sys\/kernel\/security\/\*\* rwklx,/);
    assert.equal(text.split('{').length, text.split('}').length, 'balanced braces');
  });
});

describe('container spec: SELinux', () => {
  const opts = { user: '', role: '', type: '', level: '' };

  it('without SELinux: options ignored, one host warning, no labels', () => {
    const r = generateSpec(withSc({ selinux_options: { ...opts, type: 'spc_t', level: 's0:c1,c2' } }));
    assert.deepEqual(r.hostWarnings, [SELINUX_IGNORED]);
    assert.equal(r.spec.process.selinuxLabel, undefined);
    assert.equal(r.spec.linux.mountLabel, undefined);
    assert.deepEqual(generateSpec(withSc({ selinux_options: opts })).hostWarnings, [], 'an empty message asks for nothing');
  });

  it('with SELinux: container_t at the pod level by default; the options win', () => {
    const level = podMcsLevel('sb1');
    assert.match(level, /^s0:c(\d+),c(\d+)$/);
    const [a, b] = /^s0:c(\d+),c(\d+)$/.exec(level)!.slice(1).map(Number);
    assert.ok(a! < b! && b! < 1024);
    assert.equal(podMcsLevel('sb1'), level, 'stable');
    const plain = generateSpec(withSc({}, { selinuxEnabled: true })).spec;
    assert.equal(plain.process.selinuxLabel, `system_u:system_r:container_t:${level}`);
    assert.equal(plain.linux.mountLabel, `system_u:object_r:container_file_t:${level}`);
    const custom = generateSpec(withSc({ selinux_options: { user: 'u', role: 'r', type: 'spc_t', level: 's0:c5,c6' } }, { selinuxEnabled: true })).spec;
    assert.equal(custom.process.selinuxLabel, 'u:r:spc_t:s0:c5,c6');
    assert.equal(custom.linux.mountLabel, 'system_u:object_r:container_file_t:s0:c5,c6');
  });

  it('refuses malformed parts, naming the field', () => {
    assert.throws(() => selinuxLabels({ user: '', role: '', type: 'a:b', level: '' }, 'x'), /selinux_options\.type "a:b"/);
    assert.throws(() => selinuxLabels({ user: '', role: '', type: '', level: 'c1' }, 'x'), /selinux_options\.level "c1"/);
  });
});

describe('container spec: stop signal (CRI)', () => {
  it('maps every CRI enum name and back', () => {
    assert.equal(criSignalNumber('SIGNAL_SIGUSR1'), 10);
    assert.equal(criSignalNumber('SIGNAL_SIGCLD'), 17);
    assert.equal(criSignalNumber('SIGNAL_SIGRTMINPLUS3'), 37);
    assert.equal(criSignalNumber('SIGNAL_SIGRTMAXMINUS1'), 63);
    assert.equal(criSignalNumber('SIGNAL_RUNTIME_DEFAULT'), undefined);
    for (let n = 1; n <= 64; n++) if (n !== 32 && n !== 33) assert.equal(criSignalNumber(criSignalName(n)), n, `signal ${n}`);
    assert.equal(criSignalName(15), 'SIGNAL_SIGTERM');
  });

  it("the config's signal wins over the image's; an unusable image signal is SIGTERM with a warning", () => {
    assert.deepEqual(effectiveStopSignal({ stop_signal: 'SIGNAL_SIGUSR1' }, image({ stopSignal: 'SIGQUIT' })), { signal: 10 });
    assert.deepEqual(effectiveStopSignal({ stop_signal: 'SIGNAL_RUNTIME_DEFAULT' }, image({ stopSignal: 'SIGQUIT' })), { signal: 3 });
    assert.deepEqual(effectiveStopSignal({}, undefined), { signal: 15 });
    const bad = effectiveStopSignal({}, image({ stopSignal: 'SIGBOGUS' }));
    assert.equal(bad.signal, 15);
    assert.match(bad.warning!, /SIGBOGUS/);
    assert.throws(() => effectiveStopSignal({ stop_signal: 'SIGNAL_NOPE' }, undefined), /stop_signal "SIGNAL_NOPE"/);
  });

  it('the spec records the effective signal for ContainerStatus', () => {
    const r = generateSpec(input({ config: config({ stop_signal: 'SIGNAL_SIGUSR1' }), image: image({ stopSignal: 'SIGINT' }) }));
    assert.equal(r.spec.annotations['io.berth.stop-signal'], 'SIGNAL_SIGUSR1');
    const bogus = generateSpec(input({ image: image({ stopSignal: 'SIGBOGUS' }) }));
    assert.equal(bogus.spec.annotations['io.berth.stop-signal'], 'SIGNAL_SIGTERM');
    assert.equal(bogus.warnings.length, 1);
  });
});

describe('container spec: supplemental groups policy', () => {
  const as = (policy: 'Merge' | 'Strict' | undefined) =>
    generateSpec(
      input({
        config: config({
          linux: {
            security_context: securityContext({
              run_as_user: { value: 1000 },
              supplemental_groups: [4000],
              ...(policy ? { supplemental_groups_policy: policy } : {}),
            }),
          },
        }),
      }),
    ).spec.process.user;

  it("Merge (default) adds the image's groups; Strict only the primary gid and the requested ones", () => {
    assert.deepEqual(as(undefined), { uid: 1000, gid: 1000, additionalGids: [1000, 10, 29, 4000] });
    assert.deepEqual(as('Merge'), as(undefined));
    assert.deepEqual(as('Strict'), { uid: 1000, gid: 1000, additionalGids: [1000, 4000] });
  });
});
