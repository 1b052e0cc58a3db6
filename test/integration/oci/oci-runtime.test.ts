/**
 * OciRuntime's commands against the real runc of this machine (root only).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, constants, copyFileSync, existsSync, openSync, readSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { processStartTicks } from '../../../src/common/proc-stat.js';
import { createLogger, type Logger } from '../../../src/common/logger.js';
import { OciRuntime } from '../../../src/oci/oci-runtime.js';
import { OciRuntimeError } from '../../../src/oci/runtime-errors.js';
import { until } from '../../helpers/berthd.js';
import { assertNoNewFds, openFdTargets } from '../../helpers/fds.js';

const RUNC = '/usr/sbin/runc';

(process.getuid?.() === 0 && existsSync(RUNC) ? describe : describe.skip)('OciRuntime against runc (root)', () => {
  let root: string;
  let rt: OciRuntime;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'berth-oci-'));
    rt = new OciRuntime({ handler: 'runc', path: RUNC, root });
  });
  afterEach(() => rm(root, { recursive: true, force: true }));

  it("reports an unknown container: state undefined, delete idempotent, kill, start and update NotFound with runc's words", async () => {
    assert.equal(await rt.state('nosuch'), undefined);
    await rt.delete('nosuch');
    await rt.delete('nosuch', true);
    for (const op of [() => rt.kill('nosuch', 'TERM'), () => rt.start('nosuch'), () => rt.update('nosuch', { memory: { limit: 1 << 26, swap: 1 << 26 } })]) {
      await assert.rejects(op(), (err: unknown) => {
        assert.ok(err instanceof OciRuntimeError, String(err));
        assert.equal(err.kind, 'NotFound');
        assert.match(err.message, /^\/usr\/sbin\/runc \w+ nosuch: /);
        assert.match(err.detail, /does not exist|not found/);
        assert.doesNotMatch(err.detail, /time=|level=/);
        return true;
      });
    }
  });

  it('says clearly when the binary is missing', async () => {
    const missing = new OciRuntime({ handler: 'x', path: '/nonexistent/runc', root });
    await assert.rejects(missing.state('c1'), { kind: 'Internal', message: /\/nonexistent\/runc state c1: .*(ENOENT|No such file)/ });
  });
});

/** The parts of `runc spec`'s config.json the tests change. */
interface RuncSpec {
  process: { terminal: boolean; args: string[] };
  hooks?: Record<string, Array<{ path: string }>>;
}

/** A debug logger that keeps its records, for seeing which runtime commands ran. */
function recordingLogger(): { log: Logger; records: Array<Record<string, unknown>> } {
  const records: Array<Record<string, unknown>> = [];
  return { log: createLogger('debug', (line) => void records.push(JSON.parse(line) as Record<string, unknown>)), records };
}

/**
 * How `f` started containers, from the runtime's debug records: "start-fifo" for a start
 * through the exec.fifo, the verb of each runtime command run ("start" for `runc start`).
 */
async function startsDuring(records: Array<Record<string, unknown>>, f: () => Promise<void>): Promise<string[]> {
  const from = records.length;
  await f();
  return records.slice(from).flatMap((r) => {
    if (r.msg === 'runtime start through exec.fifo') return ['start-fifo'];
    if (r.msg === 'runtime' && Array.isArray(r.args)) return [String(r.args[2])];
    return [];
  });
}

