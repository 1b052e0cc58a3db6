/**
 * The stats readers on cgroup trees laid out in temp dirs as the kernel lays them out
 * (v1 hybrid as on this kind of machine, and v2), plus the parsers and the du-like walk.
 */
import assert from 'node:assert/strict';
import { linkSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseCgroupMounts, parseFlatKeyed, parseProcCgroups, parsePsi, readCgroupSample } from '../../../src/stats/cgroups.js';
import { measure, parseNetDev, slicePath, sumSamples } from '../../../src/stats/stats-service.js';

function tree(root: string, files: Record<string, string>): void {
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(join(root, rel, '..'), { recursive: true });
    writeFileSync(join(root, rel), text);
  }
}

describe('stats: cgroup readers', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'berth-cg-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('parses cgroup mounts from mountinfo: v1 controllers (joined ones too), the v2 mount, escapes', () => {
    const m = parseCgroupMounts(
      [
        '31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755',
        '32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct',
        '35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory',
        '40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd',
        '41 31 0:38 /sub /sys/fs/cgroup/uni\\040fied rw,relatime - cgroup2 cgroup2 rw',
      ].join('\n'),
    );
    assert.deepEqual(m.v1.get('cpu'), { mountpoint: '/sys/fs/cgroup/cpu,cpuacct', root: '/' });
    assert.deepEqual(m.v1.get('cpuacct'), { mountpoint: '/sys/fs/cgroup/cpu,cpuacct', root: '/' });
    assert.equal(m.v1.get('memory')?.mountpoint, '/sys/fs/cgroup/memory');
    assert.equal(m.v1.has('name=systemd'), false);
    assert.deepEqual(m.v2, { mountpoint: '/sys/fs/cgroup/uni fied', root: '/sub' });
  });

  it('parses /proc/<pid>/cgroup, v1 and v2 lines', () => {
    const cg = parseProcCgroups('12:cpu,cpuacct:/berth-abc\n4:memory:/berth-abc\n1:name=systemd:/x\n0::/\n');
    assert.equal(cg.v1.get('cpuacct'), '/berth-abc');
    assert.equal(cg.v1.get('memory'), '/berth-abc');
    assert.equal(cg.v2, '/');
  });

  it('parses PSI and flat keyed files', () => {
    const p = parsePsi('some avg10=1.50 avg60=0.25 avg300=0.00 total=12345\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n');
    assert.deepEqual(p, { some: { total: 12345n, avg10: 1.5, avg60: 0.25, avg300: 0 }, full: { total: 7n, avg10: 0, avg60: 0, avg300: 0 } });
    assert.deepEqual(parsePsi('garbage'), {});
    const kv = parseFlatKeyed('cache 10\nrss 20\nbad x\n\n');
    assert.deepEqual(
      [...kv],
      [
        ['cache', 10n],
        ['rss', 20n],
      ],
    );
  });

  it('reads a v1 container cgroup: cpuacct, memory with working set, limit, OOM kills and swap, pids', async () => {
    const path = '/kubepods/pod1/berth-c1';
    tree(dir, {
      [`cpuacct${path}/cpuacct.usage`]: '5000000000\n',
      [`memory${path}/memory.usage_in_bytes`]: '104857600\n',
      [`memory${path}/memory.limit_in_bytes`]: '209715200\n',
      [`memory${path}/memory.memsw.usage_in_bytes`]: '115343360\n',
      [`memory${path}/memory.memsw.limit_in_bytes`]: '314572800\n',
      [`memory${path}/memory.stat`]: 'cache 1\nrss 5\ntotal_rss 52428800\ntotal_inactive_file 20971520\ntotal_pgfault 900\ntotal_pgmajfault 3\n',
      [`memory${path}/memory.oom_control`]: 'oom_kill_disable 0\nunder_oom 0\noom_kill 2\n',
      [`pids${path}/pids.current`]: '4\n',
    });
    const mounts = { v1: new Map(['cpu', 'cpuacct', 'memory', 'pids'].map((c) => [c, { mountpoint: join(dir, c === 'cpu' ? 'cpuacct' : c), root: '/' }])) };
    const s = await readCgroupSample(mounts, parseProcCgroups(`3:cpu,cpuacct:${path}\n4:memory:${path}\n5:pids:${path}\n0::/\n`), () => 42n);
    assert.equal(s.timestamp, 42n);
    assert.equal(s.cpu?.usageNs, 5_000_000_000n);
    assert.deepEqual(s.memory, {
      usage: 104857600n,
      workingSet: 104857600n - 20971520n,
      rss: 52428800n,
      pageFaults: 900n,
      majorPageFaults: 3n,
      limit: 209715200n,
      oomKills: 2n,
    });
    assert.deepEqual(s.swap, { usage: 115343360n - 104857600n, limit: 314572800n - 209715200n });
    assert.equal(s.pids, 4n);
  });

  it('leaves out an unlimited v1 limit, and keeps a working set at 0 rather than negative', async () => {
    tree(dir, {
      'memory/c/memory.usage_in_bytes': '100\n',
      'memory/c/memory.limit_in_bytes': '9223372036854771712\n',
      'memory/c/memory.stat': 'total_inactive_file 4096\n',
    });
    const s = await readCgroupSample({ v1: new Map([['memory', { mountpoint: join(dir, 'memory'), root: '/' }]]) }, parseProcCgroups('4:memory:/c\n'));
    assert.deepEqual(s.memory, { usage: 100n, workingSet: 0n });
    assert.equal(s.cpu, undefined);
  });

  it('reads a v2 cgroup: cpu.stat in µs, memory.current and memory.max, OOM kills, swap, pids, PSI', async () => {
    tree(dir, {
      'k/c/cpu.stat': 'usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n',
      'k/c/cpu.pressure': 'some avg10=0.10 avg60=0.00 avg300=0.00 total=99\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1\n',
      'k/c/memory.current': '8192\n',
      'k/c/memory.max': 'max\n',
      'k/c/memory.stat': 'anon 4096\ninactive_file 1024\npgfault 10\npgmajfault 1\n',
      'k/c/memory.events': 'low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n',
      'k/c/memory.swap.current': '0\n',
      'k/c/memory.swap.max': '1048576\n',
      'k/c/memory.pressure': 'some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n',
      'k/c/io.pressure': 'some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n',
      'k/c/pids.current': '2\n',
    });
    const s = await readCgroupSample({ v1: new Map(), v2: { mountpoint: dir, root: '/' } }, parseProcCgroups('0::/k/c\n'));
    assert.equal(s.cpu?.usageNs, 2_500_000n);
    assert.equal(s.cpu?.psi?.some?.total, 99n);
    assert.deepEqual(
      { ...s.memory, psi: undefined },
      {
        usage: 8192n,
        workingSet: 7168n,
        rss: 4096n,
        pageFaults: 10n,
        majorPageFaults: 1n,
        oomKills: 1n,
        psi: undefined,
      },
    );
    assert.deepEqual(s.swap, { usage: 0n, limit: 1048576n });
    assert.equal(s.pids, 2n);
    assert.equal(s.io?.psi.some?.total, 5n);
  });

  it('reads nothing for a vanished cgroup, and never leaves the hierarchy through ".."', async () => {
    tree(dir, { 'memory/memory.usage_in_bytes': '1\n', 'memory/memory.stat': 'x 1\n' });
    const mounts = { v1: new Map([['memory', { mountpoint: join(dir, 'memory', 'sub'), root: '/' }]]) };
    assert.equal((await readCgroupSample(mounts, parseProcCgroups('4:memory:/gone\n'))).memory, undefined);
    assert.equal((await readCgroupSample(mounts, parseProcCgroups('4:memory:/../..\n'))).memory, undefined);
  });
});

