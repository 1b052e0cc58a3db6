/**
 * CRI ContainerConfig → OCI spec (src/containers/spec.ts): one describe per area, table
 * driven, asserting the parts that matter rather than snapshotting the whole spec.
 */
import assert from 'node:assert/strict';
import { isKind, type BerthError } from '../../../src/common/errors.js';
import { ALL_CAPABILITIES, DEFAULT_CAPABILITIES } from '../../../src/containers/capabilities.js';
import {
  DEFAULT_MASKED_PATHS,
  DEFAULT_PATH,
  DEFAULT_READONLY_PATHS,
  generateSpec,
  stopSignal,
  type ContainerSpecInput,
  type CriLinuxResources,
  type CriSecurityContext,
} from '../../../src/containers/spec.js';
import { config, GROUP, image, input, PASSWD, securityContext, withSc } from '../../helpers/container-spec.js';

function invalid(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(isKind(err, 'InvalidArgument'), `expected InvalidArgument, got ${String(err)}`);
    assert.match((err as BerthError).message, pattern);
    return true;
  });
}

function resources(r: Partial<CriLinuxResources>): CriLinuxResources {
  return {
    cpu_period: 0,
    cpu_quota: 0,
    cpu_shares: 0,
    memory_limit_in_bytes: 0,
    oom_score_adj: 0,
    cpuset_cpus: '',
    cpuset_mems: '',
    hugepage_limits: [],
    unified: {},
    memory_swap_limit_in_bytes: 0,
    ...r,
  };
}

function withResources(r: Partial<CriLinuxResources>, over: Partial<ContainerSpecInput> = {}): ContainerSpecInput {
  return input({ config: config({ linux: { security_context: securityContext(), resources: resources(r) } }), ...over });
}

describe('container spec: basics', () => {
  it('writes OCI 1.0.2 with the rootfs, terminal and hostname', () => {
    const { spec, warnings } = generateSpec(input({ config: config({ tty: true }) }));
    assert.equal(spec.ociVersion, '1.0.2');
    assert.deepEqual(spec.root, { path: '/var/lib/berth/containers/c0ffee/rootfs', readonly: false });
    assert.equal(spec.process.terminal, true);
    assert.equal(spec.hostname, 'web-0');
    assert.deepEqual(warnings, []);
    // The spec must survive JSON (no undefined, no functions).
    assert.deepEqual(JSON.parse(JSON.stringify(spec)), spec);
  });

  it('refuses container ids that would escape a cgroup or bundle path', () => {
    for (const id of ['', '../x', 'a/b']) invalid(() => generateSpec(input({ containerId: id })), /container id/);
  });
});

describe('container spec: process args', () => {
  const cases: Array<{ name: string; entrypoint: string[]; cmd: string[]; command: string[]; args: string[]; want: string[] }> = [
    { name: 'image only', entrypoint: ['/ep'], cmd: ['a', 'b'], command: [], args: [], want: ['/ep', 'a', 'b'] },
    { name: 'cmd only', entrypoint: [], cmd: ['sh'], command: [], args: [], want: ['sh'] },
    { name: 'args replace CMD', entrypoint: ['/ep'], cmd: ['a'], command: [], args: ['x'], want: ['/ep', 'x'] },
    { name: 'command drops CMD', entrypoint: ['/ep'], cmd: ['a'], command: ['/bin/true'], args: [], want: ['/bin/true'] },
    { name: 'command and args', entrypoint: ['/ep'], cmd: ['a'], command: ['/bin/echo'], args: ['hi'], want: ['/bin/echo', 'hi'] },
    { name: 'args without entrypoint', entrypoint: [], cmd: ['a'], command: [], args: ['/bin/ls', '-l'], want: ['/bin/ls', '-l'] },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const { spec } = generateSpec(input({ image: image({ entrypoint: c.entrypoint, cmd: c.cmd }), config: config({ command: c.command, args: c.args }) }));
      assert.deepEqual(spec.process.args, c.want);
    });
  }

  it('refuses an empty command', () => {
    invalid(
      () => generateSpec(input({ image: image({ entrypoint: [], cmd: [] }) })),
      /^no command specified \(neither the container's command\/args nor the image's entrypoint\/cmd\)$/,
    );
  });
});

describe('container spec: env and working dir', () => {
  it('puts HOSTNAME first, then the image env, CRI envs overriding by key', () => {
    const { spec } = generateSpec(
      input({
        image: image({ env: ['PATH=/img/bin', 'A=1', 'B=2', 'NOVALUE'] }),
        config: config({
          envs: [
            { key: 'B', value: 'cri' },
            { key: 'C', value: 'x=y' },
          ],
        }),
      }),
    );
    assert.deepEqual(spec.process.env, ['HOSTNAME=web-0', 'PATH=/img/bin', 'A=1', 'B=cri', 'NOVALUE', 'C=x=y']);
  });

  it('defaults PATH and lets the CRI override HOSTNAME', () => {
    const { spec } = generateSpec(input({ image: image({ env: [] }), config: config({ envs: [{ key: 'HOSTNAME', value: 'me' }] }) }));
    assert.deepEqual(spec.process.env, ['HOSTNAME=me', `PATH=${DEFAULT_PATH}`]);
  });

  it('refuses an env key with "=" or no key', () => {
    invalid(() => generateSpec(input({ config: config({ envs: [{ key: 'A=B', value: '' }] }) })), /envs\[0\]\.key/);
    invalid(() => generateSpec(input({ config: config({ envs: [{ key: '', value: 'x' }] }) })), /envs\[0\]\.key/);
  });

  const cwd: Array<[string, string, string]> = [
    ['', '', '/'],
    ['', '/app', '/app'],
    ['/work', '/app', '/work'],
  ];
  for (const [cri, img, want] of cwd) {
    it(`cwd: working_dir "${cri}", image "${img}" → ${want}`, () => {
      const { spec } = generateSpec(input({ image: image({ workingDir: img }), config: config({ working_dir: cri }) }));
      assert.equal(spec.process.cwd, want);
    });
  }

  it('refuses a relative working_dir', () => {
    invalid(() => generateSpec(input({ config: config({ working_dir: 'rel' }) })), /working_dir "rel"/);
  });
});

