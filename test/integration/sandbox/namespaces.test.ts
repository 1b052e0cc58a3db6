import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { hostname as hostHostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isKind } from '../../../src/common/errors.js';
import { isMountPoint, mountPoints } from '../../../src/common/mount.js';
import { createPinnedNamespaces, isPinned, removePinnedNamespaces, type PodNamespace } from '../../../src/sandbox/namespaces.js';
import { until } from '../../helpers/berthd.js';

const MODULE = fileURLToPath(new URL('../../../src/sandbox/namespaces.js', import.meta.url));
const KINDS: PodNamespace[] = ['net', 'ipc', 'uts'];

/** The namespace a process sees after `nsenter --<kind>=<pin>`. */
function nsInside(kind: PodNamespace, pin: string): string {
  return execFileSync('nsenter', [`--${kind}=${pin}`, '--', 'readlink', `/proc/self/ns/${kind}`], { encoding: 'utf8' }).trim();
}

/** Mount points at or below `base` in this mount namespace. */
function mountsUnder(base: string): string[] {
  return mountPoints().filter((p) => p === base || p.startsWith(base + '/'));
}

/** Detaches everything mounted below `base` (deepest first) and removes it. */
function scrub(base: string): void {
  for (const p of mountsUnder(base).reverse()) execFileSync('umount', ['-l', p]);
  rmSync(base, { recursive: true, force: true });
}

