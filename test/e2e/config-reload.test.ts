/**
 * Live configuration reload (SIGHUP and `berthd reload`) end to end: a real berthd, two
 * real registries on 127.0.0.1, drop-ins changed on disk. What a reload may change
 * applies to the next pull or call; a broken file changes nothing and says why in one
 * error line; a key that needs a restart keeps its running value and is named.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'smol-toml';
import type { BerthConfig } from '../../src/config/schema.js';
import { pushRandomImage, type PushedImage } from '../../hack/test-images/oci.js';
import { Berthd, BERTHD_BIN, sleep, until } from '../helpers/berthd.js';
import { freePort, startRegistry, type Registry } from '../helpers/registry.js';

/** The default pod network hack/setup.sh installs. */
const CONFLIST = fileURLToPath(new URL('../../../hack/cni/10-berth-bridge.conflist', import.meta.url));

/**
 * Runs a berthd command (reload, config) to completion. Asynchronously: the test must
 * keep reading the daemon's log pipe meanwhile (a full pipe would stall the daemon).
 */
function runBerthd(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BERTHD_BIN, ...args], { encoding: 'utf8', timeout: 40_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : null) : 0, stdout, stderr }),
    );
  });
}

/** Waits until the daemon's log holds `n` records that `match` (the pipe is read asynchronously). */
async function logged(b: Berthd, match: (r: Record<string, unknown>) => boolean, n: number): Promise<Array<Record<string, unknown>>> {
  return until(async () => {
    const hits = b.records().filter(match);
    return hits.length >= n ? hits : undefined;
  }, 5_000);
}