describe('container spec: user', () => {
  const cases: Array<{ name: string; sc?: Partial<CriSecurityContext>; imageUser?: string; want: { uid: number; gid: number; additionalGids: number[] } }> = [
    { name: 'image default is root with its groups', want: { uid: 0, gid: 0, additionalGids: [0, 10] } },
    { name: 'image uid with passwd entry', imageUser: '1000', want: { uid: 1000, gid: 1000, additionalGids: [1000, 10, 29] } },
    { name: 'image uid without entry → gid 0', imageUser: '4242', want: { uid: 4242, gid: 0, additionalGids: [0] } },
    { name: 'image uid:gid', imageUser: '33:29', want: { uid: 33, gid: 29, additionalGids: [29] } },
    { name: 'image name', imageUser: 'app', want: { uid: 1000, gid: 1000, additionalGids: [1000, 10, 29] } },
    { name: 'image name:group', imageUser: 'app:staff', want: { uid: 1000, gid: 50, additionalGids: [50, 10, 29] } },
    { name: 'image uid:group', imageUser: '1:www-data', want: { uid: 1, gid: 33, additionalGids: [33, 50] } },
    { name: 'run_as_user overrides the image', imageUser: 'app', sc: { run_as_user: { value: 33 } }, want: { uid: 33, gid: 33, additionalGids: [33] } },
    { name: 'run_as_user unknown → gid 0', sc: { run_as_user: { value: 7777 } }, want: { uid: 7777, gid: 0, additionalGids: [0] } },
    {
      name: 'run_as_user + run_as_group',
      sc: { run_as_user: { value: 1000 }, run_as_group: { value: 5 } },
      want: { uid: 1000, gid: 5, additionalGids: [5, 10, 29] },
    },
    { name: 'run_as_username', sc: { run_as_username: 'daemon' }, want: { uid: 1, gid: 1, additionalGids: [1, 50] } },
    {
      name: 'run_as_username + run_as_group',
      sc: { run_as_username: 'daemon', run_as_group: { value: 0 } },
      want: { uid: 1, gid: 0, additionalGids: [0, 50] },
    },
    {
      name: 'supplemental groups are added once',
      sc: { run_as_user: { value: 1000 }, supplemental_groups: [29, 2000, 2000] },
      want: { uid: 1000, gid: 1000, additionalGids: [1000, 10, 29, 2000] },
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const { spec } = generateSpec(withSc(c.sc ?? {}, { image: image({ user: c.imageUser ?? '' }) }));
      assert.deepEqual(spec.process.user, c.want);
    });
  }

  it('works with no passwd or group file', () => {
    const { spec } = generateSpec(input({ passwd: '', group: '', image: image({ user: '5:6' }) }));
    assert.deepEqual(spec.process.user, { uid: 5, gid: 6, additionalGids: [6] });
  });

  const bad: Array<[string, Partial<CriSecurityContext>, string, RegExp]> = [
    ['unknown run_as_username', { run_as_username: 'nobody' }, '', /run_as_username "nobody"/],
    ['run_as_group alone', { run_as_group: { value: 1 } }, '', /^run_as_group requires run_as_user or run_as_username$/],
    ['unknown image user', {}, 'ghost', /image USER "ghost"/],
    ['unknown image group', {}, 'app:ghosts', /no group "ghosts"/],
    ['negative run_as_user', { run_as_user: { value: -1 } }, '', /run_as_user -1/],
    ['bad supplemental group', { supplemental_groups: [1.5] }, '', /supplemental_groups\[0\]/],
  ];
  for (const [name, sc, imageUser, re] of bad) {
    it(`refuses ${name}`, () => invalid(() => generateSpec(withSc(sc, { image: image({ user: imageUser }) })), re));
  }

  // A passwd NAME made of digits is never looked up: all digits is a uid, and above the largest uid it is refused.
  describe('all-digit users are ids, never passwd names', () => {
    const passwd = `${PASSWD}\n4294967296:x:0:0::/root:/bin/sh\n77:x:0:0::/root:/bin/sh\n`;
    const group = `${GROUP}\n4294967296:x:0:\n`;
    const gen = (user: string, sc: Partial<CriSecurityContext> = {}) => generateSpec(withSc(sc, { passwd, group, image: image({ user }) }));

    for (const user of ['4294967296', ' 4294967296', '4294967296:0', '18446744073709551616', '99999999999999999999999999']) {
      it(`refuses image USER "${user}"`, () => invalid(() => gen(user), new RegExp(`^image USER "${user}": uid \\d+ is above 4294967295$`)));
    }
    it('refuses an image group above the largest gid', () =>
      invalid(() => gen('1000:4294967296'), /^image USER "1000:4294967296": gid 4294967296 is above 4294967295$/));
    it('refuses run_as_username of digits above the largest uid', () =>
      invalid(() => gen('', { run_as_username: '4294967296' }), /^run_as_username "4294967296" is all digits, so a uid, and above 4294967295$/));
    it('an all-digit run_as_username is that uid, not the passwd name', () => {
      assert.deepEqual(gen('', { run_as_username: '1000' }).spec.process.user, { uid: 1000, gid: 1000, additionalGids: [1000, 10, 29] });
    });
    it('an all-digit image USER within range is that uid even when a passwd name is those digits', () => {
      assert.deepEqual(gen('4294967295').spec.process.user, { uid: 4294967295, gid: 0, additionalGids: [0] });
      assert.deepEqual(gen('0077').spec.process.user, { uid: 77, gid: 0, additionalGids: [0] });
    });
  });
});

