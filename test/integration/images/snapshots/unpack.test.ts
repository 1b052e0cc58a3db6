/**
 * Layer unpack onto a real filesystem as root: owners, modes, devices, FIFOs, trusted
 * xattrs, whiteouts, hardlinks and symlinks as the kernel stores them.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKind } from '../../../../src/common/errors.js';
import type { LayerCompression, UnpackOptions, UnpackResult } from '../../../../src/images/snapshots/unpack.js';
import { expectRefused, makeTar, unpackInto, type Entry } from '../../../helpers/tar-layers.js';

function sha256(buf: Buffer): string {
  return `sha256:${createHash('sha256').update(buf).digest('hex')}`;
}

function xattrsOf(path: string): Record<string, string> {
  const out = execFileSync('getfattr', ['-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', path], {
    encoding: 'utf8',
  });
  const attrs: Record<string, string> = {};
  for (const line of out.split('\n')) {
    const m = /^([^#=][^=]*)=0x([0-9a-f]*)$/.exec(line);
    if (m) attrs[m[1] as string] = m[2] as string;
  }
  return attrs;
}

function majorOf(rdev: number): number {
  return ((rdev >> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
}

function minorOf(rdev: number): number {
  return (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
}

describe('images: layer unpack', () => {
  let work: string;
  let target: string;

  beforeEach(() => {
    work = fs.mkdtempSync(join(tmpdir(), 'berth-unpack-'));
    target = join(work, 'snapshot');
    fs.mkdirSync(target);
  });
  afterEach(() => fs.rmSync(work, { recursive: true, force: true }));

  const unpack = (raw: Buffer, compression: LayerCompression = 'none', opts: Partial<UnpackOptions> = {}): Promise<UnpackResult> =>
    unpackInto(target, raw, compression, opts);
  const refused = (entries: Entry[], pattern: RegExp): Promise<void> => expectRefused(target, entries, pattern);

  it('unpacks a small tree and reports what it read', async () => {
    const raw = await makeTar([
      { header: { name: 'etc/', type: 'directory' } },
      { header: { name: 'etc/hostname' }, content: 'berth\n' },
      { header: { name: './usr/bin/tool', mode: 0o755 }, content: Buffer.alloc(1000, 7) },
    ]);
    const result = await unpack(raw);
    assert.equal(fs.readFileSync(join(target, 'etc/hostname'), 'utf8'), 'berth\n');
    assert.deepEqual(fs.readFileSync(join(target, 'usr/bin/tool')), Buffer.alloc(1000, 7));
    assert.equal(fs.statSync(join(target, 'usr')).mode & 0o7777, 0o755, 'implicit parents are 0755');
    // usr and usr/bin are not listed: two implicit directories, a block each in the byte count.
    assert.deepEqual(result, {
      diffId: sha256(raw),
      tarBytes: raw.length,
      fileBytes: 1006,
      entries: 3,
      implicitDirectories: 2,
      chargedBytes: raw.length + 2 * 4096,
    });
  });

  it('preserves numeric owners of files, directories and symlinks', async () => {
    await unpack(
      await makeTar([
        { header: { name: 'home/', type: 'directory', uid: 42, gid: 43 } },
        { header: { name: 'home/file', uid: 1234, gid: 5678 }, content: 'x' },
        { header: { name: 'home/link', type: 'symlink', linkname: 'file', uid: 7, gid: 8 } },
        // PAX records carry ids too large for the octal field
        { header: { name: 'big', uid: 0, gid: 0, pax: { uid: '3000000000', gid: '3000000001' } }, content: '' },
      ]),
    );
    const owner = (p: string): [number, number] => {
      const st = fs.lstatSync(join(target, p));
      return [st.uid, st.gid];
    };
    assert.deepEqual(owner('home'), [42, 43]);
    assert.deepEqual(owner('home/file'), [1234, 5678]);
    assert.deepEqual(owner('home/link'), [7, 8]);
    assert.deepEqual(owner('big'), [3000000000, 3000000001]);
  });

  it('preserves setuid, setgid and sticky bits, even on files owned by others', async () => {
    await unpack(
      await makeTar([
        { header: { name: 'bin/su', mode: 0o4755, uid: 1000, gid: 1000 }, content: 'su' },
        { header: { name: 'bin/wall', mode: 0o2755, uid: 0, gid: 5 }, content: 'wall' },
        { header: { name: 'tmp/', type: 'directory', mode: 0o1777 } },
        { header: { name: 'shared/', type: 'directory', mode: 0o2775, gid: 100 } },
      ]),
    );
    const mode = (p: string): number => fs.lstatSync(join(target, p)).mode & 0o7777;
    assert.equal(mode('bin/su'), 0o4755);
    assert.equal(mode('bin/wall'), 0o2755);
    assert.equal(mode('tmp'), 0o1777);
    assert.equal(mode('shared'), 0o2775);
  });

  it('sets the mtimes of files, symlinks and directories (after their children)', async () => {
    const old = new Date('2001-02-03T04:05:06Z');
    await unpack(
      await makeTar([
        { header: { name: 'a/', type: 'directory', mtime: old } },
        { header: { name: 'a/b/', type: 'directory', mtime: old } },
        { header: { name: 'a/b/file', mtime: old }, content: 'data' },
        { header: { name: 'a/link', type: 'symlink', linkname: '/nowhere', mtime: old } },
        { header: { name: 'a/b/precise', pax: { mtime: '1500000000.25' } }, content: '' },
      ]),
    );
    for (const p of ['a', 'a/b', 'a/b/file', 'a/link']) {
      assert.equal(fs.lstatSync(join(target, p)).mtimeMs, old.getTime(), p);
    }
    assert.equal(fs.lstatSync(join(target, 'a/b/precise')).mtimeMs, 1500000000250);
  });

  it('makes hardlinks share the inode of their target', async () => {
    await unpack(
      await makeTar([
        { header: { name: 'bin/busybox', mode: 0o755 }, content: 'bb' },
        { header: { name: 'bin/sh', type: 'link', linkname: 'bin/busybox' } },
        { header: { name: 'usr/bin/env', type: 'link', linkname: './bin/busybox' } },
      ]),
    );
    const ino = fs.statSync(join(target, 'bin/busybox')).ino;
    assert.equal(fs.statSync(join(target, 'bin/sh')).ino, ino);
    assert.equal(fs.statSync(join(target, 'usr/bin/env')).ino, ino);
    assert.equal(fs.statSync(join(target, 'bin/sh')).nlink, 3);
  });

  it('keeps symlinks as symlinks with their target, absolute ones included', async () => {
    await unpack(
      await makeTar([
        { header: { name: 'etc/mtab', type: 'symlink', linkname: '/proc/self/mounts' } },
        { header: { name: 'lib', type: 'symlink', linkname: 'usr/lib' } },
      ]),
    );
    assert.ok(fs.lstatSync(join(target, 'etc/mtab')).isSymbolicLink());
    assert.equal(fs.readlinkSync(join(target, 'etc/mtab')), '/proc/self/mounts');
    assert.equal(fs.readlinkSync(join(target, 'lib')), 'usr/lib');
  });

  it('creates character and block devices with their major and minor', async () => {
    await unpack(
      await makeTar([
        { header: { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 } },
        { header: { name: 'dev/loop0', type: 'block-device', devmajor: 7, devminor: 0, mode: 0o660, gid: 6 } },
      ]),
    );
    const nul = fs.lstatSync(join(target, 'dev/null'));
    assert.ok(nul.isCharacterDevice());
    assert.deepEqual([majorOf(nul.rdev), minorOf(nul.rdev)], [1, 3]);
    assert.equal(nul.mode & 0o7777, 0o666);
    const loop = fs.lstatSync(join(target, 'dev/loop0'));
    assert.ok(loop.isBlockDevice());
    assert.deepEqual([majorOf(loop.rdev), minorOf(loop.rdev), loop.gid], [7, 0, 6]);
  });

  it('creates FIFOs', async () => {
    await unpack(await makeTar([{ header: { name: 'run/pipe', type: 'fifo', mode: 0o600 } }]));
    const st = fs.lstatSync(join(target, 'run/pipe'));
    assert.ok(st.isFIFO());
    assert.equal(st.mode & 0o7777, 0o600);
  });

  it('keeps user xattrs (binary values too) and drops trusted.overlay ones', async () => {
    const raw = await makeTar([
      {
        header: {
          name: 'file',
          pax: { 'SCHILY.xattr.user.comment': 'hello', 'SCHILY.xattr.user.bin': 'PQRS' },
        },
        content: 'x',
      },
      {
        // chown clears file capabilities, so they must be set after it
        header: {
          name: 'bin/ping',
          uid: 1000,
          mode: 0o755,
          pax: { 'SCHILY.xattr.security.capability': 'C'.repeat(20) },
        },
        content: 'ping',
      },
      {
        header: {
          name: 'dir/',
          type: 'directory',
          pax: { 'SCHILY.xattr.trusted.overlay.opaque': 'y', 'SCHILY.xattr.trusted.overlay.redirect': '/etc' },
        },
      },
    ]);
    // tar.pack writes PAX values as UTF-8; patch in bytes that are not valid UTF-8.
    const at = raw.indexOf('user.bin=PQRS') + 'user.bin='.length;
    Buffer.from([0x80, 0xff, 0x00, 0x01]).copy(raw, at);
    const capSetuid = Buffer.alloc(20);
    capSetuid.writeUInt32LE(0x02000001, 0); // revision 2, effective
    capSetuid.writeUInt32LE(1 << 7, 4); // permitted: CAP_SETUID, not valid UTF-8
    capSetuid.copy(raw, raw.indexOf('security.capability=') + 'security.capability='.length);
    await unpack(raw);
    assert.equal(xattrsOf(join(target, 'bin/ping'))['security.capability'], capSetuid.toString('hex'));
    assert.deepEqual(xattrsOf(join(target, 'file')), {
      'user.bin': '80ff0001',
      'user.comment': Buffer.from('hello').toString('hex'),
    });
    assert.deepEqual(xattrsOf(join(target, 'dir')), {});
  });

  it('turns a .wh. whiteout into a 0:0 character device', async () => {
    await unpack(
      await makeTar([
        { header: { name: 'etc/', type: 'directory' } },
        { header: { name: 'etc/.wh.passwd' }, content: '' },
        { header: { name: '.wh.opt' }, content: '' },
      ]),
    );
    for (const p of ['etc/passwd', 'opt']) {
      const st = fs.lstatSync(join(target, p));
      assert.ok(st.isCharacterDevice(), p);
      assert.equal(st.rdev, 0, p);
    }
    assert.deepEqual(fs.readdirSync(join(target, 'etc')), ['passwd']);
    assert.deepEqual(fs.readdirSync(target).sort(), ['etc', 'opt'], 'nothing else is left in the layer');
  });

  it('marks a directory with .wh..wh..opq as opaque, creating it if needed', async () => {
    await unpack(
      await makeTar([
        { header: { name: 'var/', type: 'directory' } },
        { header: { name: 'var/.wh..wh..opq' }, content: '' },
        { header: { name: 'opt/app/.wh..wh..opq' }, content: '' },
        { header: { name: '.wh..wh.plnk/123.456' }, content: 'aufs' },
      ]),
    );
    for (const dir of ['var', 'opt/app']) {
      const args = ['--absolute-names', '-n', 'trusted.overlay.opaque', '--only-values', join(target, dir)];
      const value = execFileSync('getfattr', args, { encoding: 'utf8' });
      assert.equal(value, 'y', dir);
    }
    assert.deepEqual(fs.readdirSync(join(target, 'var')), []);
    assert.deepEqual(fs.readdirSync(target).sort(), ['opt', 'var']);
  });

  it('makes a directory that replaces a whiteout of the same layer opaque', async () => {
    await unpack(
      await makeTar([
        { header: { name: '.wh.data' }, content: '' },
        { header: { name: 'data/new' }, content: 'fresh' },
      ]),
    );
    assert.ok(fs.lstatSync(join(target, 'data')).isDirectory());
    assert.equal(xattrsOf(join(target, 'data'))['trusted.overlay.opaque'], '79');
  });

  it('gives the same diff ID for gzip, zstd and plain layers: the sha256 of the whole tar', async () => {
    const tarBuf = await makeTar([{ header: { name: 'a/', type: 'directory' } }, { header: { name: 'a/file' }, content: Buffer.alloc(300_000, 'z') }]);
    // tar writers pad to a record size: the zero blocks after the end belong to the diff ID
    const raw = Buffer.concat([tarBuf, Buffer.alloc(10240 - (tarBuf.length % 10240))]);
    for (const compression of ['gzip', 'zstd', 'none'] as const) {
      fs.rmSync(target, { recursive: true });
      fs.mkdirSync(target);
      const result = await unpack(raw, compression);
      assert.equal(result.diffId, sha256(raw), compression);
      assert.equal(result.tarBytes, raw.length, compression);
      assert.equal(fs.statSync(join(target, 'a/file')).size, 300_000, compression);
    }
  });

  it('replaces a symlink at an entry path instead of writing through it', async () => {
    const outside = join(work, 'outside');
    fs.writeFileSync(outside, 'original');
    await unpack(await makeTar([{ header: { name: 'x', type: 'symlink', linkname: outside } }, { header: { name: 'x' }, content: 'replaced' }]));
    assert.equal(fs.readFileSync(outside, 'utf8'), 'original');
    assert.ok(fs.lstatSync(join(target, 'x')).isFile());
    assert.equal(fs.readFileSync(join(target, 'x'), 'utf8'), 'replaced');
  });

  it('lets later entries replace earlier ones, keeping a directory for a directory', async () => {
    await unpack(
      await makeTar([
        { header: { name: 'd/', type: 'directory', mode: 0o700 } },
        { header: { name: 'd/old' }, content: 'old' },
        { header: { name: 'd/', type: 'directory', mode: 0o750 } },
        { header: { name: 'f' }, content: 'file' },
        { header: { name: 'f/', type: 'directory' } },
        { header: { name: 'f/inner' }, content: 'inner' },
        { header: { name: 'gone/', type: 'directory' } },
        { header: { name: 'gone/child' }, content: 'child' },
        { header: { name: 'gone' }, content: 'now a file' },
      ]),
    );
    assert.deepEqual(fs.readdirSync(join(target, 'd')), ['old']);
    assert.equal(fs.statSync(join(target, 'd')).mode & 0o7777, 0o750);
    assert.equal(fs.readFileSync(join(target, 'f/inner'), 'utf8'), 'inner');
    assert.equal(fs.readFileSync(join(target, 'gone'), 'utf8'), 'now a file');
  });

  it('refuses an entry below a symlink that points outside, writing nothing there', async () => {
    const outside = join(work, 'outside');
    fs.mkdirSync(outside);
    await refused(
      [{ header: { name: 'evil', type: 'symlink', linkname: outside } }, { header: { name: 'evil/x' }, content: 'pwned' }],
      /entry "evil\/x" would be written through the symlink "evil"/,
    );
    assert.deepEqual(fs.readdirSync(outside), []);
  });

  it('refuses a hardlink to a missing target, a directory, or through a symlink', async () => {
    await refused([{ header: { name: 'h', type: 'link', linkname: 'missing' } }], /hardlink "h" points to "missing", which this layer does not contain/);
    await refused(
      [{ header: { name: 'd/', type: 'directory' } }, { header: { name: 'h', type: 'link', linkname: 'd' } }],
      /hardlink "h" points to the directory "d"/,
    );
    await refused(
      [{ header: { name: 'etc', type: 'symlink', linkname: '/etc' } }, { header: { name: 'h', type: 'link', linkname: 'etc/passwd' } }],
      /hardlink "h" points through the symlink "etc"/,
    );
  });

  it('stops with ResourceExhausted beyond maxEntries', async () => {
    const entries = Array.from({ length: 10 }, (_, i) => ({ header: { name: `f${i}` }, content: '' }));
    await assert.rejects(unpack(await makeTar(entries), 'none', { maxEntries: 5 }), (err: unknown) => {
      assert.ok(isKind(err, 'ResourceExhausted'), String(err));
      assert.match(err.message, /^layer sha256:[0-9a-f]+: has more than 5 entries/);
      return true;
    });
  });
});
