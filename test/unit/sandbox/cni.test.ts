/**
 * berth's CNI client against recording fake plugins (protocol details, bounds) and
 * against the real plugins of /usr/lib/cni (bridge + host-local + portmap, loopback)
 * in a network namespace, bridge and subnet of the test's own. Traffic goes only to
 * 127.0.0.1 and to the pod IP inside that namespace. Runs as root.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKind } from '../../../src/common/errors.js';
import { CniNetwork, loopbackUp, podIps, type CniResult, type CniRuntimeConf } from '../../../src/sandbox/cni/cni.js';
import type { CniNetworkList, CniPluginConf } from '../../../src/sandbox/cni/conf-dir.js';

const SYSTEM_BIN = '/usr/lib/cni';

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function tryRun(cmd: string, args: string[]): void {
  try {
    run(cmd, args);
  } catch {
    // best-effort cleanup
  }
}

function list(name: string, plugins: CniPluginConf[], extra: Partial<CniNetworkList> = {}): CniNetworkList {
  return { cniVersion: '1.0.0', name, plugins, file: '(test)', ...extra };
}

async function rejectsWith(p: Promise<unknown>, re: RegExp): Promise<Error> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof Error);
    assert.match(err.message, re);
    return err;
  }
  assert.fail(`expected a rejection matching ${re}`);
}

/** True while `pid` is a live (non-zombie) process. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

describe('CniNetwork with recording fake plugins', () => {
  let dir: string;
  let bin: string;
  let logDir: string;
  const rt: CniRuntimeConf = {
    containerId: 'fake-sandbox-1',
    netns: '/proc/self/ns/net',
    ifName: 'eth0',
    args: [
      ['K8S_POD_NAMESPACE', 'ns1'],
      ['K8S_POD_NAME', 'pod1'],
    ],
    capabilityArgs: { portMappings: [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }], bandwidth: { ingressRate: 5 } },
  };
  const resultA = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: '/proc/self/ns/net' }], ips: [{ address: '10.5.0.2/24', interface: 0 }] };
  const resultB = { ...resultA, dns: { nameservers: ['10.5.0.1'] } };

  /** A plugin that records its env and stdin and answers ADD with `result` (or fails with `error`). */
  function fakePlugin(name: string, opts: { result?: unknown; error?: unknown; body?: string } = {}): void {
    const answer = opts.error
      ? `printf '%s' '${JSON.stringify(opts.error)}'; exit 1`
      : `[ "$CNI_COMMAND" = ADD ] && printf '%s' '${JSON.stringify(opts.result ?? resultA)}'; exit 0`;
    const script = [
      '#!/bin/sh',
      `echo "${name} $CNI_COMMAND" >> ${logDir}/calls`,
      `env | grep '^CNI_' | sort > ${logDir}/${name}-$CNI_COMMAND.env`,
      `cat > ${logDir}/${name}-$CNI_COMMAND.json`,
      opts.body ?? answer,
      '',
    ].join('\n');
    writeFileSync(join(bin, name), script);
    chmodSync(join(bin, name), 0o755);
  }
  const calls = (): string[] => (existsSync(join(logDir, 'calls')) ? readFileSync(join(logDir, 'calls'), 'utf8').trim().split('\n') : []);
  const stdinOf = (name: string, cmd: string): Record<string, unknown> =>
    JSON.parse(readFileSync(join(logDir, `${name}-${cmd}.json`), 'utf8')) as Record<string, unknown>;
  const envOf = (name: string, cmd: string): string => readFileSync(join(logDir, `${name}-${cmd}.env`), 'utf8');

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'berth-cni-fake-'));
    bin = join(dir, 'bin');
    logDir = join(dir, 'log');
    mkdirSync(bin);
    mkdirSync(logDir);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('threads prevResult on ADD, passes the protocol env and only declared capabilities', async () => {
    fakePlugin('fa', { result: resultA });
    fakePlugin('fb', { result: resultB });
    const emptyDir = join(dir, 'empty');
    mkdirSync(emptyDir);
    const net = new CniNetwork(
      list('fakenet', [
        { type: 'fa', foo: 1 },
        { type: 'fb', capabilities: { portMappings: true } },
      ]),
      [emptyDir, bin],
    );
    const result = await net.add(rt);
    assert.deepEqual(result, resultB);
    assert.deepEqual(calls(), ['fa ADD', 'fb ADD']);
    assert.deepEqual(stdinOf('fa', 'ADD'), { type: 'fa', foo: 1, name: 'fakenet', cniVersion: '1.0.0' });
    assert.deepEqual(stdinOf('fb', 'ADD'), {
      type: 'fb',
      capabilities: { portMappings: true },
      name: 'fakenet',
      cniVersion: '1.0.0',
      prevResult: resultA,
      runtimeConfig: { portMappings: rt.capabilityArgs!.portMappings },
    });
    assert.equal(
      envOf('fa', 'ADD'),
      [
        'CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=pod1',
        'CNI_COMMAND=ADD',
        'CNI_CONTAINERID=fake-sandbox-1',
        'CNI_IFNAME=eth0',
        'CNI_NETNS=/proc/self/ns/net',
        `CNI_PATH=${emptyDir}:${bin}`,
        '',
      ].join('\n'),
    );
  });

  it('runs CHECK in order and DEL in reverse with the cached result; CHECK skipped when disabled or pre-0.4.0', async () => {
    fakePlugin('fa');
    fakePlugin('fb');
    const net = new CniNetwork(list('fakenet', [{ type: 'fa' }, { type: 'fb' }]), [bin]);
    await net.check(rt, resultB);
    await net.del(rt, resultB);
    assert.deepEqual(calls(), ['fa CHECK', 'fb CHECK', 'fb DEL', 'fa DEL']);
    assert.deepEqual(stdinOf('fa', 'CHECK').prevResult, resultB);
    assert.deepEqual(stdinOf('fa', 'DEL').prevResult, resultB);
    assert.match(envOf('fa', 'DEL'), /^CNI_NETNS=\/proc\/self\/ns\/net$/m);

    rmSync(join(logDir, 'calls'));
    await new CniNetwork(list('fakenet', [{ type: 'fa' }], { disableCheck: true }), [bin]).check(rt, resultB);
    const old = new CniNetwork(list('fakenet', [{ type: 'fa' }], { cniVersion: '0.3.1' }), [bin]);
    await old.check(rt, resultB);
    assert.deepEqual(calls(), []);
    // Spec 0.3.x had no cached result on DEL.
    await old.del(rt, resultB);
    assert.equal(stdinOf('fa', 'DEL').prevResult, undefined);
    assert.equal(stdinOf('fa', 'DEL').cniVersion, '0.3.1');
  });

  it('DEL of a gone netns passes an empty CNI_NETNS; DEL without a result passes no prevResult', async () => {
    fakePlugin('fa');
    const net = new CniNetwork(list('fakenet', [{ type: 'fa' }]), [bin]);
    await net.del({ ...rt, netns: join(dir, 'no-such-netns') }, undefined);
    assert.match(envOf('fa', 'DEL'), /^CNI_NETNS=$/m);
    assert.equal(stdinOf('fa', 'DEL').prevResult, undefined);
    // A plain file (an unmounted pin) is no netns either.
    writeFileSync(join(dir, 'plain'), '');
    await net.del({ ...rt, netns: join(dir, 'plain') }, undefined);
    assert.match(envOf('fa', 'DEL'), /^CNI_NETNS=$/m);
  });

  it('reports the CNI error object of a failed ADD, naming network and plugin, and rolls the chain back', async () => {
    fakePlugin('fa');
    fakePlugin('fbad', { error: { cniVersion: '1.0.0', code: 11, msg: 'no luck', details: 'try later' } });
    const net = new CniNetwork(list('fakenet', [{ type: 'fa' }, { type: 'fbad' }]), [bin]);
    const err = await rejectsWith(
      net.add(rt),
      /^CNI network "fakenet": plugin "fbad" failed to ADD: no luck: try later \(rolling the chain back with DEL failed too: .*plugin "fbad" failed to DEL: no luck/,
    );
    assert.ok(isKind(err, 'Unavailable'));
    // DEL ran for the whole chain, in reverse, without a result.
    assert.deepEqual(calls(), ['fa ADD', 'fbad ADD', 'fbad DEL', 'fa DEL']);
    assert.equal(stdinOf('fa', 'DEL').prevResult, undefined);
  });

  it('DEL runs every plugin even when one fails, then names the failed one', async () => {
    fakePlugin('fa');
    fakePlugin('fbad', { error: { code: 999, msg: 'stuck' } });
    const net = new CniNetwork(list('fakenet', [{ type: 'fa' }, { type: 'fbad' }]), [bin]);
    await rejectsWith(net.del(rt, resultA), /^CNI network "fakenet": plugin "fbad" failed to DEL: stuck$/);
    assert.deepEqual(calls(), ['fbad DEL', 'fa DEL']);
  });

  it('names the dirs searched for a missing plugin, and quotes stderr of a crash', async () => {
    const net = new CniNetwork(list('fakenet', [{ type: 'nope' }]), [bin, '/nonexistent']);
    await rejectsWith(net.add(rt), new RegExp(`plugin "nope" failed to ADD: no executable "nope" in the CNI plugin dirs ${bin}, /nonexistent`));
    fakePlugin('crash', { body: 'echo "panic: runtime error" >&2; exit 2' });
    await rejectsWith(
      new CniNetwork(list('fakenet', [{ type: 'crash' }]), [bin]).add(rt),
      /plugin "crash" failed to ADD: panic: runtime error \(exit code 2\)/,
    );
    fakePlugin('garbage', { body: 'echo not-json' });
    await rejectsWith(new CniNetwork(list('fakenet', [{ type: 'garbage' }]), [bin]).add(rt), /plugin "garbage" failed to ADD: the result is not JSON/);
    await rejectsWith(new CniNetwork(list('fakenet', [{ type: '../bin/sh' }]), [bin]).add(rt), /not a plain executable name/);
  });

  it('kills a plugin that outlives the timeout, with its children, in bounded time', async () => {
    fakePlugin('sleeper', { body: `echo $$ > ${dir}/pids; sleep 30 & echo $! >> ${dir}/pids; wait` });
    const net = new CniNetwork(list('fakenet', [{ type: 'sleeper' }]), [bin], { timeoutMs: 500 });
    const t0 = Date.now();
    const err = await rejectsWith(net.del(rt, undefined), /plugin "sleeper" failed to DEL: timed out after 500 ms; the plugin was killed/);
    const elapsed = Date.now() - t0;
    assert.ok(isKind(err, 'DeadlineExceeded'));
    assert.ok(elapsed >= 450 && elapsed < 2500, `took ${elapsed} ms`);
    const pids = readFileSync(join(dir, 'pids'), 'utf8').trim().split('\n').map(Number);
    assert.equal(pids.length, 2);
    for (let i = 0; i < 20 && pids.some(alive); i++) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(pids.filter(alive), [], 'the plugin or its child is still running');
  });

  it('kills the plugin on abort, and a failed ADD still rolls back although the signal is aborted', async () => {
    fakePlugin('sleeper', { body: `[ "$CNI_COMMAND" = ADD ] && exec sleep 30; exit 0` });
    const net = new CniNetwork(list('fakenet', [{ type: 'sleeper' }]), [bin]);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 200);
    const t0 = Date.now();
    const err = await rejectsWith(net.add(rt, ac.signal), /plugin "sleeper" failed to ADD: cancelled; the plugin was killed$/);
    assert.ok(isKind(err, 'Cancelled'));
    assert.ok(Date.now() - t0 < 2000);
    assert.deepEqual(calls(), ['sleeper ADD', 'sleeper DEL']);
    await rejectsWith(net.del(rt, undefined, ac.signal), /cancelled before the plugin started/);
  });

  it('does not wait on what a finished plugin left holding its stdout', async () => {
    fakePlugin('leaver', { body: `sleep 30 & echo $! > ${dir}/pids; [ "$CNI_COMMAND" = ADD ] && printf '%s' '${JSON.stringify(resultA)}'; exit 0` });
    const t0 = Date.now();
    assert.deepEqual(await new CniNetwork(list('fakenet', [{ type: 'leaver' }]), [bin]).add(rt), resultA);
    assert.ok(Date.now() - t0 < 2500);
    const pid = Number(readFileSync(join(dir, 'pids'), 'utf8'));
    for (let i = 0; i < 20 && alive(pid); i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(alive(pid), false);
  });

  it('caps what a plugin prints', async () => {
    fakePlugin('chatty', { body: 'yes xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' });
    const net = new CniNetwork(list('fakenet', [{ type: 'chatty' }]), [bin]);
    await rejectsWith(net.del(rt, undefined), /plugin "chatty" failed to DEL: printed more than 1048576 bytes on stdout/);
  });
});