describe('berthd: live config reload', function () {
  this.timeout(90_000);
  /** Has no images. */
  let first: Registry;
  /** Has `img`. */
  let second: Registry;
  let img: PushedImage;
  /** An image registry nobody serves: its images come only through its mirrors. */
  let origin: string;
  const cleanup: Array<() => Promise<void> | void> = [];

  before(async function () {
    this.timeout(120_000);
    first = await startRegistry();
    second = await startRegistry();
    img = await pushRandomImage(second.host, 'berth-test/reload', 'v1', 1, 4096);
    origin = `127.0.0.1:${await freePort()}`;
  });
  after(async () => {
    await first?.stop();
    await second?.stop();
  });
  afterEach(async () => {
    for (const f of cleanup.splice(0).reverse()) await f();
  });

  async function start(opts: Parameters<typeof Berthd.start>[0]): Promise<Berthd> {
    const b = await Berthd.start(opts);
    cleanup.push(() => b.dispose());
    return b;
  }
  const ref = (): string => `${origin}/${img.name}:${img.tag!}`;
  const mirrorsOf = (r: Registry): string => `[images]\npull_attempts = 1\n[registries."${origin}"]\nmirrors = ["${r.url}"]\n`;
  const dropIn = (b: Berthd, name: string, text: string): void => writeFileSync(join(b.dir, 'etc', 'config.d', name), text);
  const reload = (b: Berthd): ReturnType<typeof runBerthd> => runBerthd(['reload', '--state', b.state]);
  /** The config in force as verbose Status reports it. */
  async function statusConfig(b: Berthd): Promise<BerthConfig> {
    const res = await b.runtime.Status({ verbose: true });
    return JSON.parse(res.info['config']!) as BerthConfig;
  }

  it('a mirror changed in a drop-in and applied by SIGHUP serves the next pull', async () => {
    const b = await start({ dropIns: { '50-mirrors.toml': mirrorsOf(first) } });
    // The first mirror lacks the image and its registry is down.
    await assert.rejects(b.image.PullImage({ image: { image: ref() } }));
    assert.ok(b.records().some((r) => r.msg === 'mirror failed, trying the next endpoint'));

    dropIn(b, '50-mirrors.toml', mirrorsOf(second));
    const gen = (await statusConfig(b)).registries[origin]!.mirrors as string[];
    assert.deepEqual(gen, [first.url], 'nothing changes before the signal');
    b.proc.kill('SIGHUP');
    await until(async () => (b.records().some((r) => r.msg === 'configuration reloaded') ? true : undefined));
    const reloaded = b.records().find((r) => r.msg === 'configuration reloaded')!;
    assert.deepEqual(reloaded.applied, [`registries."${origin}".mirrors`]);
    assert.deepEqual(reloaded.refused, []);

    assert.equal((await b.image.PullImage({ image: { image: ref() } })).image_ref, img.id);
    assert.deepEqual((await statusConfig(b)).registries[origin]!.mirrors, [second.url]);

    // berthd reload does the same, waits for the outcome and prints it.
    dropIn(b, '60-pin.toml', `[images]\npinned = ["${ref()}"]\n`);
    const r = await reload(b);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /reloaded its configuration \(generation 3\)/);
    assert.match(r.stdout, /applied: images\.pinned/);
    assert.equal((await b.image.ImageStatus({ image: { image: ref() } })).image!.pinned, true, 'images.pinned applies at once');
  });

  it('a broken drop-in is refused with one error line; the old config stays and serves', async () => {
    const b = await start({ dropIns: { '50-mirrors.toml': mirrorsOf(second) } });
    const errorsBefore = b.records().filter((r) => r.level === 'error').length;
    dropIn(b, '50-mirrors.toml', `[registries."${origin}"]\nmirrors = "${first.url}"\n`);
    const r = await reload(b);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /refused; the running one stays: .*50-mirrors\.toml: key 'registries\."127\.0\.0\.1:\d+"\.mirrors': expected an array of URLs/);
    const errors = await logged(b, (x) => x.level === 'error', errorsBefore + 1);
    assert.equal(errors.length, errorsBefore + 1, 'exactly one error line');
    assert.equal(errors.at(-1)!.msg, 'configuration reload refused; the running configuration stays');
    assert.match(String(errors.at(-1)!.error), /50-mirrors\.toml/);

    // Not TOML at all, and a pinned reference that does not parse: refused the same way.
    dropIn(b, '50-mirrors.toml', mirrorsOf(second));
    dropIn(b, '70-bad.toml', '[images\npinned = 3\n');
    assert.match((await reload(b)).stderr, /70-bad\.toml: not valid TOML/);
    dropIn(b, '70-bad.toml', '[images]\npinned = ["Not A/Valid:Ref:x"]\n');
    assert.match((await reload(b)).stderr, /config key 'images\.pinned'/);
    assert.equal((await logged(b, (x) => x.level === 'error', errorsBefore + 3)).length, errorsBefore + 3);

    // The running config still pulls through the mirror it had.
    assert.equal((await b.image.PullImage({ image: { image: ref() } })).image_ref, img.id);
    assert.deepEqual((await statusConfig(b)).registries[origin]!.mirrors, [second.url]);
    // berthd config prints the config in force, and says the last reload was refused.
    const c = await runBerthd(['config', '--state', b.state]);
    assert.equal(c.code, 0, c.stderr);
    assert.match(c.stdout, /^# The configuration in force in berthd pid \d+: generation 1/);
    assert.match(c.stdout, /# the last reload \(.*\) was refused: .*config key 'images\.pinned'/);
    assert.deepEqual((parse(c.stdout) as unknown as BerthConfig).registries[origin]!.mirrors, [second.url]);
  });

  it('a changed key that needs a restart is named and keeps its running value; the rest applies', async () => {
    const b = await start({ config: 'cgroup_driver = "cgroupfs"\n' });
    const networkReady = async (): Promise<boolean> => (await b.runtime.Status({})).status!.conditions.find((c) => c.type === 'NetworkReady')!.status;
    assert.equal(await networkReady(), false, "the test's CNI conf dir is empty");
    // Another CNI conf dir, holding a network: a live key, applied with the refused ones.
    const cni = join(b.dir, 'cni-2');
    mkdirSync(cni);
    copyFileSync(CONFLIST, join(cni, '10-berth-bridge.conflist'));
    dropIn(b, '00-test-cni.toml', `[cni]\nconf_dir = "${cni}"\n`);
    dropIn(b, '80-restart.toml', `cgroup_driver = "systemd"\n[streaming]\nport = 1\nidle_timeout_seconds = 60\n[runtimes.other]\npath = "/bin/true"\n`);
    const r = await reload(b);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /applied: cni\.conf_dir, streaming\.idle_timeout_seconds\n/);
    assert.equal(await networkReady(), true, 'Status reads the new CNI conf dir');
    assert.match(r.stdout, /kept until a restart \(these keys need one\): cgroup_driver, runtimes\.other\.path, streaming\.port\n/);
    const refused = await logged(b, (x) => x.msg === 'config key needs a restart; its running value stays', 3);
    assert.deepEqual(
      refused.map((x) => [x.level, x.key, x.wanted]),
      [
        ['warn', 'cgroup_driver', 'systemd'],
        ['warn', 'runtimes.other.path', '/bin/true'],
        ['warn', 'streaming.port', 1],
      ],
    );
    const cfg = await statusConfig(b);
    assert.equal(cfg.cgroup_driver, 'cgroupfs');
    assert.equal(cfg.runtimes.other, undefined);
    assert.equal(cfg.streaming.port, 0);
    assert.equal(cfg.streaming.idle_timeout_seconds, 60);
    // The daemon still serves on its socket and root.
    assert.equal((await b.runtime.Version({})).runtime_name, 'berth');
  });

  it('berthd reload without a berthd on the state dir says so and exits 1', async () => {
    const r = await runBerthd(['reload', '--state', join(first.dataDir, 'no-berthd-here')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^berthd reload: no berthd runs on state dir .*no-berthd-here \(no .*berthd\.pid\)\n$/);
  });

  it('a log level change applies to the next line', async () => {
    const b = await start({ config: 'log_level = "info"\n', logLevel: null });
    const versionLines = (): number => b.records().filter((x) => x.msg === 'rpc' && x.method === 'Version').length;
    await b.runtime.Version({});
    assert.equal(versionLines(), 0, 'Version logs at debug, below info');
    dropIn(b, '90-debug.toml', 'log_level = "debug"\n');
    assert.equal((await reload(b)).code, 0);
    await b.runtime.Version({});
    await until(async () => (versionLines() === 1 ? true : undefined), 5_000);
    dropIn(b, '90-debug.toml', 'log_level = "error"\n');
    assert.equal((await reload(b)).code, 0);
    const before = b.records().length;
    await b.runtime.Version({});
    await b.image.ImageFsInfo({});
    // An absence: give the log pipe time to deliver anything written.
    await sleep(500);
    assert.deepEqual(b.records().slice(before), [], 'nothing below error is written');
  });
});
