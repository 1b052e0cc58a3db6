/**
 * Well-formed PAX records unpacked as root (the files keep their owners): the
 * counterpart of the refusals in test/unit/images/snapshots/hostile-layers.test.ts;
 * and the xattrs of many files applied in batches bounded by bytes.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { PaxXattrScanner } from '../../../../src/images/snapshots/pax-xattrs.js';
import { unpackLayer } from '../../../../src/images/snapshots/unpack.js';
import { XATTR_BATCH_BYTES, XattrBatch } from '../../../../src/images/snapshots/xattr-batch.js';
import { makeTar } from '../../../helpers/tar-layers.js';

const LAYER = `sha256:${'cd'.repeat(32)}`;
const BLOCK = 512;

/** A ustar header block with a correct checksum. */
export function ustarHeader(name: string, typeflag: string, size: number, extra?: (b: Buffer) => void): Buffer {
  const b = Buffer.alloc(BLOCK);
  b.write(name, 0, 100, 'utf8');
  b.write('0000644\0', 100, 'latin1');
  b.write('0000000\0', 108, 'latin1');
  b.write('0000000\0', 116, 'latin1');
  b.write(size.toString(8).padStart(11, '0') + '\0', 124, 'latin1');
  b.write('14000000000\0', 136, 'latin1');
  b[156] = typeflag.charCodeAt(0);
  b.write('ustar\0', 257, 'latin1');
  b.write('00', 263, 'latin1');
  extra?.(b);
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += b[i] as number;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return b;
}

/** Data padded to whole blocks. */
export function padded(data: Buffer): Buffer {
  return Buffer.concat([data, Buffer.alloc((BLOCK - (data.length % BLOCK)) % BLOCK)]);
}

/** The value of xattr `name` of `path`, as bytes. */
function xattrOf(path: string, name: string): Buffer {
  const out = execFileSync('getfattr', ['-h', '--only-values', '-n', name, '--absolute-names', path]);
  return out;
}

/** A tar stream of a PAX header with `records` (raw bytes) before a small regular file. */
function withPax(records: string, content = Buffer.from('hello\n')): Buffer {
  const body = Buffer.from(records, 'utf8');
  return Buffer.concat([
    ustarHeader('PaxHeaders/f', 'x', body.length),
    padded(body),
    ustarHeader('f', '0', content.length),
    padded(content),
    Buffer.alloc(2 * BLOCK),
  ]);
}

describe('images: hostile layers', () => {
  let work: string;
  beforeEach(() => (work = fs.mkdtempSync(join(tmpdir(), 'berth-hostile-'))));
  afterEach(() => fs.rmSync(work, { recursive: true, force: true }));

  const unpack = (raw: Buffer) => unpackLayer(Readable.from([raw]), 'none', work, { layer: LAYER, maxBytes: 1 << 30 });

  describe('strict PAX records', () => {
    it('accepts well-formed records, NUL padding after them included', async () => {
      const ok = withPax('29 SCHILY.xattr.user.k=value\n');
      await unpack(ok);
      assert.equal(fs.readFileSync(join(work, 'f'), 'utf8'), 'hello\n');
      new PaxXattrScanner().push(withPax('29 SCHILY.xattr.user.k=value\n\0\0\0'));
    });
  });

  describe('xattr batches', function () {
    this.timeout(60_000);
    const value = (i: number): string => `${i}:`.padEnd(3000, 'x');

    it('are applied once 1 MiB of paths, names and values is pending, long before 1024 paths', async () => {
      const batch = new XattrBatch((rel) => join(work, rel), LAYER);
      let queued = 0;
      for (; !batch.full; queued++) {
        fs.writeFileSync(join(work, `f${queued}`), '');
        batch.queue(`f${queued}`, [['user.blob', Buffer.from(value(queued))]]);
      }
      // About 3 KB a path: 1 MiB is reached after some 350 paths.
      assert.ok(queued > 300 && queued < 400, `full after ${queued} paths (of ${XATTR_BATCH_BYTES} bytes)`);
      // Queuing a path again replaces its bytes rather than adding to them.
      await batch.flush();
      assert.equal(batch.full, false);
      for (let i = 0; i < 10; i++) batch.queue('f0', [['user.blob', Buffer.from(value(i))]]);
      assert.equal(batch.full, false);
      await batch.flush();
      assert.equal(xattrOf(join(work, 'f0'), 'user.blob').toString(), value(9));
      assert.equal(xattrOf(join(work, `f${queued - 1}`), 'user.blob').toString(), value(queued - 1));
    });

    it('of a layer of 600 files with a 3000-byte xattr each are all applied', async () => {
      const raw = await makeTar(
        Array.from({ length: 600 }, (_, i) => ({ header: { name: `d/f${i}`, pax: { 'SCHILY.xattr.user.blob': value(i) } }, content: `${i}` })),
      );
      await unpack(raw);
      for (const i of [0, 1, 349, 350, 599]) assert.equal(xattrOf(join(work, `d/f${i}`), 'user.blob').toString(), value(i), `d/f${i}`);
    });
  });
});