(process.getuid?.() === 0 && existsSync(RUNC) && existsSync('/bin/busybox') ? describe : describe.skip)(
  'OciRuntime.start through exec.fifo (root, real runc)',
  function () {
    this.timeout(60_000);
    let dir: string;
    let root: string;
    let fifoRt: OciRuntime;
    let cliRt: OciRuntime;
    let log: Logger;
    let records: Array<Record<string, unknown>>;
    const ids: string[] = [];

    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), 'berth-fifo-'));
      root = join(dir, 'state');
      ({ log, records } = recordingLogger());
      fifoRt = new OciRuntime({ handler: 'runc', path: RUNC, root, fifoStart: true, log });
      cliRt = new OciRuntime({ handler: 'runc', path: RUNC, root, log });
    });
    afterEach(async () => {
      for (const id of ids.splice(0)) spawnSync(RUNC, ['--root', root, 'delete', '-f', id]);
      await rm(dir, { recursive: true, force: true });
    });

    /** `runc create` of a busybox `sleep` container (new namespaces, stdio /dev/null); its id. */
    function create(edit: (spec: RuncSpec) => void = () => undefined): string {
      const id = `fifo-${randomBytes(4).toString('hex')}`;
      const bundle = join(dir, id);
      mkdirSync(join(bundle, 'rootfs', 'bin'), { recursive: true });
      copyFileSync('/bin/busybox', join(bundle, 'rootfs/bin/busybox'));
      for (const tool of ['sh', 'sleep', 'true']) symlinkSync('busybox', join(bundle, 'rootfs/bin', tool));
      assert.equal(spawnSync(RUNC, ['spec'], { cwd: bundle }).status, 0);
      const spec = JSON.parse(readFileSync(join(bundle, 'config.json'), 'utf8')) as RuncSpec;
      spec.process.terminal = false;
      spec.process.args = ['sleep', '1000'];
      edit(spec);
      writeFileSync(join(bundle, 'config.json'), JSON.stringify(spec));
      ids.push(id);
      // All stdio /dev/null: the init keeps runc's, so a pipe would never see its end.
      const r = spawnSync(RUNC, ['--root', root, '--log', join(dir, `${id}.log`), 'create', '--bundle', bundle, id], { stdio: 'ignore' });
      assert.equal(r.status, 0, existsSync(join(dir, `${id}.log`)) ? readFileSync(join(dir, `${id}.log`), 'utf8') : '');
      return id;
    }

    it('starts a created container without `runc start`: the user program runs and runc says running, the fifo is gone', async () => {
      const fdsBefore = openFdTargets();
      const id = create();
      assert.equal((await fifoRt.state(id))?.status, 'created');
      const verbs = await startsDuring(records, () => fifoRt.start(id));
      assert.deepEqual(verbs, ['start-fifo'], 'no runtime command ran for the start');
      const st = await fifoRt.state(id);
      assert.equal(st?.status, 'running');
      assert.ok(!existsSync(join(root, id, 'exec.fifo')));
      // The init execs the user's program (its command line shows a moment after the exec, as with `runc start`).
      await until(async () => (readFileSync(`/proc/${st!.pid}/cmdline`, 'utf8') === 'sleep\x001000\x00' ? true : undefined));
      // A second start: runc's own refusal, through `runc start` (no fifo any more).
      const again = await startsDuring(records, () =>
        assert.rejects(
          fifoRt.start(id),
          (err: unknown) => err instanceof OciRuntimeError && err.kind === 'FailedPrecondition' && /already running/.test(err.detail),
        ),
      );
      assert.deepEqual(again, ['start'], 'the fifo is gone: runc start answers');
      await fifoRt.kill(id, 'KILL');
      await until(async () => ((await fifoRt.state(id))?.status === 'stopped' ? true : undefined));
      await fifoRt.delete(id);
      await assertNoNewFds(fdsBefore);
    });

    it('finishes a start cut off after the byte was read (berthd killed before removing the fifo): runc then says running', async () => {
      const id = create();
      const fifo = join(root, id, 'exec.fifo');
      // What a start killed between its read and its removal of the fifo leaves behind.
      const fd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
      try {
        const byte = Buffer.alloc(1);
        await until(async () => {
          try {
            return readSync(fd, byte) === 1 ? true : undefined;
          } catch {
            return undefined; // EAGAIN: the init has not written yet
          }
        });
      } finally {
        closeSync(fd);
      }
      const pid = (await fifoRt.state(id))!.pid;
      await until(async () => (readFileSync(`/proc/${pid}/cmdline`, 'utf8').startsWith('sleep') ? true : undefined));
      assert.equal((await fifoRt.state(id))?.status, 'created', 'runc goes by the fifo');
      assert.deepEqual(await startsDuring(records, () => fifoRt.start(id)), ['start-fifo']);
      assert.equal((await fifoRt.state(id))?.status, 'running');
      assert.ok(!existsSync(fifo));
    });

    it("a container whose init died before the start: runc's own error and state, as without the fifo", async () => {
      const fdsBefore = openFdTargets();
      const answers: Array<{ kind: string; detail: string; state: string | undefined }> = [];
      for (const rt of [fifoRt, cliRt]) {
        const id = create();
        const pid = (await rt.state(id))!.pid;
        process.kill(pid, 'SIGKILL');
        await until(async () => (processStartTicks(pid) === undefined ? true : undefined));
        const err = await rt.start(id).then(
          () => assert.fail('started a container whose init is dead'),
          (e: unknown) => e,
        );
        assert.ok(err instanceof OciRuntimeError, String(err));
        answers.push({ kind: err.kind, detail: err.detail, state: (await rt.state(id))?.status });
      }
      assert.deepEqual(answers[0], answers[1]);
      assert.equal(answers[0]!.state, 'stopped');
      assert.match(answers[0]!.detail, /stopped|dead/);
      await assertNoNewFds(fdsBefore);
    });

    it('falls back to `runc start` for a container with OCI hooks, and when turned off', async () => {
      const withHooks = create((spec) => (spec.hooks = { poststop: [{ path: '/bin/true' }] }));
      assert.deepEqual(await startsDuring(records, () => fifoRt.start(withHooks)), ['start']);
      assert.equal((await fifoRt.state(withHooks))?.status, 'running');

      const plain = create();
      assert.deepEqual(await startsDuring(records, () => cliRt.start(plain)), ['start']);
      assert.equal((await cliRt.state(plain))?.status, 'running');
    });

    it('falls back to `runc start` when the fifo is not where runc keeps it, or the binary is not runc', async () => {
      // No state dir at all: runc's own NotFound.
      await assert.rejects(fifoRt.start('nosuch'), { kind: 'NotFound' });
      // A binary that does not say it is runc: never the fifo.
      const other = new OciRuntime({ handler: 'other', path: '/bin/true', root, fifoStart: true, log });
      const id = create();
      assert.deepEqual(await startsDuring(records, () => other.start(id)), ['start']);
      assert.equal((await fifoRt.state(id))?.status, 'created', '/bin/true started nothing');
      await fifoRt.start(id);
      assert.equal((await fifoRt.state(id))?.status, 'running');
    });
  },
);