describe('container spec: capabilities', () => {
  const sorted = (xs: readonly string[]): string[] => [...xs].sort();
  const cases: Array<{ name: string; add: string[]; drop: string[]; want: string[] }> = [
    { name: 'default set', add: [], drop: [], want: sorted(DEFAULT_CAPABILITIES) },
    {
      name: 'add without prefix, any case',
      add: ['net_admin', 'CAP_SYS_TIME'],
      drop: [],
      want: sorted([...DEFAULT_CAPABILITIES, 'CAP_NET_ADMIN', 'CAP_SYS_TIME']),
    },
    { name: 'drop', add: [], drop: ['NET_RAW', 'cap_mknod'], want: sorted(DEFAULT_CAPABILITIES.filter((c) => c !== 'CAP_NET_RAW' && c !== 'CAP_MKNOD')) },
    { name: 'drop ALL', add: [], drop: ['ALL'], want: [] },
    { name: 'drop ALL, add some back', add: ['KILL', 'chown'], drop: ['all'], want: ['CAP_CHOWN', 'CAP_KILL'] },
    { name: 'add ALL', add: ['ALL'], drop: [], want: sorted(ALL_CAPABILITIES) },
    { name: 'add ALL, drop one', add: ['ALL'], drop: ['SYS_ADMIN'], want: sorted(ALL_CAPABILITIES.filter((c) => c !== 'CAP_SYS_ADMIN')) },
    { name: 'add and drop the same: drop wins', add: ['NET_ADMIN'], drop: ['NET_ADMIN'], want: sorted(DEFAULT_CAPABILITIES) },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const { spec } = generateSpec(withSc({ capabilities: { add_capabilities: c.add, drop_capabilities: c.drop } }));
      const caps = spec.process.capabilities;
      assert.deepEqual(sorted(caps.bounding), c.want);
      assert.deepEqual(caps.effective, caps.bounding);
      assert.deepEqual(caps.permitted, caps.bounding);
      assert.deepEqual(caps.inheritable, []);
      assert.deepEqual(caps.ambient, []);
    });
  }

  it('knows every capability of a 6.x kernel', () => {
    assert.equal(ALL_CAPABILITIES.length, 41);
    assert.equal(ALL_CAPABILITIES[40], 'CAP_CHECKPOINT_RESTORE');
  });

  it('gives privileged containers every capability whatever add/drop say', () => {
    const { spec } = generateSpec(withSc({ privileged: true, capabilities: { add_capabilities: [], drop_capabilities: ['ALL'] } }));
    assert.deepEqual(spec.process.capabilities.bounding, [...ALL_CAPABILITIES]);
    assert.deepEqual(spec.process.capabilities.effective, [...ALL_CAPABILITIES]);
  });

  it('puts ambient capabilities in ambient and inheritable, warning when not held', () => {
    const { spec, warnings } = generateSpec(
      withSc({ capabilities: { add_capabilities: ['NET_ADMIN'], drop_capabilities: [], add_ambient_capabilities: ['net_admin', 'SYS_TIME'] } }),
    );
    assert.deepEqual(spec.process.capabilities.ambient, ['CAP_NET_ADMIN', 'CAP_SYS_TIME']);
    assert.deepEqual(spec.process.capabilities.inheritable, ['CAP_NET_ADMIN', 'CAP_SYS_TIME']);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /CAP_SYS_TIME/);
  });

  it('refuses unknown capabilities, naming the field', () => {
    invalid(
      () => generateSpec(withSc({ capabilities: { add_capabilities: ['FLY'], drop_capabilities: [] } })),
      /add_capabilities\[0\]: unknown capability "FLY"/,
    );
    invalid(() => generateSpec(withSc({ capabilities: { add_capabilities: [], drop_capabilities: ['CAP_X'] } })), /drop_capabilities\[0\]/);
  });
});

