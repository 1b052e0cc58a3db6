import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findNetwork, parseNetworkConfig } from '../../../../src/sandbox/cni/conf-dir.js';

describe('CNI conf dir lookup', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'berth-cni-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const bridge = { cniVersion: '1.0.0', name: 'berth', plugins: [{ type: 'bridge' }, { type: 'portmap' }] };

  it('reports a missing or empty dir as not found, with the reason', async () => {
    const missing = await findNetwork(join(dir, 'nope'));
    assert.equal(missing.found, false);
    assert.match(missing.found ? '' : missing.reason, /does not exist/);
    const empty = await findNetwork(dir);
    assert.equal(empty.found, false);
    assert.match(empty.found ? '' : empty.reason, new RegExp(`no network config found in ${dir}$`));
  });

  it('takes the first usable file in lexical order, skipping broken ones', async () => {
    writeFileSync(join(dir, '05-broken.conflist'), '{ not json');
    writeFileSync(join(dir, '10-net.conflist'), JSON.stringify(bridge));
    writeFileSync(join(dir, '20-other.conf'), JSON.stringify({ cniVersion: '0.4.0', name: 'other', type: 'ptp' }));
    writeFileSync(join(dir, '00-readme.txt'), 'ignored');
    const r = await findNetwork(dir);
    assert.ok(r.found);
    assert.equal(r.network.name, 'berth');
    assert.deepEqual(
      r.network.plugins.map((p) => p.type),
      ['bridge', 'portmap'],
    );
    assert.equal(r.skipped.length, 1);
    assert.match(r.skipped[0]!, /05-broken.conflist: not valid JSON/);
  });

  it('treats a single-plugin .conf as a list of one', () => {
    const n = parseNetworkConfig('/x/10.conf', JSON.stringify({ cniVersion: '0.4.0', name: 'single', type: 'bridge', bridge: 'cni0' }));
    assert.ok(typeof n !== 'string');
    assert.deepEqual(n.plugins, [{ cniVersion: '0.4.0', name: 'single', type: 'bridge', bridge: 'cni0' }]);
  });

  it('says why a config is unusable', () => {
    assert.equal(parseNetworkConfig('/x/a.conflist', '[]'), 'not a JSON object');
    assert.equal(parseNetworkConfig('/x/a.conflist', '{"name":"n","plugins":[]}'), 'a .conflist needs a non-empty "plugins" array');
    assert.equal(parseNetworkConfig('/x/a.conflist', '{"name":"n","plugins":[{"x":1}]}'), 'plugins[0] has no "type"');
    assert.equal(parseNetworkConfig('/x/a.conf', '{"name":"n"}'), 'missing "type"');
    assert.equal(parseNetworkConfig('/x/a.conf', '{"type":"bridge"}'), 'missing "name"');
  });
});