describe('CniNetwork with the real plugins (root)', function () {
  this.timeout(60_000);
  const hex = (n: number): string => randomBytes(n).toString('hex');
  let dir: string;
  let ns: string;
  let nsPath: string;
  let bridge: string;
  let subnetPrefix: string;
  let containerId: string;
  let netName: string;
  let server: ChildProcess | undefined;

  before(function () {
    if (process.getuid?.() !== 0 || !existsSync(join(SYSTEM_BIN, 'bridge'))) {
      console.log('      (skipped: needs root and the CNI plugins in /usr/lib/cni)');
      this.skip();
    }
  });

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'berth-cni-'));
    const id = hex(3);
    ns = `berth-cnitest-${id}`;
    nsPath = `/run/netns/${ns}`;
    bridge = `bt${id}`;
    netName = `berthtest-${id}`;
    containerId = `cnitest${hex(8)}`;
    // A 10.199.X.0/24 nobody on this host uses yet.
    const used = run('ip', ['-4', 'addr']) + run('ip', ['-4', 'route']);
    let third = randomBytes(1)[0]!;
    while (used.includes(`10.199.${third}.`)) third = randomBytes(1)[0]!;
    subnetPrefix = `10.199.${third}`;
    run('ip', ['netns', 'add', ns]);
  });

  afterEach(() => {
    if (server?.pid !== undefined && server.exitCode === null && server.signalCode === null) server.kill('SIGKILL');
    server = undefined;
    purgeIptables(containerId);
    tryRun('ip', ['netns', 'del', ns]);
    tryRun('ip', ['link', 'del', bridge]);
    rmSync(dir, { recursive: true, force: true });
  });

  function conflist(second: CniPluginConf = { type: 'portmap', capabilities: { portMappings: true } }): CniNetworkList {
    return list(netName, [
      {
        type: 'bridge',
        bridge,
        isGateway: true,
        ipMasq: true,
        ipam: {
          type: 'host-local',
          ranges: [[{ subnet: `${subnetPrefix}.0/24` }]],
          routes: [{ dst: '0.0.0.0/0' }],
          dataDir: join(dir, 'ipam'),
        },
      },
      second,
    ]);
  }
  const allocations = (): string[] => {
    const d = join(dir, 'ipam', netName);
    return existsSync(d) ? readdirSync(d).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)) : [];
  };
  const iptablesRulesOf = (id: string): number =>
    run('iptables-save', [])
      .split('\n')
      .filter((l) => l.includes(id)).length;
  const runtime = (hostPort: number): CniRuntimeConf => ({
    containerId,
    netns: nsPath,
    ifName: 'eth0',
    args: [
      ['K8S_POD_NAMESPACE', 'default'],
      ['K8S_POD_NAME', 'cnitest'],
      ['K8S_POD_INFRA_CONTAINER_ID', containerId],
      ['K8S_POD_UID', '00000000-0000-0000-0000-000000000001'],
    ],
    capabilityArgs: { portMappings: [{ hostPort, containerPort: 8080, protocol: 'tcp' }] },
  });

  /** A TCP server inside the netns answering "hi" to every connection. */
  async function startServer(): Promise<void> {
    const script = "require('net').createServer((s) => s.end('hi\\n')).listen(8080, '0.0.0.0', () => console.log('ready'))";
    const proc = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    server = proc;
    await new Promise<void>((resolve, reject) => {
      proc.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
      proc.once('exit', (code) => reject(new Error(`server exited with ${code}`)));
    });
  }

  function fetchHi(host: string, port: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const s = connect({ host, port, timeout: 5000 });
      let data = '';
      s.on('data', (d: Buffer) => (data += d.toString()));
      s.on('end', () => resolve(data));
      s.on('timeout', () => s.destroy(new Error(`timed out connecting to ${host}:${port}`)));
      s.on('error', reject);
    });
  }

  it('ADD → CHECK → traffic via the pod IP and a localhost port mapping → DEL, DEL again', async () => {
    const hostPort = 30000 + Math.floor(Math.random() * 10000);
    const net = new CniNetwork(conflist(), [SYSTEM_BIN]);
    const rt = runtime(hostPort);

    await loopbackUp(nsPath, [SYSTEM_BIN]);
    let t0 = performance.now();
    const result: CniResult = await net.add(rt);
    const addMs = performance.now() - t0;

    const ips = podIps(result);
    assert.equal(ips.length, 1);
    const podIp = ips[0]!;
    assert.ok(podIp.startsWith(`${subnetPrefix}.`), `pod IP ${podIp} not in ${subnetPrefix}.0/24`);
    assert.match(run('ip', ['-n', ns, 'addr', 'show', 'eth0']), new RegExp(`inet ${podIp.replaceAll('.', '\\.')}/24`));
    assert.deepEqual(allocations(), [podIp]);
    // The final result is portmap's, which it can only produce from bridge's prevResult…
    assert.ok(result.interfaces?.some((i) => i.name === bridge));
    assert.ok(result.interfaces?.some((i) => i.name === 'eth0' && i.sandbox === nsPath));
    // …and its DNAT rule points at the pod IP it read there.
    assert.match(run('iptables-save', ['-t', 'nat']), new RegExp(`--to-destination ${podIp.replaceAll('.', '\\.')}:8080`));

    // CHECK: bridge and host-local verify the veth, address and allocation. portmap
    // 1.1.1 fails CHECK for any IPv4-only pod (it demands an ip6tables chain it never
    // created: containernetworking/plugins#819, fixed upstream later), so the whole
    // chain may fail with exactly that and nothing else.
    await new CniNetwork({ ...net.list, plugins: net.list.plugins.slice(0, 1) }, [SYSTEM_BIN]).check(rt, result);
    try {
      await net.check(rt, result);
    } catch (err) {
      assert.match((err as Error).message, /plugin "portmap" failed to CHECK: could not check ipv6 dnat: chain CNI-DN-\w+ not found/);
      console.log('      (portmap 1.1.1 CHECK fails for IPv4-only pods: containernetworking/plugins#819)');
    }

    await startServer();
    assert.equal(await fetchHi(podIp, 8080), 'hi\n');
    assert.equal(await fetchHi('127.0.0.1', hostPort), 'hi\n');
    // What makes 127.0.0.1 work: portmap sets route_localnet on the bridge (and masquerades the source).
    assert.equal(readFileSync(`/proc/sys/net/ipv4/conf/${bridge}/route_localnet`, 'utf8').trim(), '1');

    const vethsBefore = run('ip', ['link', 'show', 'master', bridge]);
    assert.match(vethsBefore, /veth/);
    t0 = performance.now();
    await net.del(rt, result);
    const delMs = performance.now() - t0;
    console.log(`      (bridge+portmap ADD ${addMs.toFixed(0)} ms, DEL ${delMs.toFixed(0)} ms)`);

    assert.deepEqual(allocations(), []);
    assert.doesNotMatch(run('ip', ['link', 'show', 'master', bridge]), /veth/);
    assert.doesNotMatch(run('ip', ['-n', ns, 'link']), /eth0/);
    assert.equal(iptablesRulesOf(containerId), 0);

    await net.del(rt, result);
    await net.del(rt, undefined);
  });

  it('DEL after the netns was deleted releases the IP and the port mapping', async () => {
    const net = new CniNetwork(conflist(), [SYSTEM_BIN]);
    const rt = runtime(30000 + Math.floor(Math.random() * 10000));
    const result = await net.add(rt);
    assert.equal(allocations().length, 1);
    run('ip', ['netns', 'del', ns]);
    await net.del(rt, result);
    assert.deepEqual(allocations(), []);
    assert.doesNotMatch(run('ip', ['link', 'show', 'master', bridge]), /veth/);
    // portmap's rules are gone. bridge 1.1.1 cannot find the pod's addresses without the
    // netns, so its ipMasq rules stay (afterEach purges them): berth must DEL before it
    // deletes the netns.
    const left = run('iptables-save', [])
      .split('\n')
      .filter((l) => l.includes(containerId));
    assert.ok(
      left.every((l) => /^-A (POSTROUTING|CNI-[0-9a-f]+) /.test(l)),
      JSON.stringify(left),
    );
  });

  it('a failed ADD names the plugin and rolls back the allocation of the first', async () => {
    const net = new CniNetwork(conflist({ type: 'berth-no-such-plugin' }), [SYSTEM_BIN]);
    const rt = runtime(30000 + Math.floor(Math.random() * 10000));
    const err = await rejectsWith(
      net.add(rt),
      new RegExp(
        `^CNI network "${netName}": plugin "berth-no-such-plugin" failed to ADD: no executable "berth-no-such-plugin" in the CNI plugin dirs ${SYSTEM_BIN}`,
      ),
    );
    assert.ok(isKind(err, 'Unavailable'));
    assert.deepEqual(allocations(), []);
    assert.doesNotMatch(run('ip', ['-n', ns, 'link']), /eth0/);
    assert.equal(iptablesRulesOf(containerId), 0);
  });

  it('loopbackUp brings lo up in the netns', async () => {
    assert.doesNotMatch(run('ip', ['-n', ns, 'link', 'show', 'lo']), /[<,]UP[,>]/);
    await loopbackUp(nsPath, ['/nonexistent', SYSTEM_BIN]);
    assert.match(run('ip', ['-n', ns, 'link', 'show', 'lo']), /[<,]UP[,>]/);
  });
});