describe('container spec: privileges, rootfs and paths', () => {
  it('sets no_new_privs and a read-only root, with the pod files read-only too', () => {
    const { spec } = generateSpec(withSc({ no_new_privs: true, readonly_rootfs: true }));
    assert.equal(spec.process.noNewPrivileges, true);
    assert.equal(spec.root.readonly, true);
    for (const dest of ['/etc/hosts', '/etc/resolv.conf', '/etc/hostname']) {
      assert.ok(spec.mounts.find((m) => m.destination === dest)!.options.includes('ro'), dest);
    }
    assert.ok(!spec.mounts.find((m) => m.destination === '/dev/shm')!.options.includes('ro'));
  });

  it('uses the default masked and read-only paths when the CRI sends none', () => {
    const { spec } = generateSpec(input());
    assert.deepEqual(spec.linux.maskedPaths, [...DEFAULT_MASKED_PATHS]);
    assert.deepEqual(spec.linux.readonlyPaths, [...DEFAULT_READONLY_PATHS]);
    assert.ok(spec.linux.maskedPaths.includes('/sys/devices/virtual/powercap'));
  });

  it('uses the CRI lists when given', () => {
    const { spec } = generateSpec(withSc({ masked_paths: ['/proc/kcore'], readonly_paths: ['/proc/sys'] }));
    assert.deepEqual(spec.linux.maskedPaths, ['/proc/kcore']);
    assert.deepEqual(spec.linux.readonlyPaths, ['/proc/sys']);
  });

  it('privileged: no masked or read-only paths, writable sysfs and cgroupfs, all devices, no seccomp', () => {
    const { spec } = generateSpec(withSc({ privileged: true, masked_paths: ['/proc/kcore'], seccomp: { profile_type: 'RuntimeDefault', localhost_ref: '' } }));
    assert.deepEqual(spec.linux.maskedPaths, []);
    assert.deepEqual(spec.linux.readonlyPaths, []);
    assert.ok(!spec.mounts.find((m) => m.destination === '/sys')!.options.includes('ro'));
    assert.ok(!spec.mounts.find((m) => m.destination === '/sys/fs/cgroup')!.options.includes('ro'));
    assert.deepEqual(spec.linux.resources.devices, [{ allow: true, access: 'rwm' }]);
    assert.equal(spec.linux.seccomp, undefined);
  });
});

