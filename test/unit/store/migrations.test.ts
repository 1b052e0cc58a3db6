import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { SchemaTooNewError, openDatabase, schemaVersion } from '../../../src/store/database.js';
import { MIGRATIONS } from '../../../src/store/migrations.js';
import { RuntimeSettingsRepository } from '../../../src/store/runtime-settings.js';
import { ContainerRepository } from '../../../src/containers/container-repository.js';
import { SandboxRepository } from '../../../src/sandbox/sandbox-repository.js';

function columns(db: ReturnType<typeof openDatabase>, table: string): string[] {
  return (db.prepare(`PRAGMA table_info(${table})`).all() as Array<{ name: string }>).map((c) => c.name);
}

describe('store: database and migrations', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'berth-store-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('numbers migrations 1..n in order', () => {
    MIGRATIONS.forEach((m, i) => assert.equal(m.version, i + 1, `migration "${m.name}"`));
  });

  it('opens in WAL mode with foreign keys and normal sync (acknowledgements are synced by WalSync)', () => {
    const db = openDatabase(join(dir, 'berth.db'));
    assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
    assert.equal(db.pragma('foreign_keys', { simple: true }), 1);
    assert.equal(db.pragma('synchronous', { simple: true }), 1);
    assert.equal(schemaVersion(db), MIGRATIONS.length);
    db.close();
  });

  it('migration 1 creates runtime_settings', () => {
    const db = openDatabase(join(dir, 'berth.db'), { migrations: MIGRATIONS.slice(0, 1) });
    assert.equal(schemaVersion(db), 1);
    assert.deepEqual(columns(db, 'runtime_settings'), ['key', 'value', 'updated_at']);
    db.close();
  });

  it('migration 2 creates the image tables with their references', () => {
    const db = openDatabase(join(dir, 'berth.db'), { migrations: MIGRATIONS.slice(0, 2) });
    assert.equal(schemaVersion(db), 2);
    assert.deepEqual(columns(db, 'blobs'), ['digest', 'size', 'media_type', 'created_at']);
    assert.deepEqual(columns(db, 'snapshots'), ['id', 'key', 'parent_id', 'kind', 'size_bytes', 'inodes', 'created_at']);
    assert.deepEqual(columns(db, 'images'), ['id', 'manifest_digest', 'config', 'size', 'pinned', 'created_at']);
    assert.deepEqual(columns(db, 'image_names'), ['name', 'kind', 'image_id']);
    assert.deepEqual(columns(db, 'image_blobs'), ['image_id', 'digest']);
    assert.deepEqual(columns(db, 'image_layers'), ['image_id', 'idx', 'blob_digest', 'diff_id', 'chain_id']);
    // Foreign keys hold: a name cannot point at a missing image, and names go with their image.
    assert.throws(() => db.prepare("INSERT INTO image_names VALUES ('x:1', 'tag', 'sha256:none')").run(), /FOREIGN KEY/);
    db.prepare("INSERT INTO images VALUES ('sha256:i', 'sha256:m', '{}', 1, 0, 0)").run();
    db.prepare("INSERT INTO image_names VALUES ('x:1', 'tag', 'sha256:i')").run();
    db.prepare("DELETE FROM images WHERE id = 'sha256:i'").run();
    assert.equal((db.prepare('SELECT count(*) AS n FROM image_names').get() as { n: number }).n, 0);
    assert.throws(() => db.prepare("INSERT INTO snapshots (kind, created_at) VALUES ('weird', 0)").run(), /CHECK/);
    db.close();
  });

  it('migration 3 creates sandboxes, unique per metadata, with a checked state', () => {
    const db = openDatabase(join(dir, 'berth.db'), { migrations: MIGRATIONS.slice(0, 3) });
    assert.equal(schemaVersion(db), 3);
    assert.deepEqual(columns(db, 'sandboxes'), [
      'id',
      'name',
      'namespace',
      'uid',
      'attempt',
      'state',
      'config',
      'runtime_handler',
      'ns_dir',
      'network',
      'ips',
      'acknowledged',
      'created_at',
    ]);
    const ins = db.prepare(
      "INSERT INTO sandboxes (id, name, namespace, uid, attempt, state, config, runtime_handler, created_at) VALUES (?, 'p', 'ns', 'u', 0, ?, '{}', 'runc', '0')",
    );
    ins.run('a', 'creating');
    assert.throws(() => ins.run('b', 'creating'), /UNIQUE/);
    assert.throws(
      () =>
        db
          .prepare(
            "INSERT INTO sandboxes (id, name, namespace, uid, attempt, state, config, runtime_handler, created_at) VALUES ('c', 'q', 'ns', 'u', 0, 'running', '{}', 'runc', '0')",
          )
          .run(),
      /CHECK/,
    );
    db.close();
  });

  it('migration 4 creates containers, which reference their pod', () => {
    const db = openDatabase(join(dir, 'berth.db'), { migrations: MIGRATIONS.slice(0, 4) });
    assert.equal(schemaVersion(db), 4);
    assert.deepEqual(columns(db, 'containers'), [
      'id',
      'sandbox_id',
      'name',
      'attempt',
      'image_id',
      'image_ref',
      'state',
      'config',
      'log_path',
      'pid',
      'shim_pid',
      'exit_code',
      'reason',
      'message',
      'created_at',
      'started_at',
      'finished_at',
    ]);
    const ins = db.prepare(
      "INSERT INTO containers (id, sandbox_id, name, attempt, image_id, image_ref, state, config, log_path, created_at) VALUES (?, 'pod', 'c', 0, 'img', 'img', 'creating', '{}', '/l', '0')",
    );
    assert.throws(() => ins.run('a'), /FOREIGN KEY/, 'a container needs its pod');
    db.prepare(
      "INSERT INTO sandboxes (id, name, namespace, uid, attempt, state, config, runtime_handler, created_at) VALUES ('pod', 'p', 'ns', 'u', 0, 'ready', '{}', 'runc', '0')",
    ).run();
    ins.run('a');
    assert.throws(() => ins.run('b'), /UNIQUE/, 'one container per name and attempt in a pod');
    assert.throws(() => db.prepare("DELETE FROM sandboxes WHERE id = 'pod'").run(), /FOREIGN KEY/, 'a pod cannot go before its containers');
    db.close();
  });

  it('migration 5 creates image_volumes, whose rows go with their container', () => {
    const db = openDatabase(join(dir, 'berth.db'), { migrations: MIGRATIONS.slice(0, 5) });
    assert.equal(schemaVersion(db), 5);
    assert.deepEqual(columns(db, 'image_volumes'), ['container_id', 'idx', 'image_id', 'chain_id']);
    const use = db.prepare("INSERT INTO image_volumes (container_id, idx, image_id, chain_id) VALUES (?, ?, 'sha256:img', 'sha256:top')");
    assert.throws(() => use.run('c', 0), /FOREIGN KEY/, 'a use needs its container');
    db.prepare(
      "INSERT INTO sandboxes (id, name, namespace, uid, attempt, state, config, runtime_handler, created_at) VALUES ('pod', 'p', 'ns', 'u', 0, 'ready', '{}', 'runc', '0')",
    ).run();
    db.prepare(
      "INSERT INTO containers (id, sandbox_id, name, attempt, image_id, image_ref, state, config, log_path, created_at) VALUES ('c', 'pod', 'c', 0, 'img', 'img', 'creating', '{}', '/l', '0')",
    ).run();
    use.run('c', 0);
    use.run('c', 1);
    assert.throws(() => use.run('c', 1), /UNIQUE|PRIMARY KEY/, 'one use per mount index');
    db.prepare("DELETE FROM containers WHERE id = 'c'").run();
    assert.equal((db.prepare('SELECT count(*) AS n FROM image_volumes').get() as { n: number }).n, 0, 'the uses go with the container');
    db.close();
  });

  it('migration 6 derives the typed facts of pods and containers from their stored requests', () => {
    const file = join(dir, 'berth.db');
    const v5 = openDatabase(file, { migrations: MIGRATIONS.slice(0, 5) });
    // Rows as berthd 5 wrote them: the requests as grpc-js decoded them (int64 as strings),
    // a pod's namespace modes filled in, nothing else decided.
    const podConfig = {
      metadata: { name: 'Web.App_1', namespace: 'default', uid: 'u1', attempt: 0 },
      hostname: '',
      log_directory: '/var/log/pods/default_web_u1',
      dns_config: { servers: ['10.96.0.10'], searches: ['default.svc.cluster.local'], options: ['ndots:5'] },
      port_mappings: [
        { protocol: 'TCP', container_port: 80, host_port: 8080, host_ip: '' },
        { protocol: 'UDP', container_port: 53, host_port: 0, host_ip: '' },
      ],
      labels: { app: 'web' },
      annotations: { 'kubernetes.io/config.source': 'api' },
      linux: {
        cgroup_parent: '/kubepods/besteffort/podu1',
        sysctls: { 'net.ipv4.ip_unprivileged_port_start': '0' },
        overhead: {
          cpu_period: '0',
          cpu_quota: '0',
          cpu_shares: '128',
          memory_limit_in_bytes: '0',
          oom_score_adj: '0',
          cpuset_cpus: '',
          cpuset_mems: '',
          hugepage_limits: [],
          unified: {},
          memory_swap_limit_in_bytes: '0',
        },
        resources: null,
        security_context: {
          namespace_options: {
            network: 'POD',
            pid: 'CONTAINER',
            ipc: 'POD',
            target_id: '',
            userns_options: {
              mode: 'POD',
              uids: [{ host_id: 100000, container_id: 0, length: 65536 }],
              gids: [{ host_id: 100000, container_id: 0, length: 65536 }],
            },
          },
        },
      },
    };
    const hostNetPod = {
      metadata: { name: 'h', namespace: 'kube-system', uid: 'u2', attempt: 1 },
      linux: { security_context: { namespace_options: { network: 'NODE', pid: 'NODE', ipc: 'NODE' } } },
    };
    const pod = v5.prepare(
      "INSERT INTO sandboxes (id, name, namespace, uid, attempt, state, config, runtime_handler, ns_dir, created_at) VALUES (?, ?, ?, ?, ?, 'ready', ?, 'runc', ?, '1')",
    );
    pod.run('p1', 'Web.App_1', 'default', 'u1', 0, JSON.stringify(podConfig), '/run/berth/ns/p1');
    pod.run('p2', 'h', 'kube-system', 'u2', 1, JSON.stringify(hostNetPod), null);
    const containerConfig = {
      metadata: { name: 'web', attempt: 0 },
      image: { image: 'sha256:' + 'a'.repeat(64), annotations: { x: 'y' }, user_specified_image: 'nginx:1.25', runtime_handler: '' },
      labels: { 'io.kubernetes.container.name': 'web' },
      annotations: { 'io.kubernetes.container.hash': '1' },
      tty: true,
      stdin: true,
      stdin_once: false,
      mounts: [
        {
          container_path: '/data',
          host_path: '/srv/data',
          readonly: true,
          selinux_relabel: false,
          propagation: 'PROPAGATION_HOST_TO_CONTAINER',
          uidMappings: [],
          gidMappings: [],
          recursive_read_only: false,
          image: null,
          image_sub_path: '',
        },
      ],
      linux: {
        resources: {
          cpu_period: '100000',
          cpu_quota: '50000',
          cpu_shares: '512',
          memory_limit_in_bytes: '268435456',
          oom_score_adj: '1000',
          cpuset_cpus: '0',
          cpuset_mems: '',
          hugepage_limits: [{ page_size: '2MB', limit: '0' }],
          unified: {},
          memory_swap_limit_in_bytes: '0',
        },
        security_context: { privileged: true, selinux_options: { user: 'u', role: 'r', type: 't', level: 's0' } },
      },
    };
    const ctr = v5.prepare(
      "INSERT INTO containers (id, sandbox_id, name, attempt, image_id, image_ref, state, config, log_path, created_at) VALUES (?, ?, ?, 0, 'sha256:i', 'nginx', 'running', ?, '/l', '1')",
    );
    ctr.run('c1', 'p1', 'web', JSON.stringify(containerConfig));
    ctr.run('c2', 'p2', 'bare', JSON.stringify({ metadata: { name: 'bare' }, image: { image: 'busybox' } }));
    v5.close();

    const db = openDatabase(file);
    assert.equal(schemaVersion(db), 6);
    const pods = new SandboxRepository(db);
    const p1 = pods.get('p1')!;
    assert.deepEqual(p1.facts, {
      v: 1,
      hostname: 'web-app-1',
      logDirectory: '/var/log/pods/default_web_u1',
      namespaces: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' },
      userns: { uids: [{ containerId: 0, hostId: 100000, size: 65536 }], gids: [{ containerId: 0, hostId: 100000, size: 65536 }] },
      cgroupParent: '/kubepods/besteffort/podu1',
      labels: { app: 'web' },
      annotations: { 'kubernetes.io/config.source': 'api' },
      portMappings: [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }],
      dns: { servers: ['10.96.0.10'], searches: ['default.svc.cluster.local'], options: ['ndots:5'] },
      sysctls: { 'net.ipv4.ip_unprivileged_port_start': '0' },
      overhead: {
        cpu_period: 0,
        cpu_quota: 0,
        cpu_shares: 128,
        memory_limit_in_bytes: 0,
        oom_score_adj: 0,
        cpuset_cpus: '',
        cpuset_mems: '',
        hugepage_limits: [],
        unified: {},
        memory_swap_limit_in_bytes: 0,
      },
      resources: null,
    });
    assert.deepEqual(p1.request, podConfig, 'the request is kept as it was, for verbose status');
    assert.equal(p1.nsDir, '/run/berth/ns/p1');
    const p2 = pods.get('p2')!;
    assert.equal(p2.facts.hostname, hostname(), 'a host-network pod without a hostname has the node’s');
    assert.deepEqual(p2.facts.namespaces, { network: 'NODE', pid: 'NODE', ipc: 'NODE' });
    assert.equal(p2.facts.userns, null);
    assert.equal(p2.facts.dns, null);
    assert.deepEqual([p2.facts.labels, p2.facts.portMappings, p2.facts.logDirectory, p2.facts.cgroupParent], [{}, [], '', '']);

    const containers = new ContainerRepository(db);
    const c1 = containers.get('c1')!;
    assert.deepEqual(c1.facts, {
      v: 1,
      labels: { 'io.kubernetes.container.name': 'web' },
      annotations: { 'io.kubernetes.container.hash': '1' },
      image: { annotations: { x: 'y' }, userSpecifiedImage: 'nginx:1.25', runtimeHandler: '' },
      tty: true,
      stdin: true,
      stdinOnce: false,
      resources: {
        cpu_period: 100000,
        cpu_quota: 50000,
        cpu_shares: 512,
        memory_limit_in_bytes: 268435456,
        oom_score_adj: 1000,
        cpuset_cpus: '0',
        cpuset_mems: '',
        hugepage_limits: [{ page_size: '2MB', limit: 0 }],
        unified: {},
        memory_swap_limit_in_bytes: 0,
      },
      mounts: containerConfig.mounts,
      privileged: true,
      selinuxOptions: { user: 'u', role: 'r', type: 't', level: 's0' },
      user: null,
      stopSignal: null,
    });
    assert.deepEqual(c1.request, containerConfig);
    const c2 = containers.get('c2')!;
    assert.deepEqual(
      [c2.facts.labels, c2.facts.tty, c2.facts.resources, c2.facts.mounts, c2.facts.privileged, c2.facts.selinuxOptions, c2.facts.image],
      [{}, false, null, [], false, null, { annotations: {}, userSpecifiedImage: '', runtimeHandler: '' }],
    );
    // New rows cannot skip their facts.
    assert.throws(
      () =>
        db
          .prepare(
            "INSERT INTO sandboxes (id, name, namespace, uid, attempt, state, config, runtime_handler, created_at, facts) VALUES ('x', 'x', 'x', 'x', 0, 'creating', '{}', 'runc', '1', NULL)",
          )
          .run(),
      /NOT NULL/,
    );
    db.close();
  });

  it('upgrades an old database in place, keeping its rows', () => {
    const file = join(dir, 'berth.db');
    const v1 = openDatabase(file, { migrations: MIGRATIONS.slice(0, 1) });
    new RuntimeSettingsRepository(v1).setPodCidr('10.1.0.0/24');
    v1.close();
    const db = openDatabase(file);
    assert.equal(schemaVersion(db), MIGRATIONS.length);
    assert.equal(new RuntimeSettingsRepository(db).podCidr(), '10.1.0.0/24');
    db.close();
    // Opening an up-to-date database again changes nothing.
    const again = openDatabase(file);
    assert.equal(schemaVersion(again), MIGRATIONS.length);
    again.close();
  });

  it('refuses a database written by a newer berth', () => {
    const file = join(dir, 'berth.db');
    const db = openDatabase(file);
    db.pragma(`user_version = ${MIGRATIONS.length + 5}`);
    db.close();
    assert.throws(
      () => openDatabase(file),
      (e: Error) => e instanceof SchemaTooNewError && /newer than this berthd knows/.test(e.message),
    );
  });

  it('rolls back a migration that fails, leaving the version unchanged', () => {
    const file = join(dir, 'berth.db');
    const broken = [
      ...MIGRATIONS,
      {
        version: MIGRATIONS.length + 1,
        name: 'broken',
        up: (d: ReturnType<typeof openDatabase>) => d.exec('CREATE TABLE half (x INTEGER); SELECT nope FROM nowhere;'),
      },
    ];
    assert.throws(() => openDatabase(file, { migrations: broken }), /no such table: nowhere/);
    const db = openDatabase(file);
    assert.equal(schemaVersion(db), MIGRATIONS.length);
    const half = db.prepare("SELECT count(*) AS n FROM sqlite_master WHERE name = 'half'").get() as { n: number };
    assert.equal(half.n, 0, 'the failed migration left no table behind');
    db.close();
  });

  it('RuntimeSettingsRepository stores, replaces and clears the pod CIDR', () => {
    const db = openDatabase(join(dir, 'berth.db'));
    const repo = new RuntimeSettingsRepository(db);
    assert.equal(repo.podCidr(), '');
    repo.setPodCidr('10.244.1.0/24');
    repo.setPodCidr('10.244.2.0/24,fd00::/64');
    assert.equal(repo.podCidr(), '10.244.2.0/24,fd00::/64');
    repo.setPodCidr('');
    assert.equal(repo.podCidr(), '');
    db.close();
  });
});
