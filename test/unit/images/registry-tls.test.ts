import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { rootCertificates } from 'node:tls';
import { isKind } from '../../../src/common/errors.js';
import { defaultRegistryConfig } from '../../../src/config/schema.js';
import { MAX_TLS_HOSTS, RegistryTls, SYSTEM_CA_BUNDLE, trustedRoots } from '../../../src/images/registry/tls.js';

describe('images: registry TLS settings', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'berth-tls-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('trusts Node’s bundled roots and the system CA store', function () {
    if (!existsSync(SYSTEM_CA_BUNDLE)) this.skip();
    const s = new RegistryTls({}, dir).for('registry.example');
    // The settings carry only the configured roots (none here); the context trusts all.
    assert.deepEqual(s.ca, []);
    const trusted = trustedRoots(s.ca);
    assert.ok(
      rootCertificates.every((c) => trusted.includes(c)),
      'bundled roots',
    );
    assert.ok(trusted.includes(readFileSync(SYSTEM_CA_BUNDLE, 'utf8')), SYSTEM_CA_BUNDLE);
    assert.equal(s.insecureSkipVerify, false);
    assert.equal(s.cert, undefined);
  });

  it('keeps one host’s settings to that host', () => {
    const tls = new RegistryTls({ 'a.example': { ...defaultRegistryConfig(), insecure_skip_verify: true } }, dir);
    assert.equal(tls.for('a.example').insecureSkipVerify, true);
    assert.equal(tls.for('b.example').insecureSkipVerify, false);
    assert.notEqual(tls.for('a.example').id, tls.for('b.example').id);
  });

  it(`keeps the settings of at most ${MAX_TLS_HOSTS} hosts (by default), the least recently used dropped and built again when asked`, () => {
    assert.equal(new RegistryTls({}, dir).size, 0);
    const tls = new RegistryTls({ 'a.example': { ...defaultRegistryConfig(), insecure_skip_verify: true } }, dir, 2);
    const a = tls.for('a.example');
    assert.equal(tls.for('a.example'), a, 'kept');
    tls.for('b.example');
    tls.for('a.example'); // a is now the most recent: c pushes b out
    tls.for('c.example');
    assert.equal(tls.size, 2);
    assert.equal(tls.for('a.example'), a, 'the most recently used stays');
    const b = tls.for('b.example');
    tls.for('c.example');
    tls.for('d.example'); // pushes a out
    const a2 = tls.for('a.example');
    assert.notEqual(a2, a, 'a was dropped and built again');
    assert.equal(a2.id, a.id, 'to the same settings');
    assert.equal(a2.insecureSkipVerify, true);
    assert.ok(a2.secureContext);
    assert.equal(tls.size, 2);
    assert.notEqual(tls.for('b.example'), b);
  });

  it('refuses unreadable files, a lone client certificate in certs.d, and a half-configured pair, naming them', () => {
    const missing = new RegistryTls({ 'a.example': { ...defaultRegistryConfig(), ca_file: join(dir, 'nope.pem') } }, dir);
    assert.throws(
      () => missing.for('a.example'),
      (e: unknown) => isKind(e, 'FailedPrecondition') && /registries\."a\.example"\.ca_file: cannot read .*nope\.pem \(ENOENT\)/.test(e.message),
    );
    mkdirSync(join(dir, 'b.example'));
    writeFileSync(join(dir, 'b.example', 'client.cert'), 'x');
    assert.throws(() => new RegistryTls({}, dir).for('b.example'), /client\.cert has no matching \.key file/);
    const half = new RegistryTls({ 'c.example': { ...defaultRegistryConfig(), key_file: join(dir, 'k') } }, dir);
    assert.throws(() => half.for('c.example'), /cert_file and key_file go together/);
  });

  it('does not look outside certs.d for odd host names', () => {
    writeFileSync(join(dir, 'ca.crt'), 'not a certificate');
    assert.doesNotThrow(() => new RegistryTls({}, join(dir, 'certs.d')).for('..'));
  });
});