describe('container spec: seccomp', () => {
  it('is unconfined when unset or Unconfined (as containerd)', () => {
    assert.equal(generateSpec(input()).spec.linux.seccomp, undefined);
    assert.equal(generateSpec(withSc({ seccomp: { profile_type: 'Unconfined', localhost_ref: '' } })).spec.linux.seccomp, undefined);
  });

  it('RuntimeDefault: berth profile, EPERM by default, x86 architectures for amd64', () => {
    const s = generateSpec(withSc({ seccomp: { profile_type: 'RuntimeDefault', localhost_ref: '' } })).spec.linux.seccomp!;
    assert.equal(s.defaultAction, 'SCMP_ACT_ERRNO');
    assert.equal(s.defaultErrnoRet, 1);
    assert.deepEqual(s.architectures, ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32']);
    const allowed = new Set(s.syscalls!.filter((c) => c.action === 'SCMP_ACT_ALLOW' && !c.args).flatMap((c) => c.names));
    for (const n of ['execve', 'openat', 'read', 'write', 'wait4', 'socket', 'connect', 'getdents64', 'nanosleep', 'clock_nanosleep', 'fork', 'chroot']) {
      assert.ok(allowed.has(n), n);
    }
    for (const n of ['mount', 'unshare', 'setns', 'reboot', 'init_module', 'bpf', 'clone', 'clone3', 'kexec_load', 'keyctl', 'add_key']) {
      assert.ok(!allowed.has(n), n);
    }
    const clone = s.syscalls!.find((c) => c.names.includes('clone'))!;
    assert.deepEqual(clone.args, [{ index: 0, value: 0x7e020000, valueTwo: 0, op: 'SCMP_CMP_MASKED_EQ' }]);
    assert.equal(s.syscalls!.find((c) => c.names.includes('clone3'))!.errnoRet, 38);
  });

  it('RuntimeDefault follows the capabilities: SYS_ADMIN allows mount and clone; dropping SYS_CHROOT removes chroot', () => {
    const s = generateSpec(
      withSc({
        seccomp: { profile_type: 'RuntimeDefault', localhost_ref: '' },
        capabilities: { add_capabilities: ['SYS_ADMIN'], drop_capabilities: ['SYS_CHROOT'] },
      }),
    ).spec.linux.seccomp!;
    const allowed = new Set(s.syscalls!.filter((c) => !c.args && c.action === 'SCMP_ACT_ALLOW').flatMap((c) => c.names));
    for (const n of ['mount', 'umount2', 'unshare', 'setns', 'clone', 'clone3']) assert.ok(allowed.has(n), n);
    assert.ok(!allowed.has('chroot'));
    assert.ok(!s.syscalls!.some((c) => c.names.includes('clone') && c.args));
  });

  it('arm64 images get the arm architectures', () => {
    const s = generateSpec(withSc({ seccomp: { profile_type: 'RuntimeDefault', localhost_ref: '' } }, { image: { ...image(), architecture: 'arm64' } })).spec
      .linux.seccomp!;
    assert.deepEqual(s.architectures, ['SCMP_ARCH_AARCH64', 'SCMP_ARCH_ARM']);
  });

  it('Localhost: the provided profile', () => {
    const profile = { defaultAction: 'SCMP_ACT_LOG', syscalls: [] };
    const { spec } = generateSpec(
      withSc(
        { seccomp: { profile_type: 'Localhost', localhost_ref: '/var/lib/kubelet/seccomp/audit.json' } },
        { localhostSeccomp: { '/var/lib/kubelet/seccomp/audit.json': profile } },
      ),
    );
    assert.deepEqual(spec.linux.seccomp, profile);
  });

  it('Localhost: a missing or malformed profile is InvalidArgument naming the ref', () => {
    invalid(() => generateSpec(withSc({ seccomp: { profile_type: 'Localhost', localhost_ref: 'p.json' } })), /localhost_ref "p\.json": profile not found/);
    invalid(
      () => generateSpec(withSc({ seccomp: { profile_type: 'Localhost', localhost_ref: 'p.json' } }, { localhostSeccomp: { 'p.json': { defaultAction: 7 } } })),
      /"p\.json": profile has no valid defaultAction/,
    );
    invalid(() => generateSpec(withSc({ seccomp: { profile_type: 'Localhost', localhost_ref: '' } })), /localhost_ref is required/);
  });
});

describe('container spec: mounts', () => {
  const dests = (i: ContainerSpecInput): string[] => generateSpec(i).spec.mounts.map((m) => m.destination);

  it('standard mounts, then the pod files, parents first', () => {
    assert.deepEqual(dests(input()), [
      '/proc',
      '/dev',
      '/sys',
      '/dev/pts',
      '/dev/mqueue',
      '/dev/shm',
      '/etc/hosts',
      '/etc/resolv.conf',
      '/etc/hostname',
      '/sys/fs/cgroup',
    ]);
    const { spec } = generateSpec(input());
    assert.deepEqual(
      spec.mounts.find((m) => m.destination === '/sys'),
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    );
    assert.deepEqual(
      spec.mounts.find((m) => m.destination === '/etc/hosts'),
      {
        destination: '/etc/hosts',
        type: 'bind',
        source: '/var/lib/berth/sandboxes/sb1/hosts',
        options: ['rbind', 'rprivate'],
      },
    );
    assert.deepEqual(
      spec.mounts.find((m) => m.destination === '/dev/shm'),
      {
        destination: '/dev/shm',
        type: 'bind',
        source: '/var/lib/berth/sandboxes/sb1/shm',
        options: ['rbind', 'rprivate'],
      },
    );
  });

  it('/dev/shm: a tmpfs without a pod shm, the host one with host IPC', () => {
    const base = input();
    const noShm = generateSpec(input({ sandbox: { ...base.sandbox, shmPath: undefined } })).spec.mounts.find((m) => m.destination === '/dev/shm')!;
    assert.equal(noShm.type, 'tmpfs');
    assert.ok(noShm.options.includes('mode=1777'));
    const hostIpc = generateSpec(withSc({ namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'NODE', target_id: '' } })).spec.mounts.find(
      (m) => m.destination === '/dev/shm',
    )!;
    assert.equal(hostIpc.source, '/dev/shm');
  });

  it('converts CRI mounts with propagation and ro, and sets the root propagation', () => {
    const mounts = [
      { container_path: '/data', host_path: '/srv/data', readonly: true, selinux_relabel: true, propagation: 'PROPAGATION_PRIVATE' as const },
      { container_path: '/logs/', host_path: '/var/log', readonly: false, selinux_relabel: false, propagation: 'PROPAGATION_HOST_TO_CONTAINER' as const },
    ];
    const { spec } = generateSpec(input({ config: config({ mounts }) }));
    assert.deepEqual(spec.mounts.find((m) => m.destination === '/data')!.options, ['rbind', 'rprivate', 'ro']);
    assert.deepEqual(
      spec.mounts.find((m) => m.destination === '/logs')!,
      { destination: '/logs', type: 'bind', source: '/var/log', options: ['rbind', 'rslave'] },
    );
    assert.equal(spec.linux.rootfsPropagation, 'rslave');
    const bidi = generateSpec(input({ config: config({ mounts: [{ ...mounts[0]!, propagation: 'PROPAGATION_BIDIRECTIONAL' }, mounts[1]!] }) })).spec;
    assert.deepEqual(bidi.mounts.find((m) => m.destination === '/data')!.options, ['rbind', 'rshared', 'ro']);
    assert.equal(bidi.linux.rootfsPropagation, 'rshared');
    assert.equal(generateSpec(input()).spec.linux.rootfsPropagation, undefined);
  });

  it('lets CRI mounts replace the pod files and /dev, and sorts parents before children', () => {
    const m = (p: string, h = '/h' + p) => ({
      container_path: p,
      host_path: h,
      readonly: false,
      selinux_relabel: false,
      propagation: 'PROPAGATION_PRIVATE' as const,
    });
    const { spec } = generateSpec(input({ config: config({ mounts: [m('/a/b/c'), m('/etc/hosts', '/my/hosts'), m('/a'), m('/dev'), m('/a/b')] }) }));
    const d = spec.mounts.map((x) => x.destination);
    assert.equal(spec.mounts.filter((x) => x.destination === '/etc/hosts').length, 1);
    assert.equal(spec.mounts.find((x) => x.destination === '/etc/hosts')!.source, '/my/hosts');
    assert.ok(!d.includes('/dev/pts') && !d.includes('/dev/shm') && !d.includes('/dev/mqueue'));
    assert.equal(spec.mounts.find((x) => x.destination === '/dev')!.type, 'bind');
    assert.ok(d.indexOf('/a') < d.indexOf('/a/b') && d.indexOf('/a/b') < d.indexOf('/a/b/c'));
    for (const [i, x] of d.entries()) {
      for (const y of d.slice(i + 1)) assert.ok(!x.startsWith(y + '/'), `${y} must come before ${x}`);
    }
  });

  const bad: Array<[string, string, RegExp]> = [
    ['relative container_path', 'data', /mounts\[0\]\.container_path "data" must be an absolute path/],
    ['empty container_path', '', /mounts\[0\]\.container_path/],
  ];
  for (const [name, p, re] of bad) {
    it(`refuses a ${name}`, () => {
      invalid(
        () =>
          generateSpec(
            input({
              config: config({ mounts: [{ container_path: p, host_path: '/x', readonly: false, selinux_relabel: false, propagation: 'PROPAGATION_PRIVATE' }] }),
            }),
          ),
        re,
      );
    });
  }

  it('refuses a relative host_path and a duplicate destination', () => {
    const m = { container_path: '/d', host_path: 'rel', readonly: false, selinux_relabel: false, propagation: 'PROPAGATION_PRIVATE' as const };
    invalid(() => generateSpec(input({ config: config({ mounts: [m] }) })), /mounts\[0\]\.host_path/);
    invalid(
      () =>
        generateSpec(
          input({
            config: config({
              mounts: [
                { ...m, host_path: '/a' },
                { ...m, host_path: '/b' },
              ],
            }),
          }),
        ),
      /mounts\[1\]\.container_path "\/d" is mounted twice/,
    );
  });
});

