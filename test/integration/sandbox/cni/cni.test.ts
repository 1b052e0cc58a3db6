/**
 * berth's CNI client against the real plugins of /usr/lib/cni (bridge + host-local +
 * portmap, loopback) in a network namespace, bridge and subnet of the test's own. Traffic
 * goes only to 127.0.0.1 and to the pod IP inside that namespace. Runs as root.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKind } from '../../../../src/common/errors.js';
import { CniNetwork, loopbackUp, podIps, type CniResult, type CniRuntimeConf } from '../../../../src/sandbox/cni/cni.js';
import type { CniNetworkList, CniPluginConf } from '../../../../src/sandbox/cni/conf-dir.js';

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
