/**
 * The sandbox repository over a real database: a state change neither reads the request
 * nor the CNI result of the pod (both read from the row only when wanted), and each field
 * a change names is written, the others kept.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { podFacts } from '../../../src/sandbox/pod-facts.js';
import { SandboxRepository } from '../../../src/sandbox/sandbox-repository.js';
import { openDatabase, type Db } from '../../../src/store/database.js';

describe('sandbox: SandboxRepository', () => {
  let dir: string;
  let db: Db;
  let repo: SandboxRepository;
  /** The documents read apart from the row (`config`, `network`), by column. */
  let lazyReads: string[];
  const meta = { name: 'p', namespace: 'ns', uid: 'u', attempt: 0 };
  const facts = podFacts({
    hostname: 'p',
    dns: undefined,
    logDirectory: '/var/log/pods/p',
    namespaces: { network: 'POD', pid: 'POD', ipc: 'POD' },
    cgroupParent: '/kubepods',
    labels: {},
    annotations: {},
    portMappings: [],
    sysctls: {},
  });

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-sb-repo-'));
    db = openDatabase(join(dir, 'berth.db'));
    lazyReads = [];
    // Counts the reads of the statements that fetch the lazy documents.
    const prepare = db.prepare.bind(db) as (sql: string) => ReturnType<Db['prepare']>;
    (db as { prepare: (sql: string) => unknown }).prepare = (sql: string) => {
      const stmt = prepare(sql);
      const lazy = /^SELECT (config|network) FROM sandboxes/.exec(sql);
      if (lazy) {
        const get = stmt.get.bind(stmt) as (...args: unknown[]) => unknown;
        stmt.get = ((...args: unknown[]) => (lazyReads.push(lazy[1]!), get(...args))) as typeof stmt.get;
      }
      return stmt;
    };
    repo = new SandboxRepository(db);
    repo.insert('s1', meta, facts, { metadata: meta, hostname: 'p' }, 'runc', '1');
  });
  afterEach(async () => {
    db.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('changes state, namespaces dir and IPs without reading the request or the CNI result', () => {
    repo.update('s1', () => ({ network: { ips: [{ address: '10.0.0.2/24' }] } }));
    repo.update('s1', () => ({ nsDir: '/run/ns/s1', ips: ['10.0.0.2'] }));
    const ready = repo.update('s1', (cur) => ({ state: 'ready', facts: { ...cur.facts, hostname: 'q' } }));
    const acked = repo.update('s1', () => ({ acknowledged: true }));
    assert.deepEqual(lazyReads, [], 'no update read a lazy document');
    assert.equal(ready.facts.hostname, 'q');
    assert.deepEqual([acked.state, acked.nsDir, acked.ips, acked.acknowledged], ['ready', '/run/ns/s1', ['10.0.0.2'], true]);
    assert.deepEqual(acked.network, { ips: [{ address: '10.0.0.2/24' }] }, 'the CNI result kept in the row, read when wanted');
    assert.deepEqual(acked.request, { metadata: meta, hostname: 'p' });
    assert.deepEqual(lazyReads.sort(), ['config', 'network']);
    const again = repo.get('s1')!;
    assert.equal(again.facts.hostname, 'q', 'the facts written');
    assert.deepEqual(again.network, { ips: [{ address: '10.0.0.2/24' }] });
    const cleared = repo.update('s1', () => ({ network: null, nsDir: null, ips: [] }));
    assert.equal(cleared.network, null);
    assert.equal(repo.get('s1')!.network, null, 'a null CNI result is written too');
    assert.equal(repo.get('s1')!.facts.hostname, 'q', 'facts not in the change are kept');
  });
});
