/**
 * `berthd doctor` against a real berthd: leaks the test makes itself (a mount under the
 * root, a netns pin under state/ns, a cgroup under the pod's cgroup parent, a real conmon
 * running a real runc container in berth's bundle layout but unknown to its database, and
 * an IPAM reservation) are each reported as leaked (exit 1) and removed by --repair, while
 * the running pod and container are left untouched. Then the same with berthd stopped
 * (stray files, an orphaned blob row), and the refusal of a root doctor cannot read.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { createLogger } from '../../src/common/logger.js';
import { BlobRepository } from '../../src/images/content/blob-repository.js';
import { OciRuntime } from '../../src/oci/oci-runtime.js';
import { ownOomScoreAdj } from '../../src/oci/runtime.js';
import { PodInfra } from '../../src/sandbox/infra.js';
import { ConmonShim } from '../../src/shim/conmon.js';
import { shimDirs } from '../../src/shim/shim.js';
import { BERTHD_BIN, Berthd, until } from '../helpers/berthd.js';
import { runCleanup, type CleanupStep } from '../helpers/cleanup.js';
import { useFixtureRegistry } from '../helpers/fixtures.js';
import { testBridge } from '../helpers/network.js';

interface Finding {
  category: string;
  subject: string;
  owner?: string;
  status: 'known' | 'leaked' | 'damaged';
  detail: string;
  action: string;
}

interface Report {
  berthd_running: boolean;
  summary: { known: number; leaked: number; damaged: number };
  findings: Finding[];
  repairs?: Array<{ category: string; subject: string; owner?: string; ok: boolean; result: string }>;
  remaining?: Finding[];
}

/** Runs `berthd doctor` on `b`'s dirs with its config; returns the exit status and the JSON report. */
function doctor(b: Berthd, ...flags: string[]): { code: number; report: Report; stderr: string } {
  const res = spawnSync(process.execPath, [BERTHD_BIN, 'doctor', '--config', b.configFile, '--root', b.root, '--state', b.state, '--json', ...flags], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  assert.equal(res.error, undefined);
  let report: Report;
  try {
    report = JSON.parse(res.stdout) as Report;
  } catch {
    throw new Error(`doctor printed no JSON (exit ${res.status}):\n${res.stdout}\n${res.stderr}`);
  }
  return { code: res.status!, report, stderr: res.stderr };
}

function leaked(r: Report): Finding[] {
  return r.findings.filter((f) => f.status === 'leaked');
}

/** The cgroup hierarchies of this host (v1 controllers, named ones, and v2). */
function hierarchies(): string[] {
  return execFileSync('findmnt', ['-rn', '-t', 'cgroup,cgroup2', '-o', 'TARGET'], { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l !== '');
}

describe('berthd doctor', function () {
  this.timeout(120_000);
  const reg = useFixtureRegistry();
  const cleanup: CleanupStep[] = [];
  afterEach(() => runCleanup(cleanup));

  it('reports a leaked mount, netns pin, cgroup, conmon and IPAM reservation (exit 1), --repair removes each, and the running pod is untouched', async () => {
    const b = await Berthd.start();
    cleanup.push(() => b.dispose());
    const net = testBridge(b, 'bd');
    cleanup.push(net.remove);
    const tag = randomBytes(4).toString('hex');
    // The pod's cgroup parent is the test's own (kubelet's, in real life): doctor looks under it.
    const cgroupParent = `/berth-test-doctor-${tag}`;
    cleanup.push(() => {
      for (const h of hierarchies()) {
        try {
          rmdirSync(join(h, cgroupParent));
        } catch {
          // never made in this hierarchy, or already gone
        }
      }
    });
    const logDir = mkdtempSync(join(tmpdir(), 'berth-logs-'));
    cleanup.push(() => rmSync(logDir, { recursive: true, force: true }));
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    const podCfg = {
      metadata: { name: `doctor-${tag}`, namespace: 'test', uid: `u${tag}`, attempt: 0 },
      hostname: 'doctor',
      log_directory: logDir,
      linux: { cgroup_parent: cgroupParent, security_context: { namespace_options: { network: 'POD', pid: 'POD', ipc: 'POD' } } },
    };
    const { pod_sandbox_id: pod } = await b.runtime.RunPodSandbox({ config: podCfg as never });
    cleanup.push(async () => {
      await b.runtime.StopPodSandbox({ pod_sandbox_id: pod });
      await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
    });
    const { container_id: ctr } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: { metadata: { name: 'sleeper', attempt: 0 }, image: { image: reg.fx.busybox.ref }, command: ['sleep', '3600'], log_path: 'sleeper.log' },
      sandbox_config: podCfg as never,
    });
    await b.runtime.StartContainer({ container_id: ctr });

    // A clean node first: everything found is known to berth.
    const clean = doctor(b);
    assert.equal(clean.code, 0, JSON.stringify(leaked(clean.report), null, 2));
    assert.equal(clean.report.berthd_running, true);
    const knownOwners = new Set(clean.report.findings.map((f) => `${f.category} ${f.owner ?? ''}`));
    for (const expected of [
      `namespace pin ${pod}`,
      `conmon ${ctr}`,
      `conmon ${pod}`,
      `cgroup ${ctr}`,
      `ipam reservation ${pod}`,
      `bundle ${ctr}`,
      `runtime state ${ctr}`,
    ]) {
      assert.ok(knownOwners.has(expected), `doctor lists ${expected} as known (found: ${[...knownOwners].join(', ')})`);
    }

    // 1. A tmpfs under the root dir.
    const mnt = join(b.root, `leaked-tmpfs-${tag}`);
    mkdirSync(mnt);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'doctor-test', mnt]);
    cleanup.push(() => {
      spawnSync('umount', ['-l', mnt]);
      rmSync(mnt, { recursive: true, force: true });
    });
    // 2. A new network namespace pinned `ip netns`-style under state/ns.
    const pin = join(b.state, 'ns', `leaked-netns-${tag}`);
    writeFileSync(pin, '');
    execFileSync('unshare', [`--net=${pin}`, 'true']);
    cleanup.push(() => {
      spawnSync('umount', ['-l', pin]);
      rmSync(pin, { force: true });
    });
    // 3. A cgroup of berth's form under the pod's parent, in every hierarchy.
    const strayCgroup = randomBytes(32).toString('hex');
    for (const h of hierarchies()) mkdirSync(join(h, cgroupParent, `berth-${strayCgroup}`), { recursive: true });
    cleanup.push(() => {
      for (const h of hierarchies()) rmSync(join(h, cgroupParent, `berth-${strayCgroup}`), { recursive: true, force: true });
    });
    // 4. A real conmon running a real runc container in berth's bundle layout, under berth's
    //    state dirs and the pod's cgroup parent, that berth's database has never heard of.
    const ghost = randomBytes(32).toString('hex');
    const runtime = new OciRuntime({ handler: 'runc', path: '/usr/sbin/runc', root: join(b.state, 'runtime', 'runc') });
    const shim = new ConmonShim({ dirs: shimDirs(b.state), log: createLogger('error') });
    const bundle = join(b.root, 'containers', ghost);
    const ghostPid = await new PodInfra({ shim }).start(
      { sandboxId: ghost, infraPath: '/usr/bin/catatonit', namespaces: {}, cgroupDriver: 'cgroupfs', cgroupParent, minOomScoreAdj: ownOomScoreAdj() },
      bundle,
      runtime,
    );
    cleanup.push(async () => {
      await runtime.delete(ghost, true).catch(() => undefined);
      await shim.removeFiles({ id: ghost, bundle }).catch(() => undefined);
      rmSync(bundle, { recursive: true, force: true });
    });
    // 5. A host-local reservation in the pod network's IPAM dir naming a pod berth does not know.
    const ipamDir = join(b.dir, 'ipam', `berth-${net.bridge}`);
    const reservation = join(ipamDir, '10.255.255.77');
    writeFileSync(reservation, `${'e'.repeat(64)}\r\neth0`);

    const found = doctor(b);
    assert.equal(found.code, 1, 'exit 1 while anything is leaked');
    const bad = leaked(found.report);
    const has = (category: string, pred: (f: Finding) => boolean): Finding => {
      const f = bad.find((x) => x.category === category && pred(x));
      assert.ok(f, `${category} reported as leaked; leaked: ${JSON.stringify(bad, null, 2)}`);
      assert.match(f.action, /--repair/);
      return f;
    };
    has('mount', (f) => f.subject === mnt);
    has('namespace pin', (f) => f.subject === pin);
    has('cgroup', (f) => f.subject === `${cgroupParent}/berth-${strayCgroup}`);
    has('cgroup', (f) => f.owner === ghost);
    has('conmon', (f) => f.owner === ghost);
    has('runtime state', (f) => f.owner === ghost);
    has('bundle', (f) => f.subject === bundle);
    has('ipam reservation', (f) => f.subject === reservation);
    // Nothing of the real pod or container is among them.
    assert.deepEqual(
      bad.filter((f) => f.owner === pod || f.owner === ctr),
      [],
    );
    assert.ok(
      found.report.findings.some((f) => f.category === 'database' && f.status === 'known'),
      'integrity_check ok',
    );

    const fixed = doctor(b, '--repair');
    assert.equal(
      fixed.code,
      0,
      `after --repair nothing is leaked: ${JSON.stringify(fixed.report.remaining, null, 2)}\n${JSON.stringify(fixed.report.repairs, null, 2)}`,
    );
    assert.ok(
      fixed.report.repairs!.every((r) => r.ok),
      JSON.stringify(fixed.report.repairs, null, 2),
    );
    const again = doctor(b);
    assert.equal(again.code, 0, JSON.stringify(leaked(again.report), null, 2));

    // Each leak is gone from the node.
    assert.ok(!readFileSyncSafe('/proc/self/mountinfo').includes(mnt), 'the tmpfs is unmounted');
    assert.ok(!existsSync(pin), 'the pin is unmounted and removed');
    for (const h of hierarchies()) {
      assert.ok(!existsSync(join(h, cgroupParent, `berth-${strayCgroup}`)), `cgroup removed from ${h}`);
      assert.ok(!existsSync(join(h, cgroupParent, `berth-${ghost}`)), `the ghost container's cgroup removed from ${h}`);
    }
    assert.ok(!existsSync(`/proc/${ghostPid}`) || readFileSyncSafe(`/proc/${ghostPid}/stat`).includes(') Z'), 'the ghost container is killed');
    assert.ok(
      !existsSync(bundle) && !existsSync(join(b.state, 'runtime', 'runc', ghost)) && !existsSync(join(b.state, 'exits', ghost)),
      'its bundle, runtime state and exit file are removed',
    );
    assert.ok(!existsSync(reservation), 'the reservation is released');
    assert.ok(existsSync(mnt) && readdirSync(join(b.state, 'ns')).includes(pod), 'only the leaks went');

    // The running pod and container are untouched.
    const podSt = (await b.runtime.PodSandboxStatus({ pod_sandbox_id: pod })).status!;
    assert.equal(podSt.state, 'SANDBOX_READY');
    const ctrSt = (await b.runtime.ContainerStatus({ container_id: ctr })).status!;
    assert.equal(ctrSt.state, 'CONTAINER_RUNNING');
    const ex = await b.runtime.ExecSync({ container_id: ctr, cmd: ['sh', '-c', 'echo alive; hostname'], timeout: 10 });
    assert.equal(ex.exit_code, 0);
    assert.equal(ex.stdout.toString(), 'alive\ndoctor\n');
    assert.ok(
      existsSync(podSt.network!.ip ? join(b.dir, 'ipam', `berth-${net.bridge}`, podSt.network!.ip) : '/nonexistent'),
      "the pod's own reservation stays",
    );
  });

  it('--repair beside pods and containers being made never touches them (intent is in the database before the node changes)', async () => {
    const b = await Berthd.start();
    cleanup.push(() => b.dispose());
    const net = testBridge(b, 'bd');
    cleanup.push(net.remove);
    const tag = randomBytes(4).toString('hex');
    const cgroupParent = `/berth-test-doctor-${tag}`;
    cleanup.push(() => {
      for (const h of hierarchies()) {
        try {
          rmdirSync(join(h, cgroupParent));
        } catch {
          // never made in this hierarchy
        }
      }
    });
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    const made: Array<{ pod: string; ctr: string }> = [];
    cleanup.push(async () => {
      for (const { pod } of made) {
        await b.runtime.StopPodSandbox({ pod_sandbox_id: pod });
        await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod });
      }
    });
    const makeOne = async (i: number): Promise<void> => {
      const podCfg = {
        metadata: { name: `race-${tag}-${i}`, namespace: 'test', uid: `r${tag}${i}`, attempt: 0 },
        linux: { cgroup_parent: cgroupParent, security_context: { namespace_options: { network: 'POD', pid: 'POD', ipc: 'POD' } } },
      };
      const { pod_sandbox_id: pod } = await b.runtime.RunPodSandbox({ config: podCfg as never });
      const entry = { pod, ctr: '' };
      made.push(entry);
      const { container_id: ctr } = await b.runtime.CreateContainer({
        pod_sandbox_id: pod,
        config: { metadata: { name: 'c', attempt: 0 }, image: { image: reg.fx.busybox.ref }, command: ['sleep', '3600'] },
        sandbox_config: podCfg as never,
      });
      entry.ctr = ctr;
      await b.runtime.StartContainer({ container_id: ctr });
    };
    let making = true;
    const creations = Promise.all([0, 1, 2].map(makeOne)).finally(() => (making = false));
    const repairs: NonNullable<Report['repairs']> = [];
    let runs = 0;
    // spawnSync would block the event loop the creations run on: doctor runs as a child, awaited.
    while (making || runs === 0) {
      const res = await new Promise<{ code: number | null; out: string }>((resolve) => {
        const child = spawn(process.execPath, [BERTHD_BIN, 'doctor', '--config', b.configFile, '--root', b.root, '--state', b.state, '--json', '--repair']);
        let out = '';
        child.stdout.on('data', (d: Buffer) => (out += d.toString()));
        child.once('exit', (code) => resolve({ code, out }));
      });
      runs++;
      repairs.push(...((JSON.parse(res.out) as Report).repairs ?? []));
    }
    await creations;
    const ours = new Set(made.flatMap((m) => [m.pod, m.ctr]));
    assert.deepEqual(
      repairs.filter((r) => (r.owner !== undefined && ours.has(r.owner)) || [...ours].some((id) => r.subject.includes(id))),
      [],
      `doctor ran ${runs} times beside the creations and repaired nothing of them`,
    );
    for (const { pod, ctr } of made) {
      assert.equal((await b.runtime.PodSandboxStatus({ pod_sandbox_id: pod })).status!.state, 'SANDBOX_READY');
      assert.equal((await b.runtime.ContainerStatus({ container_id: ctr })).status!.state, 'CONTAINER_RUNNING');
      assert.equal((await b.runtime.ExecSync({ container_id: ctr, cmd: ['true'], timeout: 10 })).exit_code, 0);
    }
    assert.equal(doctor(b).code, 0);
  });

  it('works with berthd stopped: stray files, exit files and an orphaned blob row are leaked, --repair removes them', async () => {
    const b = await Berthd.start();
    cleanup.push(() => b.dispose());
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    await b.stop();

    const stray = randomBytes(32).toString('hex');
    const exitFile = join(b.state, 'exits', stray);
    mkdirSync(join(b.state, 'exits'), { recursive: true });
    writeFileSync(exitFile, '137');
    const strayBundle = join(b.root, 'containers', stray);
    mkdirSync(join(strayBundle, 'rootfs'), { recursive: true });
    writeFileSync(join(strayBundle, 'config.json'), '{}');
    const strayBlob = join(b.root, 'content', 'blobs', 'sha256', createHash('sha256').update('no row').digest('hex'));
    writeFileSync(strayBlob, 'no row');
    // A blob with a row that no image references (what an interrupted GC leaves).
    const orphanData = `orphan ${stray}`;
    const orphanHex = createHash('sha256').update(orphanData).digest('hex');
    const orphanFile = join(b.root, 'content', 'blobs', 'sha256', orphanHex);
    writeFileSync(orphanFile, orphanData);
    const db = new Database(join(b.root, 'berth.db'));
    new BlobRepository(db).insert(`sha256:${orphanHex}`, orphanData.length, 'application/octet-stream');
    db.close();

    const found = doctor(b);
    assert.equal(found.code, 1);
    assert.equal(found.report.berthd_running, false);
    const subjects = leaked(found.report).map((f) => `${f.category} ${f.subject}`);
    for (const s of [`exit file ${exitFile}`, `bundle ${strayBundle}`, `blob ${strayBlob}`, `blob ${orphanFile}`])
      assert.ok(subjects.includes(s), `${s} in ${subjects.join('\n')}`);
    assert.match(found.report.findings.find((f) => f.subject === orphanFile)!.detail, /orphaned/);
    // The pulled image's own blobs are known.
    assert.ok(found.report.findings.some((f) => f.category === 'blob' && f.status === 'known'));

    const fixed = doctor(b, '--repair');
    assert.equal(fixed.code, 0, JSON.stringify(fixed.report.repairs, null, 2));
    assert.equal(doctor(b).code, 0);
    for (const p of [exitFile, strayBundle, strayBlob, orphanFile]) assert.ok(!existsSync(p), `${p} removed`);
    const after = new Database(join(b.root, 'berth.db'), { readonly: true });
    assert.equal(new BlobRepository(after).get(`sha256:${orphanHex}`), undefined, 'the orphaned row is deleted');
    after.close();

    // berthd starts again on the repaired root, and the image is still there.
    const again = await Berthd.start({ reuse: { dir: b.dir } });
    cleanup.push(() => again.dispose());
    const images = await again.image.ListImages({});
    assert.ok(images.images.some((i) => i.repo_tags.includes(reg.fx.busybox.ref)));
  });

  it('refuses a root it cannot read (exit 2) with a clear error', async () => {
    const b = await Berthd.start();
    cleanup.push(() => b.dispose());
    // As an unprivileged user: berthd's temp dir is 0700 root.
    const conf = mkdtempSync(join(tmpdir(), 'berth-doctor-conf-'));
    cleanup.push(() => rmSync(conf, { recursive: true, force: true }));
    execFileSync('chmod', ['755', conf]);
    writeFileSync(join(conf, 'config.toml'), '');
    const res = spawnSync(process.execPath, [BERTHD_BIN, 'doctor', '--config', join(conf, 'config.toml'), '--root', b.root, '--state', b.state], {
      encoding: 'utf8',
      uid: 65534,
      gid: 65534,
    });
    assert.equal(res.status, 2, res.stderr);
    assert.match(res.stderr, new RegExp(`^berthd doctor: cannot read root ${b.root}: EACCES`));
    // A dir that is not a berth root.
    const res2 = spawnSync(process.execPath, [BERTHD_BIN, 'doctor', '--config', join(conf, 'config.toml'), '--root', conf, '--state', conf], {
      encoding: 'utf8',
    });
    assert.equal(res2.status, 2, res2.stderr);
    assert.match(res2.stderr, /cannot read root .*berth\.db/);
    // The daemon is not disturbed.
    await until(async () => ((await b.runtime.Version({})).runtime_name !== '' ? true : undefined));
  });
});

function readFileSyncSafe(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}