describe('sandbox: pinned namespaces', function () {
  let base: string;
  beforeEach(() => (base = mkdtempSync(join(tmpdir(), 'berth-ns-'))));
  afterEach(() => scrub(base));

  it('pins new, distinct net, ipc and uts namespaces and sets the hostname inside', async () => {
    const dir = join(base, 'pod');
    const pins = await createPinnedNamespaces(dir, KINDS, { hostname: 'pod-a' });
    assert.deepEqual(pins, { net: join(dir, 'net'), ipc: join(dir, 'ipc'), uts: join(dir, 'uts') });
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    for (const kind of KINDS) {
      const pin = pins[kind] as string;
      assert.ok(isPinned(pin), `${kind} pinned`);
      assert.ok(isMountPoint(pin), `${kind} is a mount point`);
      const inside = nsInside(kind, pin);
      assert.notEqual(inside, readlinkSync(`/proc/self/ns/${kind}`), `${kind} differs from the host's`);
      assert.equal(inside, `${kind}:[${statSync(pin).ino}]`, `${kind} pin inode is the namespace`);
    }
    assert.equal(execFileSync('nsenter', [`--uts=${pins.uts}`, 'hostname'], { encoding: 'utf8' }).trim(), 'pod-a');
    assert.notEqual(hostHostname(), 'pod-a');

    const other = await createPinnedNamespaces(join(base, 'other'), ['net']);
    assert.deepEqual(other, { net: join(base, 'other', 'net') });
    assert.notEqual(nsInside('net', other.net as string), nsInside('net', pins.net as string));
    assert.equal(isPinned(join(base, 'other', 'ipc')), false);
  });

  it('brings lo of the new network namespace up when asked (no loopback plugin), and only then', async () => {
    const loAddrs = (pin: string): string => execFileSync('nsenter', [`--net=${pin}`, '--', 'ip', '-o', 'addr', 'show', 'dev', 'lo'], { encoding: 'utf8' });
    const loFlags = (pin: string): string => execFileSync('nsenter', [`--net=${pin}`, '--', 'ip', '-o', 'link', 'show', 'dev', 'lo'], { encoding: 'utf8' });
    const up = await createPinnedNamespaces(join(base, 'up'), KINDS, { hostname: 'pod-lo', loopback: true });
    assert.match(loFlags(up.net!), /<LOOPBACK,UP,LOWER_UP>/);
    assert.match(loAddrs(up.net!), /inet 127\.0\.0\.1\/8/);
    assert.equal(execFileSync('nsenter', [`--uts=${up.uts}`, 'hostname'], { encoding: 'utf8' }).trim(), 'pod-lo');
    const down = await createPinnedNamespaces(join(base, 'down'), ['net']);
    assert.doesNotMatch(loFlags(down.net!), /[<,]UP[,>]/);
    assert.doesNotMatch(loAddrs(down.net!), /127\.0\.0\.1/);
    // Without a new network namespace it would be the node's lo: refused before anything is made.
    await assert.rejects(createPinnedNamespaces(join(base, 'nonet'), ['ipc'], { loopback: true }), /bringing lo up needs a new network namespace/);
    assert.equal(existsSync(join(base, 'nonet')), false);
  });

  it('takes a few milliseconds', async () => {
    const creates: number[] = [];
    const removes: number[] = [];
    const ms = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;
    for (let i = 0; i < 15; i++) {
      const dir = join(base, `p${i}`);
      const t0 = process.hrtime.bigint();
      await createPinnedNamespaces(dir, KINDS, { hostname: `pod-${i}` });
      creates.push(ms(t0));
      const t1 = process.hrtime.bigint();
      await removePinnedNamespaces(dir);
      removes.push(ms(t1));
    }
    const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
    console.log(
      `      create median ${median(creates).toFixed(1)} ms (max ${Math.max(...creates).toFixed(1)}), ` +
        `remove median ${median(removes).toFixed(1)} ms (max ${Math.max(...removes).toFixed(1)})`,
    );
    assert.ok(median(creates) < 100, `create took ${median(creates)} ms`);
  });

  it('pins outlive the process that made them (mounts of the host, not of a child)', async () => {
    const dir = join(base, 'pod');
    const script = `import { createPinnedNamespaces } from ${JSON.stringify(MODULE)};
      const pins = await createPinnedNamespaces(${JSON.stringify(dir)}, ['net', 'uts'], { hostname: 'orphan' });
      console.log(JSON.stringify({ pid: process.pid, pins }));`;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    const { pid, pins } = JSON.parse(out) as { pid: number; pins: { net: string; uts: string } };
    assert.equal(existsSync(`/proc/${pid}`), false, 'the creating process has exited');
    assert.ok(isPinned(pins.net) && isPinned(pins.uts));
    assert.ok(mountsUnder(dir).includes(pins.net), 'the pin is a mount of this (the host) mount namespace');
    assert.match(execFileSync('nsenter', [`--net=${pins.net}`, 'ip', '-o', 'link'], { encoding: 'utf8' }), /^1: lo:/);
    assert.equal(execFileSync('nsenter', [`--uts=${pins.uts}`, 'hostname'], { encoding: 'utf8' }).trim(), 'orphan');
  });

  it('removes idempotently, leaving no mount and no file', async () => {
    const dir = join(base, 'pod');
    await createPinnedNamespaces(dir, KINDS);
    assert.equal(mountsUnder(dir).length, 3);
    await removePinnedNamespaces(dir);
    assert.deepEqual(mountsUnder(base), []);
    assert.equal(existsSync(dir), false);
    await removePinnedNamespaces(dir);
    await removePinnedNamespaces(join(base, 'never-made'));

    // A half-removed dir (pins unmounted by hand, files left) also goes.
    await createPinnedNamespaces(dir, ['net', 'ipc']);
    execFileSync('umount', ['-l', join(dir, 'net')]);
    await removePinnedNamespaces(dir);
    assert.deepEqual(mountsUnder(base), []);
    assert.equal(existsSync(dir), false);
  });

  it('undoes everything when it fails after the namespaces were pinned', async () => {
    const dir = join(base, 'pod');
    // The pin files are made, then the kernel refuses the name (over 64 bytes) in the new
    // UTS namespace: the files must go, and nothing stays mounted.
    await assert.rejects(createPinnedNamespaces(dir, KINDS, { hostname: 'a'.repeat(65) }), (err: unknown) => {
      assert.ok(isKind(err, 'Internal'));
      assert.match(err.message, /pinning net, ipc, uts failed: sethostname .*Invalid argument/);
      return true;
    });
    assert.deepEqual(mountsUnder(base), []);
    assert.equal(existsSync(dir), false);
  });

  it('refuses bad kinds and a hostname without a UTS namespace before touching anything', async () => {
    const dir = join(base, 'pod');
    await assert.rejects(createPinnedNamespaces(dir, ['net', 'pid' as PodNamespace]), (e) => isKind(e, 'InvalidArgument'));
    await assert.rejects(createPinnedNamespaces(dir, []), (e) => isKind(e, 'InvalidArgument'));
    await assert.rejects(createPinnedNamespaces(dir, ['net'], { hostname: 'x' }), (e) => isKind(e, 'InvalidArgument'));
    const aborted = AbortSignal.abort();
    await assert.rejects(createPinnedNamespaces(dir, KINDS, { signal: aborted }), (e) => isKind(e, 'Cancelled'));
    assert.equal(existsSync(dir), false);
    assert.deepEqual(mountsUnder(base), []);
  });

  it('leaves nothing behind on a read-only filesystem', async () => {
    const ro = join(base, 'ro');
    mkdirSync(ro);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', ro]);
    mkdirSync(join(ro, 'pod'));
    execFileSync('mount', ['-o', 'remount,ro', ro]);
    // The dir exists (kept, not ours), the pin files cannot be made.
    await assert.rejects(createPinnedNamespaces(join(ro, 'pod'), KINDS), /read-only file system/i);
    assert.deepEqual(mountsUnder(base), [ro]);
    // The dir cannot even be made.
    await assert.rejects(createPinnedNamespaces(join(ro, 'other'), KINDS), /read-only file system/i);
    assert.deepEqual(mountsUnder(base), [ro]);
  });

  it('never stacks pins on existing ones', async () => {
    const dir = join(base, 'pod');
    const pins = await createPinnedNamespaces(dir, ['net']);
    const before = nsInside('net', pins.net as string);
    await assert.rejects(createPinnedNamespaces(dir, ['net']), (e) => isKind(e, 'AlreadyExists'));
    assert.equal(nsInside('net', pins.net as string), before);
    assert.deepEqual(mountsUnder(dir), [pins.net]);
  });

  describe('mount propagation', () => {
    /** Starts a process in a new mount namespace that is a slave of ours; returns its pid. */
    async function slaveNamespace(): Promise<{ pid: number; stop: () => void }> {
      const child = spawn('unshare', ['--mount', '--propagation', 'slave', 'sleep', '60'], { stdio: 'ignore' });
      const pid = child.pid as number;
      // unshare has made its mount namespace once /proc/<pid>/ns/mnt differs from ours.
      await until(async () => (readlinkSafe(`/proc/${pid}/ns/mnt`) !== readlinkSync('/proc/self/ns/mnt') ? true : undefined), 5000, 10);
      return { pid, stop: () => child.kill('SIGKILL') };
    }
    const readlinkSafe = (p: string): string | undefined => {
      try {
        return readlinkSync(p);
      } catch {
        return undefined;
      }
    };
    const hasMount = (pid: number, path: string): boolean =>
      readFileSync(`/proc/${pid}/mountinfo`, 'utf8')
        .split('\n')
        .some((l) => l.split(' ')[4] === path);

    it('under a private parent, umount alone leaves a copy elsewhere; deleting the pin detaches it', async () => {
      const dir = join(base, 'pod');
      const pins = await createPinnedNamespaces(dir, ['net']);
      const pin = pins.net as string;
      const other = await slaveNamespace();
      try {
        assert.ok(hasMount(other.pid, pin));
        execFileSync('umount', ['-l', pin]);
        assert.ok(hasMount(other.pid, pin), 'a private mount does not propagate its unmount');
        await removePinnedNamespaces(dir); // unlinks the file: the kernel detaches the copies
        assert.equal(hasMount(other.pid, pin), false);
      } finally {
        other.stop();
      }
    });

    it('under a shared parent, pins work and their unmount reaches other mount namespaces', async () => {
      const root = join(base, 'ns');
      mkdirSync(root);
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', root]);
      execFileSync('mount', ['--make-shared', root]);
      const dir = join(root, 'pod');
      const pins = await createPinnedNamespaces(dir, KINDS, { hostname: 'shared' });
      const pin = pins.net as string;
      assert.match(execFileSync('findmnt', ['-n', '-o', 'PROPAGATION', pin], { encoding: 'utf8' }), /shared/);
      assert.equal(execFileSync('nsenter', [`--uts=${pins.uts}`, 'hostname'], { encoding: 'utf8' }).trim(), 'shared');
      const other = await slaveNamespace();
      try {
        assert.ok(hasMount(other.pid, pin));
        execFileSync('umount', ['-l', pin]);
        assert.equal(hasMount(other.pid, pin), false);
        await removePinnedNamespaces(dir);
        assert.deepEqual(mountsUnder(root), [root]);
      } finally {
        other.stop();
      }
    });
  });
});
