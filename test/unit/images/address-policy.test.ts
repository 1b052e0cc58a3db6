/**
 * The address rule of registry connections (address-policy.ts): the classifier over IPv4,
 * IPv6 and the IPv6 forms that carry IPv4, the same-class rule, and the `lookup` the
 * agents connect through (a name that resolves to a forbidden address is refused before
 * any connection; resolvers injected, so no name leaves the machine).
 */
import assert from 'node:assert/strict';
import type { LookupAddress } from 'node:dns';
import { isKind } from '../../../src/common/errors.js';
import { addressClass, AddressPolicy } from '../../../src/images/registry/address-policy.js';

describe('images: registry address policy', () => {
  it('classifies IPv4 addresses', () => {
    const cases: Array<[string, string]> = [
      ['127.0.0.1', 'loopback'],
      ['127.255.3.4', 'loopback'],
      ['169.254.169.254', 'link-local'],
      ['169.254.0.1', 'link-local'],
      // Alibaba Cloud's metadata service, classed with the link-local ones; the rest of 100.64/10 is not.
      ['100.100.100.200', 'link-local'],
      ['100.100.100.201', 'other'],
      ['100.64.0.1', 'other'],
      ['0.0.0.0', 'unspecified'],
      ['0.1.2.3', 'unspecified'],
      ['10.0.0.5', 'other'],
      ['172.16.3.4', 'other'],
      ['192.168.1.1', 'other'],
      ['169.253.255.255', 'other'],
      ['169.255.0.0', 'other'],
      ['128.0.0.1', 'other'],
      ['8.8.8.8', 'other'],
    ];
    for (const [ip, cls] of cases) assert.equal(addressClass(ip), cls, ip);
  });

  it('classifies IPv6 addresses, with brackets and zones, and the forms that carry IPv4', () => {
    const cases: Array<[string, string]> = [
      ['::1', 'loopback'],
      ['[::1]', 'loopback'],
      ['0:0:0:0:0:0:0:1', 'loopback'],
      ['::', 'unspecified'],
      ['[::]', 'unspecified'],
      ['fe80::1', 'link-local'],
      ['FE80::1%eth0', 'link-local'],
      ['[fe80::1]', 'link-local'],
      ['febf:ffff::1', 'link-local'],
      ['fec0::1', 'other'],
      ['fd00:ec2::254', 'link-local'],
      ['fd00:ec2::255', 'other'],
      ['fd12:3456::1', 'other'],
      ['2001:db8::1', 'other'],
      // IPv4-mapped, dotted and hex (the URL parser writes [::ffff:127.0.0.1] as [::ffff:7f00:1]).
      ['::ffff:127.0.0.1', 'loopback'],
      ['::ffff:7f00:1', 'loopback'],
      ['[::ffff:a9fe:a9fe]', 'link-local'],
      ['::ffff:169.254.169.254', 'link-local'],
      ['::ffff:100.100.100.200', 'link-local'],
      ['::ffff:0.0.0.0', 'unspecified'],
      ['0:0:0:0:0:ffff:10.0.0.1', 'other'],
      // IPv4-compatible (deprecated) and NAT64.
      ['::127.0.0.1', 'loopback'],
      ['::a9fe:a9fe', 'link-local'],
      ['64:ff9b::169.254.169.254', 'link-local'],
      ['64:ff9b::7f00:1', 'loopback'],
      ['64:ff9b::808:808', 'other'],
    ];
    for (const [ip, cls] of cases) assert.equal(addressClass(ip), cls, ip);
    for (const notIp of ['localhost', 'registry.example', '1.2.3', '::ffff:1.2.3.256', 'fe80::1::2', '']) assert.equal(addressClass(notIp), undefined, notIp);
  });

  /** A resolver of a fixed table: what a name resolves to, as the system's would answer. */
  const table =
    (t: Record<string, string[]>) =>
    async (name: string): Promise<string[]> => {
      const a = t[name];
      if (!a) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${name}`), { code: 'ENOTFOUND' });
      return a;
    };

  const refusal = (host: string, cls: string, registry: string) => (e: unknown) => {
    assert.ok(isKind(e, 'PermissionDenied'), String(e));
    assert.match(
      (e as Error).message,
      new RegExp(
        `^refusing to connect to ${host.replace(/[.()[\]]/g, '\\$&')}, a ${cls} address, for registry ${registry.replace(/\./g, '\\.')}, which is not on one`,
      ),
    );
    return true;
  };

  it('a registry on an ordinary address: loopback, link-local and unspecified targets are refused, private and public ones allowed', async () => {
    const p = new AddressPolicy('registry.example:5000', table({ 'registry.example': ['10.0.0.5'] }));
    await p.check('10.1.2.3', ['10.1.2.3']);
    await p.check('storage.example', ['192.168.7.7', '2001:db8::7']);
    await assert.rejects(p.check('169.254.169.254', ['169.254.169.254']), refusal('169.254.169.254', 'link-local', 'registry.example:5000'));
    await assert.rejects(p.check('storage.example', ['8.8.8.8', '127.0.0.1']), refusal('storage.example (127.0.0.1)', 'loopback', 'registry.example:5000'));
    await assert.rejects(p.check('[::ffff:7f00:1]', ['::ffff:7f00:1']), refusal('::ffff:7f00:1', 'loopback', 'registry.example:5000'));
    await assert.rejects(p.check('0.0.0.0', ['0.0.0.0']), refusal('0.0.0.0', 'unspecified', 'registry.example:5000'));
    await assert.rejects(p.check('[fd00:ec2::254]', ['fd00:ec2::254']), refusal('fd00:ec2::254', 'link-local', 'registry.example:5000'));
    await assert.rejects(p.check('100.100.100.200', ['100.100.100.200']), refusal('100.100.100.200', 'link-local', 'registry.example:5000'));
    await assert.rejects(p.check('storage.example', ['100.100.100.200']), refusal('storage.example (100.100.100.200)', 'link-local', 'registry.example:5000'));
    // A registry name that does not resolve is of no class: nothing special is allowed.
    const gone = new AddressPolicy('gone.example', table({}));
    await assert.rejects(gone.check('localhost', ['127.0.0.1']), refusal('localhost (127.0.0.1)', 'loopback', 'gone.example'));
  });

  it('a registry of a class allows targets of that same class only', async () => {
    const loop = new AddressPolicy('127.0.0.1:5000', table({}));
    await loop.check('localhost', ['127.0.0.1', '::1']);
    await loop.check('[::ffff:127.0.0.2]', ['::ffff:7f00:2']);
    await assert.rejects(loop.check('[fe80::1]', ['fe80::1']), refusal('fe80::1', 'link-local', '127.0.0.1:5000'));
    await assert.rejects(loop.check('0.0.0.0', ['0.0.0.0']), refusal('0.0.0.0', 'unspecified', '127.0.0.1:5000'));
    const v6 = new AddressPolicy('[::1]:5000', table({}));
    await v6.check('127.0.0.1', ['127.0.0.1']);
    const ll = new AddressPolicy('169.254.10.10', table({}));
    await ll.check('169.254.169.254', ['169.254.169.254']);
    await assert.rejects(ll.check('127.0.0.1', ['127.0.0.1']), refusal('127.0.0.1', 'loopback', '169.254.10.10'));
    // A registry named by a name has the classes of its addresses: `localhost`, through the system resolver.
    const named = new AddressPolicy('localhost:5000');
    await named.check('127.0.0.1', ['127.0.0.1']);
    await assert.rejects(named.check('169.254.169.254', ['169.254.169.254']), refusal('169.254.169.254', 'link-local', 'localhost:5000'));
  });

  it('checks IP literals of URLs (which Node never looks up), not names', async () => {
    const p = new AddressPolicy('registry.example', table({ 'registry.example': ['203.0.113.9'] }));
    await assert.rejects(p.checkLiteral(new URL('http://[fe80::1]:8080/x')), refusal('fe80::1', 'link-local', 'registry.example'));
    await assert.rejects(p.checkLiteral(new URL('http://169.254.169.254/latest')), refusal('169.254.169.254', 'link-local', 'registry.example'));
    // The URL parser's other IPv4 spellings come out dotted: decimal, hex, short.
    await assert.rejects(p.checkLiteral(new URL('http://2852039166/')), refusal('169.254.169.254', 'link-local', 'registry.example'));
    await assert.rejects(p.checkLiteral(new URL('http://0x7f.1/')), refusal('127.0.0.1', 'loopback', 'registry.example'));
    await p.checkLiteral(new URL('https://10.0.0.9/'));
    await p.checkLiteral(new URL('https://localhost/'));
  });

  describe('lookup: the resolved addresses are checked at connect (DNS rebinding cannot get past)', () => {
    type Cb = (err: Error | null, address?: unknown, family?: number) => void;
    /** A dns.lookup stand-in whose answer changes on every call, as a rebinding name's would. */
    function rebinding(answers: string[][]) {
      let i = 0;
      return ((_host: string, _opts: unknown, cb: (err: Error | null, a: LookupAddress[]) => void) => {
        const a = answers[Math.min(i++, answers.length - 1)]!;
        setImmediate(() =>
          cb(
            null,
            a.map((address) => ({ address, family: address.includes(':') ? 6 : 4 })),
          ),
        );
      }) as never;
    }
    function call(lookup: ReturnType<AddressPolicy['lookup']>, all: boolean): Promise<{ err: Error | null; address?: unknown; family?: number }> {
      return new Promise((resolve) =>
        (lookup as unknown as (h: string, o: object, cb: Cb) => void)('storage.example', { all }, (err, address, family) => resolve({ err, address, family })),
      );
    }

    it('passes allowed addresses on in both callback forms, and refuses the next answer when it turns link-local', async () => {
      const p = new AddressPolicy('registry.example', table({ 'registry.example': ['198.51.100.1'] }));
      const lookup = p.lookup(rebinding([['10.0.0.7'], ['10.0.0.7', '2001:db8::7'], ['169.254.169.254']]));
      assert.deepEqual(await call(lookup, false), { err: null, address: '10.0.0.7', family: 4 });
      assert.deepEqual(await call(lookup, true), {
        err: null,
        address: [
          { address: '10.0.0.7', family: 4 },
          { address: '2001:db8::7', family: 6 },
        ],
        family: undefined,
      });
      const r = await call(lookup, true);
      assert.ok(r.err && refusal('storage.example (169.254.169.254)', 'link-local', 'registry.example')(r.err));
    });

    it('hands on the resolver’s own error', async () => {
      const p = new AddressPolicy('registry.example', table({}));
      const failing = ((_h: string, _o: unknown, cb: (err: Error) => void) =>
        setImmediate(() => cb(Object.assign(new Error('getaddrinfo ENOTFOUND x'), { code: 'ENOTFOUND' })))) as never;
      const r = await call(p.lookup(failing), false);
      assert.match(String(r.err), /ENOTFOUND/);
    });
  });
});
