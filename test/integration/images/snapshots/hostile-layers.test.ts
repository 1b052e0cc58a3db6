/**
 * Well-formed PAX records unpacked as root (the files keep their owners): the
 * counterpart of the refusals in test/unit/images/snapshots/hostile-layers.test.ts.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { PaxXattrScanner } from '../../../../src/images/snapshots/pax-xattrs.js';
import { unpackLayer } from '../../../../src/images/snapshots/unpack.js';

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
});