/** Removes whatever nat/filter rules mention `id`, and the CNI chains they jump to. */
function purgeIptables(id: string): void {
  for (const table of ['nat', 'filter']) {
    let text: string;
    try {
      text = run('iptables', ['-t', table, '-S']);
    } catch {
      continue;
    }
    const chains = new Set<string>();
    const lines = text.split('\n').filter((l) => l.startsWith('-A ') && l.includes(id));
    for (const l of lines) {
      const target = / -j (CNI-[A-Za-z0-9-]+)/.exec(l)?.[1];
      if (target && !target.startsWith('CNI-HOSTPORT')) chains.add(target);
    }
    // Delete by position, last first, chain by chain.
    const byChain = new Map<string, number[]>();
    let current = '';
    let pos = 0;
    for (const l of text.split('\n')) {
      if (!l.startsWith('-A ')) continue;
      const chain = l.split(' ')[1]!;
      pos = chain === current ? pos + 1 : 1;
      current = chain;
      if (l.includes(id)) byChain.set(chain, [...(byChain.get(chain) ?? []), pos]);
    }
    for (const [chain, positions] of byChain) for (const p of positions.reverse()) tryRun('iptables', ['-t', table, '-D', chain, String(p)]);
    for (const chain of chains) {
      tryRun('iptables', ['-t', table, '-F', chain]);
      tryRun('iptables', ['-t', table, '-X', chain]);
    }
  }
}