describe('stats: helpers', () => {
  it('expands a systemd slice to its cgroup path', () => {
    assert.equal(slicePath('kubepods-burstable-pod12.slice'), '/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice');
    assert.equal(slicePath('system.slice'), '/system.slice');
    assert.equal(slicePath('-.slice'), '/');
  });

  it('parses /proc/net/dev', () => {
    const text = [
      'Inter-|   Receive                                                |  Transmit',
      ' face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed',
      '    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0',
      '  eth0:    5000      40    2    0    0     0          0         0     3000      30    1    0    0     0       0          0',
    ].join('\n');
    assert.deepEqual(parseNetDev(text), [
      { name: 'lo', rxBytes: 100n, rxErrors: 0n, txBytes: 100n, txErrors: 0n },
      { name: 'eth0', rxBytes: 5000n, rxErrors: 2n, txBytes: 3000n, txErrors: 1n },
    ]);
  });

  it('sums samples for a pod without a cgroup of its own', () => {
    assert.equal(sumSamples([]), undefined);
    const s = sumSamples([
      { timestamp: 5n, cpu: { usageNs: 10n }, memory: { usage: 100n, workingSet: 80n, rss: 50n }, pids: 2n },
      { timestamp: 7n, cpu: { usageNs: 5n }, memory: { usage: 10n, workingSet: 8n }, pids: 1n },
    ]);
    assert.deepEqual(s, { timestamp: 7n, cpu: { usageNs: 15n }, memory: { usage: 110n, workingSet: 88n, rss: 50n }, pids: 3n });
  });

  it('measures a tree as du does: blocks, inodes, hard links once, symlinks not followed', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'berth-du-'));
    try {
      mkdirSync(join(dir, 'a/b'), { recursive: true });
      writeFileSync(join(dir, 'a/b/f'), Buffer.alloc(64 * 1024, 1));
      linkSync(join(dir, 'a/b/f'), join(dir, 'a/hard'));
      symlinkSync('/usr', join(dir, 'link'));
      const u = await measure(dir);
      // dir, a, a/b, f (once), link
      assert.equal(u.inodes, 5n);
      assert.ok(u.bytes >= 64n * 1024n && u.bytes < 64n * 1024n + 64n * 1024n, `bytes ${u.bytes}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