describe('container spec: devices', () => {
  const fuse = { path: '/dev/fuse', type: 'c' as const, major: 10, minor: 229, fileMode: 0o666, uid: 0, gid: 0 };
  const loop = { path: '/dev/xvda', type: 'b' as const, major: 7, minor: 0, fileMode: 0o660, uid: 0, gid: 6 };

  it('has runc’s default device rules', () => {
    const rules = generateSpec(input()).spec.linux.resources.devices;
    assert.deepEqual(rules[0], { allow: false, access: 'rwm' });
    const allowed = rules.filter((r) => r.allow && r.access === 'rwm').map((r) => `${r.type} ${r.major}:${r.minor ?? '*'}`);
    assert.deepEqual(allowed, ['c 1:3', 'c 1:5', 'c 1:7', 'c 5:0', 'c 1:8', 'c 1:9', 'c 5:2', 'c 136:*']);
    assert.deepEqual(generateSpec(input()).spec.linux.devices, []);
  });

  it('adds resolved devices as nodes and cgroup rules with their permissions', () => {
    const { spec } = generateSpec(
      input({
        devices: [
          { ...fuse, permissions: 'rwm' },
          { ...loop, permissions: 'r' },
        ],
      }),
    );
    assert.deepEqual(spec.linux.devices, [
      { path: '/dev/fuse', type: 'c', major: 10, minor: 229, fileMode: 0o666, uid: 0, gid: 0 },
      { path: '/dev/xvda', type: 'b', major: 7, minor: 0, fileMode: 0o660, uid: 0, gid: 6 },
    ]);
    assert.deepEqual(spec.linux.resources.devices.slice(-2), [
      { allow: true, type: 'c', major: 10, minor: 229, access: 'rwm' },
      { allow: true, type: 'b', major: 7, minor: 0, access: 'r' },
    ]);
  });

  it('privileged: the host devices, a requested device winning at its path, and one allow-all rule', () => {
    const host = [
      { ...fuse, fileMode: 0o600, permissions: 'rwm' },
      { path: '/dev/net/tun', type: 'c' as const, major: 10, minor: 200, fileMode: 0o600, uid: 0, gid: 0, permissions: 'rwm' },
    ];
    const { spec } = generateSpec(withSc({ privileged: true }, { hostDevices: host, devices: [{ ...fuse, permissions: 'r' }] }));
    assert.deepEqual(
      spec.linux.devices.map((d) => [d.path, d.fileMode]),
      [
        ['/dev/net/tun', 0o600],
        ['/dev/fuse', 0o666],
      ],
    );
    assert.deepEqual(spec.linux.resources.devices, [{ allow: true, access: 'rwm' }]);
  });
});

