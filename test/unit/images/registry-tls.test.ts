import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { rootCertificates } from 'node:tls';
import { isKind } from '../../../src/common/errors.js';
import { defaultRegistryConfig } from '../../../src/config/schema.js';
import { RegistryTls, SYSTEM_CA_BUNDLE } from '../../../src/images/registry/tls.js';

describe('images: registry TLS settings', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'berth-tls-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('trusts Node’s bundled roots and the system CA store', function () {
    if (!existsSync(SYSTEM_CA_BUNDLE)) this.skip();
    const s = new RegistryTls({}, dir).for('registry.example');
    assert.ok(
      rootCertificates.every((c) => s.ca.includes(c)),
      'bundled roots',
    );
    assert.ok(s.ca.includes(readFileSync(SYSTEM_CA_BUNDLE, 'utf8')), SYSTEM_CA_BUNDLE);
    assert.equal(s.insecureSkipVerify, false);
    assert.equal(s.cert, undefined);
  });

  it('keeps one host’s settings to that host', () => {
    const tls = new RegistryTls({ 'a.example': { ...defaultRegistryConfig(), insecure_skip_verify: true } }, dir);
    assert.equal(tls.for('a.example').insecureSkipVerify, true);
    assert.equal(tls.for('b.example').insecureSkipVerify, false);
    assert.notEqual(tls.for('a.example').id, tls.for('b.example').id);
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
