/**
 * The one preamble of container and pod operations: ContainerService.requireContainer and
 * SandboxService.requireSandbox over real repositories (a database in a temp dir), and
 * the refusals each operation gives, word for word as the CRI callers see them.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireState } from '../../../src/common/require-record.js';
import { defaultConfig } from '../../../src/config/schema.js';
import { ContainerRepository, type ContainerFacts } from '../../../src/containers/container-repository.js';
import { ContainerService } from '../../../src/containers/container-service.js';
import type { ImageService } from '../../../src/images/image-service.js';
import { OciRuntimes } from '../../../src/oci/oci-runtime.js';
import { SandboxRepository, type PodFacts } from '../../../src/sandbox/sandbox-repository.js';
import { SandboxService } from '../../../src/sandbox/sandbox-service.js';
import type { Shim } from '../../../src/shim/shim.js';
import { openDatabase, type Db } from '../../../src/store/database.js';
import { containerFactsV1, podFactsV1 } from '../../../src/store/typed-records-v6.js';

const POD = 'a'.repeat(64);
const C1 = 'abc1'.padEnd(64, '0');
const C2 = 'abc2'.padEnd(64, '0');

describe('requireContainer / requireState', () => {
  let dir: string;
  let db: Db;
  let repo: ContainerRepository;
  let svc: ContainerService;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-require-'));
    db = openDatabase(join(dir, 'berth.db'));
    new SandboxRepository(db).insert(POD, { name: 'p', namespace: 'ns', uid: 'u', attempt: 0 }, podFactsV1({}, 'p') as unknown as PodFacts, {}, 'runc', '1');
    repo = new ContainerRepository(db);
    for (const id of [C1, C2]) {
      repo.insert({
        id,
        sandboxId: POD,
        name: id.slice(0, 4),
        attempt: 0,
        imageId: 'img',
        imageRef: 'busybox',
        facts: containerFactsV1({}) as unknown as ContainerFacts,
        request: {},
        logPath: '/l',
        createdAt: '1',
      });
    }
    // The lookup needs none of these seams: they stay empty.
    svc = new ContainerService({
      config: { ...defaultConfig(), root: dir, state: dir },
      repo,
      sandboxes: {} as never,
      images: {} as ImageService,
      runtimes: new OciRuntimes([], 'runc'),
      shim: {} as Shim,
      log: { child: () => undefined } as never,
      host: { appArmorEnabled: false, minOomScoreAdj: 0, selinuxEnabled: false },
    });
  });

  afterEach(async () => {
    svc.close();
    db.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('finds by id or unique prefix, in any state when none is asked for', () => {
    repo.update(C1, () => ({ state: 'created' }));
    assert.equal(svc.requireContainer(C1).id, C1);
    assert.equal(svc.requireContainer('abc1').id, C1);
  });

  it('treats absent, ambiguous and still-creating containers as not found', () => {
    assert.throws(() => svc.requireContainer(C1), { kind: 'NotFound', message: `container "${C1}" not found` });
    repo.update(C1, () => ({ state: 'created' }));
    repo.update(C2, () => ({ state: 'created' }));
    assert.throws(() => svc.requireContainer('abc'), { kind: 'NotFound', message: 'container "abc" not found' });
    assert.throws(() => svc.requireContainer('nope'), { kind: 'NotFound', message: 'container "nope" not found' });
  });

  it("refuses a container in another state, naming it, with each operation's words", () => {
    repo.update(C1, () => ({ state: 'created' }));
    assert.throws(() => svc.requireContainer(C1, { states: ['running'] }), {
      kind: 'FailedPrecondition',
      message: `container ${C1} is created, not running`,
    });
    assert.throws(() => svc.requireContainer('abc1', { states: ['running'], refusal: ', not running: there is no log to reopen' }), {
      kind: 'FailedPrecondition',
      message: `container ${C1} is created, not running: there is no log to reopen`,
    });
    repo.update(C1, () => ({ state: 'exited' }));
    assert.throws(() => svc.requireContainer(C1, { states: ['running', 'created'] }), { message: `container ${C1} is exited, not running or created` });
    assert.equal(svc.requireContainer(C1, { states: ['exited'] }).state, 'exited');
  });

  it('reports hidden states as absent', () => {
    repo.update(C1, () => ({ state: 'removing' }));
    assert.throws(() => svc.requireContainer(C1, { hidden: ['removing'] }), { kind: 'NotFound' });
    assert.equal(svc.requireContainer(C1).state, 'removing');
  });

  it('words pods the same way (requireSandbox)', async () => {
    const sandboxRepo = new SandboxRepository(db);
    const pods = new SandboxService({
      config: { ...defaultConfig(), root: dir, state: dir },
      repo: sandboxRepo,
      runtimes: new OciRuntimes([], 'runc'),
      shim: {} as Shim,
      containers: { stopAll: async () => {}, removeAll: async () => {} },
      log: { child: () => undefined } as never,
    });
    assert.throws(() => pods.requireSandbox('aaa'), { kind: 'NotFound', message: 'pod sandbox "aaa" not found' });
    sandboxRepo.update(POD, () => ({ state: 'ready' }));
    assert.equal(pods.requireSandbox('aaa', { states: ['ready'] }).id, POD);
    sandboxRepo.update(POD, () => ({ state: 'notready' }));
    assert.throws(() => pods.requireSandbox(POD, { states: ['ready'] }), {
      kind: 'FailedPrecondition',
      message: `pod sandbox ${POD} is notready, not ready`,
    });
    assert.throws(() => pods.requireSandbox('x'), { kind: 'NotFound', message: 'pod sandbox "x" not found' });
    await pods.close();
  });

  it('is one pure check underneath (requireState)', () => {
    assert.throws(() => requireState('thing', 'x', { id: 'x1', state: 'creating' as const }), { kind: 'NotFound', message: 'thing "x" not found' });
    const rec: { id: string; state: 'a' | 'b' } = { id: 'x1', state: 'a' };
    assert.throws(() => requireState('thing', 'x', rec, { states: ['b'], refusal: '; only b will do' }), {
      kind: 'FailedPrecondition',
      message: 'thing x1 is a; only b will do',
    });
  });
});