describe('container spec: namespaces', () => {
  type Mode = 'POD' | 'CONTAINER' | 'NODE' | 'TARGET';
  const ns = (network: Mode, pid: Mode, ipc: Mode, over: Partial<ContainerSpecInput> = {}) =>
    generateSpec(withSc({ namespace_options: { network, pid, ipc, target_id: pid === 'TARGET' ? 'other' : '' } }, over)).spec;

  it('pod network, UTS and IPC from the sandbox; own PID, mount and cgroup', () => {
    assert.deepEqual(ns('POD', 'CONTAINER', 'POD').linux.namespaces, [
      { type: 'pid' },
      { type: 'network', path: '/run/berth/ns/net/sb1' },
      { type: 'uts', path: '/run/berth/ns/uts/sb1' },
      { type: 'ipc', path: '/run/berth/ns/ipc/sb1' },
      { type: 'mount' },
      { type: 'cgroup' },
    ]);
  });

  it('host network → no network or UTS namespace and no hostname; host IPC and PID → none', () => {
    const spec = ns('NODE', 'NODE', 'NODE');
    assert.deepEqual(spec.linux.namespaces, [{ type: 'mount' }, { type: 'cgroup' }]);
    assert.equal(spec.hostname, undefined);
    assert.ok(spec.process.env.includes('HOSTNAME=web-0'));
  });

  it('pid POD joins the infra PID namespace; TARGET the target container’s', () => {
    const base = input();
    const pod = ns('POD', 'POD', 'POD', { sandbox: { ...base.sandbox, pidnsPath: '/proc/42/ns/pid' } });
    assert.deepEqual(pod.linux.namespaces[0], { type: 'pid', path: '/proc/42/ns/pid' });
    const target = ns('POD', 'TARGET', 'POD', { targetPidnsPath: '/proc/77/ns/pid' });
    assert.deepEqual(target.linux.namespaces[0], { type: 'pid', path: '/proc/77/ns/pid' });
  });

  it('ipc CONTAINER gets its own; namespaces without a sandbox path are created', () => {
    assert.deepEqual(
      ns('POD', 'CONTAINER', 'CONTAINER').linux.namespaces.find((n) => n.type === 'ipc'),
      { type: 'ipc' },
    );
    const base = input();
    const bare = ns('POD', 'CONTAINER', 'POD', { sandbox: { ...base.sandbox, netnsPath: undefined, utsnsPath: undefined, ipcnsPath: undefined } });
    assert.deepEqual(
      bare.linux.namespaces.map((n) => n.path),
      [undefined, undefined, undefined, undefined, undefined, undefined],
    );
    assert.equal(bare.hostname, 'web-0');
  });

  it('falls back to the sandbox host flags without namespace_options', () => {
    const base = input();
    const { spec } = generateSpec(
      input({
        config: config({ linux: { security_context: { ...securityContext(), namespace_options: undefined } } }),
        sandbox: { ...base.sandbox, hostNetwork: true, hostPid: true, hostIpc: false },
      }),
    );
    assert.deepEqual(
      spec.linux.namespaces.map((n) => n.type),
      ['ipc', 'mount', 'cgroup'],
    );
  });

  it('without namespace_options joins the pod’s shared PID namespace when it has one, as containerd does', () => {
    const base = input();
    const cfg = config({ linux: { security_context: { ...securityContext(), namespace_options: undefined } } });
    const shared = generateSpec(input({ config: cfg, sandbox: { ...base.sandbox, pidnsPath: '/run/berth/ns/sb1/pid' } })).spec;
    assert.deepEqual(
      shared.linux.namespaces.find((n) => n.type === 'pid'),
      { type: 'pid', path: '/run/berth/ns/sb1/pid' },
    );
    const own = generateSpec(input({ config: cfg })).spec;
    assert.deepEqual(
      own.linux.namespaces.find((n) => n.type === 'pid'),
      { type: 'pid' },
    );
  });

  it('refuses POD pid without an infra namespace and TARGET without a resolved target', () => {
    invalid(() => ns('POD', 'POD', 'POD'), /namespace_options\.pid is POD/);
    invalid(() => ns('POD', 'TARGET', 'POD'), /target_id "other"/);
    invalid(() => ns('CONTAINER', 'CONTAINER', 'POD'), /namespace_options\.network "CONTAINER"/);
  });
});

