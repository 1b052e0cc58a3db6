/**
 * berthd as a process: start, stop, locks, sockets, config errors, every RPC answering,
 * crash safety of what was acknowledged. Each test runs its own berthd in temp dirs.
 */
import { status } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'smol-toml';
import { Berthd, BERTHD_BIN, leftovers, until } from '../helpers/berthd.js';
import { grpcError } from '../helpers/cri-client.js';

const PKG_VERSION = (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/** Runs berthd to completion (for commands and start-up failures). */
function runBerthd(args: string[], timeout = 15_000): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BERTHD_BIN, ...args], { encoding: 'utf8', timeout });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Flags that put a berthd entirely under `dir`. */
function dirFlags(dir: string): string[] {
  return ['--root', join(dir, 'root'), '--state', join(dir, 'state'), '--socket', join(dir, 'state', 'berth.sock')];
}

describe('berthd: daemon', function () {
  this.timeout(30_000);
  const cleanup: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const f of cleanup.splice(0).reverse()) await f();
  });
  async function start(opts: Parameters<typeof Berthd.start>[0] = {}): Promise<Berthd> {
    const b = await Berthd.start(opts);
    cleanup.push(() => b.dispose());
    return b;
  }
  function tempDir(): string {
    const d = mkdtempSync(join(tmpdir(), 'berth-e2e-'));
    cleanup.push(() => rmSync(d, { recursive: true, force: true }));
    return d;
  }

  it('starts, answers Version, and exits 0 within 5 s of SIGTERM leaving nothing behind', async () => {
    const b = await Berthd.start();
    const v = await b.runtime.Version({ version: '0.1.0' });
    assert.deepEqual(v, { version: '0.1.0', runtime_name: 'berth', runtime_version: PKG_VERSION, runtime_api_version: 'v1' });
    const st = statSync(b.socket);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o660, `socket mode is ${(st.mode & 0o777).toString(8)}`);
    assert.equal(st.uid, 0);
    const { code, ms } = await b.stop('SIGTERM');
    assert.equal(code, 0);
    assert.ok(ms < 5000, `took ${ms} ms`);
    assert.deepEqual(leftovers(b.dir, b.socket), []);
    assert.ok(b.records().some((r) => r.msg === 'berthd stopped'));
    await b.dispose();
  });

  it('exits 0 on SIGINT too', async () => {
    const b = await Berthd.start();
    assert.equal((await b.stop('SIGINT')).code, 0);
    await b.dispose();
  });

  it('replaces a stale socket file', async () => {
    const dir = tempDir();
    const sock = join(dir, 'state', 'berth.sock');
    execFileSync('mkdir', ['-p', join(dir, 'state')]);
    // A socket nobody listens on any more, as a killed daemon leaves it.
    execFileSync('python3', ['-c', `import socket; s = socket.socket(socket.AF_UNIX); s.bind(${JSON.stringify(sock)})`]);
    assert.ok(statSync(sock).isSocket());
    const b = await start({ reuse: { dir } });
    assert.equal((await b.runtime.Version({})).runtime_name, 'berth');
  });

  it('refuses to replace a path that is not a socket', () => {
    const dir = tempDir();
    execFileSync('mkdir', ['-p', join(dir, 'state')]);
    writeFileSync(join(dir, 'state', 'berth.sock'), 'precious');
    const r = runBerthd(dirFlags(dir));
    assert.equal(r.code, 1);
    assert.match(r.stderr, /berth\.sock exists and is not a socket/);
    assert.equal(readFileSync(join(dir, 'state', 'berth.sock'), 'utf8'), 'precious');
  });

  it('refuses a second instance on the same root, state or socket, and the first keeps serving', async () => {
    const b = await start();
    const other = tempDir();
    const sameRoot = runBerthd(['--root', b.root, '--state', join(other, 's1'), '--socket', join(other, 's1.sock')]);
    assert.equal(sameRoot.code, 1);
    assert.match(sameRoot.stderr, new RegExp(`another berthd \\(pid ${b.proc.pid}\\) is using root directory ${b.root}`));
    const sameState = runBerthd(['--root', join(other, 'r2'), '--state', b.state, '--socket', join(other, 's2.sock')]);
    assert.equal(sameState.code, 1);
    assert.match(sameState.stderr, new RegExp(`is using state directory ${b.state}`));
    const sameSocket = runBerthd(['--root', join(other, 'r3'), '--state', join(other, 's3'), '--socket', b.socket]);
    assert.equal(sameSocket.code, 1);
    assert.match(sameSocket.stderr, new RegExp(`another server is listening on ${b.socket}`));
    assert.equal((await b.runtime.Version({})).runtime_name, 'berth');
  });

  it('rejects a bad config naming the file and key, and touches nothing', () => {
    const dir = tempDir();
    const etc = join(dir, 'etc');
    execFileSync('mkdir', ['-p', join(etc, 'config.d')]);
    writeFileSync(join(etc, 'config.toml'), 'log_level = "info"\n[cni]\nconf_dirr = "/etc/cni/net.d"\n');
    const unknown = runBerthd(['--config', join(etc, 'config.toml'), ...dirFlags(dir)]);
    assert.equal(unknown.code, 2);
    assert.equal(unknown.stderr.trim(), `berthd: invalid configuration: ${join(etc, 'config.toml')}: unknown key 'cni.conf_dirr'`);

    writeFileSync(join(etc, 'config.toml'), '');
    writeFileSync(join(etc, 'config.d', '10-x.toml'), 'shutdown_timeout_seconds = "soon"\n');
    const badValue = runBerthd(['--config', join(etc, 'config.toml'), ...dirFlags(dir)]);
    assert.equal(badValue.code, 2);
    assert.match(badValue.stderr, /10-x\.toml: key 'shutdown_timeout_seconds': expected an integer from 0 to 3600, got "soon"/);

    const badFlag = runBerthd(['--log-level', 'chatty', ...dirFlags(dir)]);
    assert.equal(badFlag.code, 2);
    assert.match(badFlag.stderr, /key 'log_level': expected one of/);

    assert.ok(!existsSync(join(dir, 'root')) && !existsSync(join(dir, 'state')), 'nothing was created');
  });

  it('prints the effective config, help and version', () => {
    const dir = tempDir();
    execFileSync('mkdir', ['-p', join(dir, 'config.d')]);
    writeFileSync(join(dir, 'config.toml'), 'log_level = "warn"\ncgroup_driver = "systemd"\n');
    writeFileSync(join(dir, 'config.d', '10-cni.toml'), '[cni]\nconf_dir = "/srv/cni"\n');
    const r = runBerthd(['config', '--config', join(dir, 'config.toml'), '--root', '/srv/berth']);
    assert.equal(r.code, 0, r.stderr);
    const cfg = JSON.parse(JSON.stringify(parse(r.stdout))) as Record<string, unknown>;
    assert.equal(cfg.log_level, 'warn');
    assert.equal(cfg.cgroup_driver, 'systemd');
    assert.equal(cfg.root, '/srv/berth');
    assert.deepEqual(cfg.cni, { conf_dir: '/srv/cni', bin_dirs: ['/usr/lib/cni', '/opt/cni/bin'] });
    const help = runBerthd(['--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /^Usage: berthd/);
    for (const flag of ['--config', '--socket', '--root', '--state', '--log-level']) assert.ok(help.stdout.includes(flag), flag);
    assert.equal(runBerthd(['--version']).stdout, `berthd ${PKG_VERSION} (CRI runtime.v1)\n`);
    const bad = runBerthd(['--bogus']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /Unknown option '--bogus'/);
  });

  it('answers every RPC of both services: a reply or UNIMPLEMENTED, never a transport error', async () => {
    const b = await start();
    for (const [svcName, client] of [
      ['RuntimeService', b.runtime.raw],
      ['ImageService', b.image.raw],
    ] as const) {
      const def = (client.constructor as unknown as { service: Record<string, { responseStream: boolean; originalName?: string }> }).service;
      const methods = Object.keys(def);
      // CRI v1 as of cri-api v0.37.0-beta.0: 35 runtime RPCs, 6 image RPCs.
      assert.equal(methods.length, svcName === 'RuntimeService' ? 35 : 6, `${svcName} RPC count`);
      for (const m of methods) {
        const fn = (client as unknown as Record<string, (...a: unknown[]) => unknown>)[m]!.bind(client);
        const outcome = await new Promise<{ code: number; details: string }>((resolve) => {
          if (def[m]!.responseStream) {
            // GetContainerEvents stays open until the caller goes: it ends at its deadline.
            const s = fn({}, { deadline: Date.now() + (m === 'GetContainerEvents' ? 1000 : 5000) }) as NodeJS.EventEmitter;
            s.on('data', () => {});
            s.on('error', (e: { code: number; details: string }) => resolve(e));
            s.on('end', () => resolve({ code: status.OK, details: '' }));
          } else {
            fn({}, { deadline: Date.now() + 5000 }, (e: { code: number; details: string } | null) => resolve(e ?? { code: status.OK, details: '' }));
          }
        });
        const expected = m === 'GetContainerEvents' ? [status.DEADLINE_EXCEEDED] : [status.OK, status.UNIMPLEMENTED, status.INVALID_ARGUMENT, status.NOT_FOUND];
        const ok = expected.includes(outcome.code);
        assert.ok(ok, `${svcName}/${m}: ${status[outcome.code]} ${outcome.details}`);
        if (outcome.code === status.UNIMPLEMENTED && m === 'CheckpointContainer') assert.match(outcome.details, /does not implement checkpoint\/restore/);
        else if (outcome.code === status.UNIMPLEMENTED) assert.equal(outcome.details, `${m} is not implemented by berth yet`);
      }
    }
    assert.equal((await b.runtime.Version({})).runtime_name, 'berth', 'still serving');
  });

  it('Status: RuntimeReady, and NetworkReady once a CNI config appears, without a restart', async () => {
    const b = await start();
    const before = await b.runtime.Status({ verbose: false });
    const cond = (s: typeof before, t: string) => s.status!.conditions.find((c) => c.type === t)!;
    assert.equal(cond(before, 'RuntimeReady').status, true);
    const net = cond(before, 'NetworkReady');
    assert.equal(net.status, false);
    assert.equal(net.reason, 'NetworkPluginNotReady');
    assert.match(net.message, /no network config found in .*\/cni$/);
    assert.deepEqual(before.info, {});

    writeFileSync(join(b.dir, 'cni', '10-berth.conflist'), JSON.stringify({ cniVersion: '1.0.0', name: 'berth', plugins: [{ type: 'bridge' }] }));
    const after = await b.runtime.Status({ verbose: true });
    assert.equal(cond(after, 'NetworkReady').status, true);
    const cfg = JSON.parse(after.info.config!);
    assert.equal(cfg.root, b.root);
    assert.equal(cfg.cni.conf_dir, join(b.dir, 'cni'));
    assert.equal(JSON.parse(after.info.cni!).name, 'berth');
  });

  it('RuntimeConfig reports the configured cgroup driver', async () => {
    const a = await start();
    assert.equal((await a.runtime.RuntimeConfig({})).linux!.cgroup_driver, 'CGROUPFS');
    const b = await start({ config: 'cgroup_driver = "systemd"\n' });
    assert.equal((await b.runtime.RuntimeConfig({})).linux!.cgroup_driver, 'SYSTEMD');
  });

  it('UpdateRuntimeConfig validates the pod CIDR, names the field, and keeps it across a kill -9', async () => {
    const b = await Berthd.start();
    const dir = b.dir;
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
    const cases: Array<[unknown, RegExp]> = [
      [{}, /^runtime_config is required$/],
      [{ runtime_config: {} }, /^runtime_config\.network_config is required$/],
      [{ runtime_config: { network_config: { pod_cidr: '10.1.0.0/99' } } }, /runtime_config\.network_config\.pod_cidr: "10\.1\.0\.0\/99" is not a CIDR/],
      [{ runtime_config: { network_config: { pod_cidr: '10.1.0.0/24,10.2.0.0/24' } } }, /two CIDRs of the same IP family/],
      [{ runtime_config: { network_config: { pod_cidr: 'x'.repeat(100_000) } } }, /pod_cidr is 100000 characters long; the limit is 256/],
    ];
    for (const [req, msg] of cases) {
      const e = await grpcError(b.runtime.UpdateRuntimeConfig(req as never));
      assert.equal(e.code, status.INVALID_ARGUMENT, JSON.stringify(req).slice(0, 80));
      assert.match(e.details, msg);
    }
    await b.runtime.UpdateRuntimeConfig({ runtime_config: { network_config: { pod_cidr: '10.244.3.0/24,fd00:3::/64' } } });
    // Acknowledged means durable: kill -9 right after the reply.
    await b.stop('SIGKILL');
    const again = await Berthd.start({ reuse: { dir } });
    cleanup.push(() => again.dispose({ keepDir: true }));
    const st = await again.runtime.Status({ verbose: true });
    assert.equal(JSON.parse(st.info.podCIDR!), '10.244.3.0/24,fd00:3::/64');
  });

  it('refuses an oversized message without falling over', async () => {
    const b = await start();
    const e = await grpcError(b.runtime.UpdateRuntimeConfig({ runtime_config: { network_config: { pod_cidr: 'x'.repeat(17 * 1024 * 1024) } } }));
    assert.equal(e.code, status.RESOURCE_EXHAUSTED);
    assert.equal((await b.runtime.Version({})).runtime_name, 'berth');
  });

  it('logs one structured line per call', async () => {
    const b = await start();
    await b.runtime.Version({});
    await b.runtime.Status({});
    await grpcError(b.runtime.ContainerStats({ container_id: 'x' }));
    // The line of a call is written as it ends, just after its answer.
    await until(async () => (b.records().some((r) => r.msg === 'rpc' && r.method === 'ContainerStats') ? true : undefined));
    const rpcs = b.records().filter((r) => r.msg === 'rpc');
    const byMethod = (m: string) => rpcs.filter((r) => r.method === m);
    assert.ok(byMethod('Version').length >= 2, 'readiness probe plus the test call');
    assert.equal(byMethod('Status').length, 1);
    assert.equal(byMethod('Status')[0]!.code, 'OK');
    assert.equal(typeof byMethod('Status')[0]!.duration_ms, 'number');
    assert.equal(byMethod('ContainerStats')[0]!.code, 'NOT_FOUND');
  });
});
