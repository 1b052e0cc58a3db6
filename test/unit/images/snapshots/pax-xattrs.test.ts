import assert from 'node:assert/strict';
import tar from 'tar-stream';
import { PaxXattrScanner } from '../../../../src/images/snapshots/pax-xattrs.js';

async function packed(entries: Array<{ header: Partial<tar.Header> & { name: string; pax?: Record<string, string> }; content?: string }>): Promise<Buffer> {
  const pack = tar.pack();
  for (const e of entries) pack.entry(e.header, e.content ?? '');
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

/** Entry number → the raw xattrs tar-stream's own walk pairs with it, checked against the scanner. */
async function compare(buf: Buffer, chunk: number): Promise<Map<number, Map<string, Buffer>>> {
  const scanner = new PaxXattrScanner();
  for (let i = 0; i < buf.length; i += chunk) scanner.push(buf.subarray(i, i + chunk));
  const extract = tar.extract();
  extract.end(buf);
  const out = new Map<number, Map<string, Buffer>>();
  let n = 0;
  for await (const entry of extract) {
    n++;
    const raw = scanner.takeEntry(n, entry.header).xattrs;
    const pax = (entry.header.pax ?? {}) as Record<string, string>;
    const keys = Object.keys(pax).filter((k) => k.startsWith('SCHILY.xattr.'));
    assert.deepEqual([...(raw?.keys() ?? [])].sort(), keys.sort(), `entry ${n} ${entry.header.name}`);
    for (const k of keys) assert.equal(raw!.get(k)!.toString('utf8'), pax[k]);
    if (raw) out.set(n, raw);
    entry.resume();
  }
  return out;
}

describe('PaxXattrScanner: raw PAX xattr values beside tar-stream', () => {
  it('pairs each entry with its own xattrs across data, long names, links and any chunking', async () => {
    const long = 'd/' + 'x'.repeat(180);
    const buf = await packed([
      { header: { name: 'a', size: 700 }, content: 'a'.repeat(700) },
      { header: { name: 'd', type: 'directory' } },
      { header: { name: long, pax: { 'SCHILY.xattr.user.one': '1' } }, content: 'long\n' },
      { header: { name: 'h', type: 'link', linkname: 'a' } },
      { header: { name: 's', type: 'symlink', linkname: long } },
      { header: { name: 'b', pax: { 'SCHILY.xattr.user.two': 'é2', comment: 'ignored' } }, content: 'b'.repeat(1024) },
    ]);
    for (const chunk of [1, 7, 512, 513, buf.length]) {
      const got = await compare(buf, chunk);
      assert.deepEqual([...got.keys()], [3, 6], `chunk ${chunk}`);
      assert.equal(got.get(6)!.get('SCHILY.xattr.user.two')!.toString('utf8'), 'é2');
    }
  });

  it('keeps binary values as bytes, which tar-stream decodes lossily', async () => {
    const buf = await packed([{ header: { name: 'bin/ping', pax: { 'SCHILY.xattr.security.capability': 'C'.repeat(20) } }, content: 'x' }]);
    const value = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0xff, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]);
    value.copy(buf, buf.indexOf('security.capability=') + 'security.capability='.length);
    const scanner = new PaxXattrScanner();
    scanner.push(buf);
    const header = { name: 'bin/ping', type: 'file', size: 1 };
    assert.deepEqual(scanner.takeEntry(1, header).xattrs?.get('SCHILY.xattr.security.capability'), value);
    assert.throws(() => scanner.takeEntry(1, header), /reads entry 1 as "bin\/ping" \(file, 1 bytes\), berth's header scanner as no such entry/, 'taken once');
  });

  it('refuses a long header beyond 4 MiB, as tar-stream does', () => {
    const header = Buffer.alloc(512);
    header.write('PaxHeader', 0);
    header.write('77777777777', 124);
    header[156] = 'x'.charCodeAt(0);
    header.write('ustar\0', 257);
    assert.throws(() => new PaxXattrScanner().push(header), /exceeds the maximum size/);
  });
});