describe('container spec: resources', () => {
  it('maps cpu, cpuset, memory (swap = limit), hugepages and unified', () => {
    const { spec } = generateSpec(
      withResources({
        cpu_shares: 512,
        cpu_quota: 50000,
        cpu_period: 100000,
        cpuset_cpus: '0-1',
        cpuset_mems: '0',
        memory_limit_in_bytes: 64 << 20,
        hugepage_limits: [{ page_size: '2MB', limit: 4 << 20 }],
        unified: { 'memory.high': '50000000' },
      }),
    );
    const r = spec.linux.resources;
    assert.deepEqual(r.cpu, { shares: 512, quota: 50000, period: 100000, cpus: '0-1', mems: '0' });
    assert.deepEqual(r.memory, { limit: 64 << 20, swap: 64 << 20 });
    assert.deepEqual(r.hugepageLimits, [{ pageSize: '2MB', limit: 4 << 20 }]);
    assert.deepEqual(r.unified, { 'memory.high': '50000000' });
  });

  it('leaves out what is unset', () => {
    const r = generateSpec(withResources({})).spec.linux.resources;
    assert.deepEqual(Object.keys(r), ['devices']);
    assert.equal(generateSpec(input()).spec.process.oomScoreAdj, undefined);
  });

  const swap: Array<[string, number, number, boolean, number | undefined]> = [
    ['explicit swap', 100, 300, true, 300],
    ['unlimited swap', 100, -1, true, -1],
    ['no swap accounting', 100, 300, false, undefined],
    ['no swap accounting, no swap asked', 100, 0, false, undefined],
  ];
  for (const [name, limit, sw, acct, want] of swap) {
    it(`memory swap: ${name}`, () => {
      const { spec, warnings } = generateSpec(withResources({ memory_limit_in_bytes: limit, memory_swap_limit_in_bytes: sw }, { swapAccounting: acct }));
      assert.equal(spec.linux.resources.memory!.limit, limit);
      assert.equal(spec.linux.resources.memory!.swap, want);
      assert.equal(warnings.length, !acct && sw !== 0 ? 1 : 0);
    });
  }

  const oom: Array<[number, number, number, string[]]> = [
    [-998, -500, -500, ['oom_score_adj -998 clamped to -500']],
    [1000, 0, 1000, []],
    [0, 0, 0, []],
    [-997, 0, 0, ['oom_score_adj -997 clamped to 0']],
  ];
  for (const [want, min, got, warn] of oom) {
    it(`oom_score_adj ${want} with berthd at ${min} → ${got}`, () => {
      const { spec, warnings } = generateSpec(withResources({ oom_score_adj: want }, { minOomScoreAdj: min }));
      assert.equal(spec.process.oomScoreAdj, got);
      assert.deepEqual(warnings, warn);
    });
  }

  const bad: Array<[string, Partial<CriLinuxResources>, RegExp]> = [
    ['negative memory', { memory_limit_in_bytes: -1 }, /resources\.memory_limit_in_bytes -1/],
    ['swap below memory', { memory_limit_in_bytes: 100, memory_swap_limit_in_bytes: 50 }, /memory_swap_limit_in_bytes 50 is below/],
    ['bad page size', { hugepage_limits: [{ page_size: '2M', limit: 1 }] }, /hugepage_limits\[0\]\.page_size "2M"/],
    ['oom out of range', { oom_score_adj: 1001 }, /oom_score_adj 1001/],
    ['negative shares', { cpu_shares: -2 }, /cpu_shares/],
    ['quota below -1', { cpu_quota: -5 }, /cpu_quota/],
  ];
  for (const [name, r, re] of bad) it(`refuses ${name}`, () => invalid(() => generateSpec(withResources(r)), re));
});

describe('container spec: cgroups path', () => {
  const cases: Array<['cgroupfs' | 'systemd', string, string]> = [
    ['cgroupfs', '/kubepods/besteffort/pod1', '/kubepods/besteffort/pod1/berth-c0ffee'],
    ['cgroupfs', '/kubepods/', '/kubepods/berth-c0ffee'],
    ['cgroupfs', '', '/berth-c0ffee'],
    ['cgroupfs', '/', '/berth-c0ffee'],
    ['systemd', 'kubepods-besteffort-pod1.slice', 'kubepods-besteffort-pod1.slice:berth:c0ffee'],
    ['systemd', '', ':berth:c0ffee'],
  ];
  for (const [driver, parent, want] of cases) {
    it(`${driver} "${parent}" → ${want}`, () => {
      const base = input();
      assert.equal(generateSpec(input({ cgroupDriver: driver, sandbox: { ...base.sandbox, cgroupParent: parent } })).spec.linux.cgroupsPath, want);
    });
  }

  it('refuses a cgroupfs path for systemd and ".." for cgroupfs', () => {
    const base = input();
    invalid(() => generateSpec(input({ cgroupDriver: 'systemd', sandbox: { ...base.sandbox, cgroupParent: '/kubepods' } })), /systemd slice/);
    invalid(() => generateSpec(input({ sandbox: { ...base.sandbox, cgroupParent: '/a/../..' } })), /"\.\."/);
  });
});

describe('container spec: annotations, sysctls, AppArmor', () => {
  it('keeps CRI annotations and adds the container type and sandbox id (which win)', () => {
    const { spec } = generateSpec(input({ config: config({ annotations: { team: 'a', 'io.kubernetes.cri.sandbox-id': 'forged' } }) }));
    assert.deepEqual(spec.annotations, {
      team: 'a',
      'io.kubernetes.cri.container-type': 'container',
      'io.kubernetes.cri.sandbox-id': 'sb1',
      'io.berth.stop-signal': 'SIGNAL_SIGTERM',
    });
  });

  it('copies pod sysctls when given', () => {
    const base = input();
    assert.equal(generateSpec(base).spec.linux.sysctl, undefined);
    const { spec } = generateSpec(input({ sandbox: { ...base.sandbox, sysctls: { 'net.ipv4.ip_forward': '1' } } }));
    assert.deepEqual(spec.linux.sysctl, { 'net.ipv4.ip_forward': '1' });
  });
});

describe('container spec: stop signal', () => {
  const cases: Array<[string, number]> = [
    ['', 15],
    ['SIGTERM', 15],
    ['TERM', 15],
    ['15', 15],
    ['sigquit', 3],
    ['SIGKILL', 9],
    ['SIGUSR1', 10],
    ['SIGWINCH', 28],
    ['SIGRTMIN', 34],
    ['SIGRTMIN+3', 37],
    ['SIGRTMAX-1', 63],
  ];
  for (const [name, n] of cases) {
    it(`"${name}" → ${n}`, () => assert.equal(stopSignal(image({ stopSignal: name })), n));
  }
  for (const name of ['SIGNOPE', '0', '65', 'SIGRTMIN+40', '-1']) {
    it(`refuses "${name}"`, () => invalid(() => stopSignal(image({ stopSignal: name })), /stop signal/));
  }
});
