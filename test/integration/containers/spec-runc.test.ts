/**
 * A generated spec run for real by runc: a busybox rootfs (the host's static busybox),
 * new namespaces (no sandbox paths), RuntimeDefault seccomp, the default capabilities and
 * a clamped oom_score_adj. Needs root, runc and /bin/busybox; skipped otherwise.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ALL_CAPABILITIES, DEFAULT_CAPABILITIES } from '../../../src/containers/capabilities.js';
import { generateSpec } from '../../../src/containers/spec.js';
import { config, GROUP, image, input, PASSWD, securityContext } from '../../helpers/container-spec.js';

function which(bin: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${bin}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

describe('container spec: runs under runc', function () {
  this.timeout(30_000);
  const runc = which('runc');
  let dir = '';
  const ids: string[] = [];

  before(function () {
    if (process.getuid?.() !== 0 || !runc || !existsSync('/bin/busybox')) {
      console.log('      (skipped: needs root, runc and /bin/busybox)');
      this.skip();
    }
    dir = mkdtempSync(join(tmpdir(), 'berth-spec-'));
  });

  after(() => {
    if (!dir) return;
    for (const id of ids) spawnSync(runc!, ['--root', join(dir, 'state'), 'delete', '-f', id]);
    rmSync(dir, { recursive: true, force: true });
  });

  function run(name: string, sc: Parameters<typeof securityContext>[0], script: string): { status: number | null; out: string } {
    const bundle = join(dir, name);
    const rootfs = join(bundle, 'rootfs');
    mkdirSync(join(rootfs, 'bin'), { recursive: true });
    mkdirSync(join(rootfs, 'etc'));
    copyFileSync('/bin/busybox', join(rootfs, 'bin/busybox'));
    for (const tool of ['sh', 'id', 'cat', 'grep', 'ls', 'ps', 'sleep', 'nc', 'hostname']) symlinkSync('busybox', join(rootfs, 'bin', tool));
    writeFileSync(join(rootfs, 'etc/passwd'), PASSWD);
    writeFileSync(join(rootfs, 'etc/group'), GROUP);
    const pod = join(bundle, 'pod');
    mkdirSync(pod);
    writeFileSync(join(pod, 'hosts'), '127.0.0.1 localhost\n');
    writeFileSync(join(pod, 'resolv.conf'), 'nameserver 127.0.0.1\n');
    writeFileSync(join(pod, 'hostname'), 'web-0\n');

    const id = `berth-spec-${randomBytes(4).toString('hex')}`;
    const base = input();
    const { spec, warnings } = generateSpec(
      input({
        containerId: id,
        image: image({ env: [], cmd: [] }),
        config: config({
          command: ['/bin/sh', '-c', script],
          linux: {
            security_context: securityContext(sc),
            resources: {
              cpu_period: 100000,
              cpu_quota: 50000,
              cpu_shares: 256,
              memory_limit_in_bytes: 128 << 20,
              oom_score_adj: -998,
              cpuset_cpus: '',
              cpuset_mems: '',
              hugepage_limits: [],
              unified: {},
              memory_swap_limit_in_bytes: 0,
            },
          },
        }),
        passwd: PASSWD,
        group: GROUP,
        rootfs,
        sandbox: {
          ...base.sandbox,
          netnsPath: undefined,
          ipcnsPath: undefined,
          utsnsPath: undefined,
          shmPath: undefined,
          hostsPath: join(pod, 'hosts'),
          resolvConfPath: join(pod, 'resolv.conf'),
          hostnamePath: join(pod, 'hostname'),
          cgroupParent: '/',
        },
        minOomScoreAdj: Number(readFileSync('/proc/self/oom_score_adj', 'utf8').trim()),
        // swap accounting (memory.memsw) is often off on cgroup v1 hosts
        swapAccounting: existsSync('/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes') || existsSync('/sys/fs/cgroup/memory.swap.max'),
      }),
    );
    assert.ok(warnings.some((w) => w.startsWith('oom_score_adj -998 clamped')));
    writeFileSync(join(bundle, 'config.json'), JSON.stringify(spec, null, 2));
    ids.push(id);
    const r = spawnSync(runc!, ['--root', join(dir, 'state'), 'run', '--bundle', bundle, id], { encoding: 'utf8', timeout: 20_000 });
    return { status: r.status, out: `${r.stdout}${r.stderr}` };
  }

  const capMask = (caps: readonly string[]): string => {
    let m = 0n;
    for (const c of caps) m |= 1n << BigInt(ALL_CAPABILITIES.indexOf(c));
    return m.toString(16).padStart(16, '0');
  };

  it('runs busybox as root with seccomp filtering and the default capabilities', () => {
    const r = run(
      'root',
      { seccomp: { profile_type: 'RuntimeDefault', localhost_ref: '' } },
      'id; grep -E "^(Seccomp|CapEff):" /proc/self/status; hostname; ls / >/dev/null && ps >/dev/null && sleep 0.1 && cat /etc/hosts >/dev/null && echo tools-ok; nc -w 1 127.0.0.1 1 </dev/null 2>&1; echo nc-done',
    );
    assert.equal(r.status, 0, r.out);
    assert.match(r.out, /uid=0\(root\) gid=0\(root\) groups=0\(root\),10\(wheel\)/);
    assert.match(r.out, /Seccomp:\s+2/);
    assert.match(r.out, new RegExp(`CapEff:\\s+${capMask(DEFAULT_CAPABILITIES)}`));
    assert.match(r.out, /web-0/);
    assert.match(r.out, /tools-ok/);
    // nc may fail to connect (loopback is down in a fresh netns), but never for seccomp's EPERM.
    assert.match(r.out, /nc-done/);
    assert.doesNotMatch(r.out, /Operation not permitted/);
  });

  it('runs as a non-root user with its image groups, no capabilities and no_new_privs', () => {
    const r = run(
      'user',
      {
        run_as_user: { value: 1000 },
        supplemental_groups: [2000],
        no_new_privs: true,
        seccomp: { profile_type: 'RuntimeDefault', localhost_ref: '' },
        capabilities: { add_capabilities: [], drop_capabilities: ['ALL'] },
      },
      'id; grep -E "^(CapEff|NoNewPrivs):" /proc/self/status',
    );
    assert.equal(r.status, 0, r.out);
    assert.match(r.out, /uid=1000\(app\) gid=1000\(app\) groups=10\(wheel\),29\(audio\),1000\(app\),2000/);
    assert.match(r.out, /CapEff:\s+0{16}/);
    assert.match(r.out, /NoNewPrivs:\s+1/);
  });
});
