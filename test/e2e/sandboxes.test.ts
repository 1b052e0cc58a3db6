/**
 * Pod sandboxes end to end, as root, with the real CNI plugins: each test gets its own
 * bridge, subnet and host-local data dir, so IP allocations and leftovers are visible.
 */
import { status } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { Berthd, until } from '../helpers/berthd.js';
import { runCleanup, type CleanupStep } from '../helpers/cleanup.js';
import { grpcError } from '../helpers/cri-client.js';
import { freePort } from '../helpers/registry.js';

interface Net {
  bridge: string;
  subnet: string;
  prefix: string;
  dataDir: string;
}

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

describe('pod sandboxes', function () {
  this.timeout(60_000);
  const cleanup: CleanupStep[] = [];
  afterEach(() => runCleanup(cleanup));

  /** Writes a bridge network for this berthd into its CNI conf dir. */
  function network(b: Berthd, extraPlugins: unknown[] = [], opts: { ipv6?: boolean } = {}): Net {
    const r = randomBytes(2);
    const net: Net = {
      bridge: `bt${r.toString('hex')}`,
      subnet: `10.${200 + (r[0]! % 50)}.${r[1]}.0/24`,
      prefix: `10.${200 + (r[0]! % 50)}.${r[1]}.`,
      dataDir: join(b.dir, 'ipam'),
    };
    const conf = {
      cniVersion: '1.0.0',
      name: `berth-test-${r.toString('hex')}`,
      plugins: [
        {
          type: 'bridge',
          bridge: net.bridge,
          isGateway: true,
          ipMasq: false,
          hairpinMode: true,
          ipam: {
            type: 'host-local',
            dataDir: net.dataDir,
            ranges: [[{ subnet: net.subnet }], ...(opts.ipv6 ? [[{ subnet: `fd00:${r.toString('hex')}::/64` }]] : [])],
            routes: [{ dst: '0.0.0.0/0' }],
          },
        },
        { type: 'portmap', capabilities: { portMappings: true } },
        ...extraPlugins,
      ],
    };
    writeFileSync(join(b.dir, 'cni', '10-test.conflist'), JSON.stringify(conf));
    cleanup.push(() => {
      try {
        sh('ip', ['link', 'del', net.bridge]);
      } catch {
        // not created, or already gone
      }
    });
    return net;
  }

  async function start(config = ''): Promise<Berthd> {
    const b = await Berthd.start({ config });
    cleanup.push(() => b.dispose());
    return b;
  }

  let n = 0;
  function podConfig(over: Record<string, unknown> = {}): Record<string, unknown> {
    n++;
    return {
      metadata: { name: `pod${n}`, namespace: 'test', uid: `uid-${n}-${randomBytes(3).toString('hex')}`, attempt: 0 },
      hostname: `pod${n}-host`,
      log_directory: '/tmp',
      labels: { app: 'berth-test', n: String(n) },
      annotations: { 'berth.test/a': 'b' },
      ...over,
    };
  }

  function allocated(net: Net): string[] {
    if (!existsSync(net.dataDir)) return [];
    const d = join(net.dataDir, readdirSync(net.dataDir).find((x) => x.startsWith('berth-test')) ?? '');
    return existsSync(d) ? readdirSync(d).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)) : [];
  }

  function mounts(dir: string): string[] {
    return readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[4] ?? '')
      .filter((m) => m.startsWith(dir));
  }

  it('runs a pod with its own network, reports it, and tears it down without leftovers', async () => {
    const b = await start();
    const net = network(b);
    const cfg = podConfig();
    const { pod_sandbox_id: id } = await b.runtime.RunPodSandbox({ config: cfg });
    assert.match(id, /^[a-f0-9]{64}$/);
    const st = (await b.runtime.PodSandboxStatus({ pod_sandbox_id: id, verbose: true })).status!;
    assert.equal(st.state, 'SANDBOX_READY');
    assert.deepEqual(st.metadata, cfg.metadata);
    assert.ok(st.network!.ip.startsWith(net.prefix), `pod IP ${st.network!.ip} in ${net.subnet}`);
    assert.deepEqual(st.labels, cfg.labels);
    assert.deepEqual(st.annotations, cfg.annotations);
    assert.equal(st.runtime_handler, 'runc');
    assert.ok(Number(BigInt(st.created_at) / 1_000_000n) <= Date.now());
    assert.deepEqual(allocated(net), [st.network!.ip]);
    const nsPin = join(b.state, 'ns', id, 'net');
    assert.ok(sh('nsenter', [`--net=${nsPin}`, 'ip', '-o', 'addr', 'show', 'eth0']).includes(st.network!.ip));
    assert.match(sh('nsenter', [`--net=${nsPin}`, 'ip', '-o', 'link', 'show', 'lo']), /UP|UNKNOWN/);

    // Listing and its filters.
    const other = (await b.runtime.RunPodSandbox({ config: podConfig() })).pod_sandbox_id;
    assert.equal((await b.runtime.ListPodSandbox({})).items.length, 2);
    assert.deepEqual(
      (await b.runtime.ListPodSandbox({ filter: { id: id.slice(0, 12) } })).items.map((p) => p.id),
      [id],
    );
    assert.deepEqual(
      (await b.runtime.ListPodSandbox({ filter: { label_selector: { n: String(n - 1) } } })).items.map((p) => p.id),
      [id],
    );
    await b.runtime.StopPodSandbox({ pod_sandbox_id: other });
    assert.deepEqual(
      (await b.runtime.ListPodSandbox({ filter: { state: { state: 'SANDBOX_READY' } } })).items.map((p) => p.id),
      [id],
    );
    assert.deepEqual(
      (await b.runtime.ListPodSandbox({ filter: { state: { state: 'SANDBOX_NOTREADY' } } })).items.map((p) => p.id),
      [other],
    );

    // Stop: network and namespaces released; idempotent.
    await b.runtime.StopPodSandbox({ pod_sandbox_id: id });
    await b.runtime.StopPodSandbox({ pod_sandbox_id: id });
    assert.equal((await b.runtime.PodSandboxStatus({ pod_sandbox_id: id })).status!.state, 'SANDBOX_NOTREADY');
    assert.deepEqual(allocated(net), []);
    assert.ok(!existsSync(nsPin));
    assert.equal(sh('ip', ['-o', 'link', 'show', 'master', net.bridge]).trim(), '', 'no veth left on the bridge');
    assert.ok(!sh('iptables-save', []).includes(id), 'no iptables rule names the pod');

    // Remove: everything goes; idempotent; unknown ids succeed.
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: id });
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: id });
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: other });
    await b.runtime.StopPodSandbox({ pod_sandbox_id: 'f'.repeat(64) });
    const nf = await grpcError(b.runtime.PodSandboxStatus({ pod_sandbox_id: id }));
    assert.equal(nf.code, status.NOT_FOUND);
    assert.deepEqual((await b.runtime.ListPodSandbox({})).items, []);
    assert.deepEqual(readdirSync(join(b.root, 'sandboxes')), []);
    assert.deepEqual(readdirSync(join(b.state, 'ns')), []);
    assert.deepEqual(mounts(b.dir), []);
  });

  it('writes hostname, resolv.conf and hosts, and sets the hostname in the pod', async () => {
    const b = await start();
    network(b);
    const dns = { servers: ['10.96.0.10', '1.1.1.1'], searches: ['test.svc.cluster.local', 'svc.cluster.local'], options: ['ndots:5'] };
    const { pod_sandbox_id: id } = await b.runtime.RunPodSandbox({ config: podConfig({ hostname: 'web-0', dns_config: dns }) });
    const ip = (await b.runtime.PodSandboxStatus({ pod_sandbox_id: id })).status!.network!.ip;
    const dir = join(b.root, 'sandboxes', id);
    assert.equal(readFileSync(join(dir, 'hostname'), 'utf8').trim(), 'web-0');
    const resolv = readFileSync(join(dir, 'resolv.conf'), 'utf8');
    assert.match(resolv, /^nameserver 10\.96\.0\.10$/m);
    assert.match(resolv, /^nameserver 1\.1\.1\.1$/m);
    assert.match(resolv, /^search test\.svc\.cluster\.local svc\.cluster\.local$/m);
    assert.match(resolv, /^options ndots:5$/m);
    const hosts = readFileSync(join(dir, 'hosts'), 'utf8');
    assert.match(hosts, /^127\.0\.0\.1\s+localhost$/m);
    assert.match(hosts, new RegExp(`^${ip.replace(/\./g, '\\.')}\\s+web-0$`, 'm'));
    assert.equal(sh('nsenter', [`--uts=${join(b.state, 'ns', id, 'uts')}`, 'hostname']).trim(), 'web-0');
    assert.ok(mounts(join(dir, 'shm')).length === 1, '/dev/shm is a tmpfs of its own');
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: id });
  });

  it('pods on the bridge reach each other, and a port mapping is reachable on 127.0.0.1', async () => {
    const b = await start();
    network(b);
    const hostPort = await freePort();
    const a = (await b.runtime.RunPodSandbox({ config: podConfig({ port_mappings: [{ protocol: 'TCP', container_port: 8080, host_port: hostPort }] }) }))
      .pod_sandbox_id;
    const c = (await b.runtime.RunPodSandbox({ config: podConfig() })).pod_sandbox_id;
    const ipA = (await b.runtime.PodSandboxStatus({ pod_sandbox_id: a })).status!.network!.ip;
    const pinA = join(b.state, 'ns', a, 'net');
    const pinC = join(b.state, 'ns', c, 'net');
    sh('nsenter', [`--net=${pinC}`, '/bin/busybox', 'ping', '-c', '1', '-W', '3', ipA]);
    // A server inside pod A, reached through the host port on loopback.
    const server = spawn('nsenter', [`--net=${pinA}`, '/bin/busybox', 'nc', '-l', '-p', '8080', '-e', '/bin/busybox', 'echo', 'hello-from-pod'], {
      stdio: 'ignore',
    });
    cleanup.push(() => void server.kill('SIGKILL'));
    // Listening once port 8080 (0x1F90) shows in state LISTEN (0A) in the pod's netns (IPv4 or IPv6 socket).
    const listening = (): boolean => ['tcp', 'tcp6'].some((f) => /:1F90 0+:0000 0A /.test(readFileSync(`/proc/${server.pid}/net/${f}`, 'utf8')));
    await until(async () => (listening() ? true : undefined));
    const reply = await new Promise<string>((resolve, reject) => {
      const s = connect(hostPort, '127.0.0.1');
      let data = '';
      s.on('data', (d) => (data += d.toString()));
      s.on('end', () => resolve(data));
      s.on('error', reject);
      s.setTimeout(5000, () => reject(new Error('timed out')));
    });
    assert.equal(reply.trim(), 'hello-from-pod');
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: a });
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: c });
    assert.ok(!sh('iptables-save', []).includes(a), 'the port mapping rules are gone');
  });

  it('host network pods get no network namespace and no CNI address', async () => {
    const b = await start();
    const net = network(b);
    const cfg = podConfig({ linux: { security_context: { namespace_options: { network: 'NODE', pid: 'POD', ipc: 'POD' } } } });
    const { pod_sandbox_id: id } = await b.runtime.RunPodSandbox({ config: cfg });
    const st = (await b.runtime.PodSandboxStatus({ pod_sandbox_id: id })).status!;
    assert.equal(st.state, 'SANDBOX_READY');
    assert.equal(st.network!.ip, '');
    assert.equal(st.linux!.namespaces!.options!.network, 'NODE');
    assert.ok(!existsSync(join(b.state, 'ns', id, 'net')));
    assert.deepEqual(allocated(net), []);
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: id });
  });

  it('UpdatePodSandboxResources records overhead and resources (verbose status, across a restart); NOT_FOUND for an unknown pod', async () => {
    const b = await Berthd.start();
    const cgroupParent = '/berth-test-kubepods/pod' + randomBytes(4).toString('hex');
    const cfg = podConfig({
      linux: {
        cgroup_parent: cgroupParent,
        overhead: { cpu_shares: 64 },
        // No infra process (pid CONTAINER): nothing of the pod makes a cgroup under cgroup_parent.
        security_context: { namespace_options: { network: 'NODE', pid: 'CONTAINER', ipc: 'POD' } },
      },
    });
    const { pod_sandbox_id: id } = await b.runtime.RunPodSandbox({ config: cfg });
    type Info = {
      overhead: { cpu_shares: number; memory_limit_in_bytes: number } | null;
      resources: { cpu_shares: number; memory_limit_in_bytes: number } | null;
    };
    const info = async (c: Berthd): Promise<Info> => JSON.parse((await c.runtime.PodSandboxStatus({ pod_sandbox_id: id, verbose: true })).info.info!) as Info;
    const created = await info(b);
    assert.equal(created.overhead?.cpu_shares, 64, 'the overhead of RunPodSandbox is recorded');
    assert.equal(created.resources, null);

    await b.runtime.UpdatePodSandboxResources({
      pod_sandbox_id: id.slice(0, 12),
      overhead: { cpu_shares: 128 },
      resources: { cpu_shares: 1024, memory_limit_in_bytes: 268435456 },
    });
    const updated = await info(b);
    assert.equal(updated.overhead?.cpu_shares, 128);
    assert.equal(updated.resources?.cpu_shares, 1024);
    assert.equal(updated.resources?.memory_limit_in_bytes, 268435456);
    // berth makes no pod cgroup of its own: kubelet owns cgroup_parent.
    for (const root of ['/sys/fs/cgroup/cpu', '/sys/fs/cgroup/memory', '/sys/fs/cgroup/unified', '/sys/fs/cgroup']) {
      assert.ok(!existsSync(join(root, cgroupParent)), `no cgroup written at ${join(root, cgroupParent)}`);
    }

    const nf = await grpcError(b.runtime.UpdatePodSandboxResources({ pod_sandbox_id: 'f'.repeat(64), resources: { cpu_shares: 2 } }));
    assert.equal(nf.code, status.NOT_FOUND);
    assert.match(nf.details, /pod sandbox/);

    await b.stop('SIGTERM');
    const again = await Berthd.start({ reuse: { dir: b.dir } });
    cleanup.push(() => again.dispose());
    assert.deepEqual(await info(again), updated, 'kept across a restart');
    await again.runtime.RemovePodSandbox({ pod_sandbox_id: id });
  });

  it('applies namespaced sysctls inside the pod only, and refuses the others', async () => {
    const b = await start();
    network(b);
    const hostValue = readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8').trim();
    const { pod_sandbox_id: id } = await b.runtime.RunPodSandbox({ config: podConfig({ linux: { sysctls: { 'net.ipv4.ip_unprivileged_port_start': '0' } } }) });
    assert.equal(sh('nsenter', [`--net=${join(b.state, 'ns', id, 'net')}`, 'cat', '/proc/sys/net/ipv4/ip_unprivileged_port_start']).trim(), '0');
    assert.equal(readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8').trim(), hostValue);
    const e = await grpcError(b.runtime.RunPodSandbox({ config: podConfig({ linux: { sysctls: { 'kernel.panic': '1' } } }) }));
    assert.equal(e.code, status.INVALID_ARGUMENT);
    assert.match(e.details, /kernel\.panic/);
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: id });
  });

  it('refuses bad input precisely', async () => {
    const b = await start();
    network(b);
    const cases: Array<[Record<string, unknown>, number, RegExp]> = [
      [{}, status.INVALID_ARGUMENT, /^config is required$/],
      [{ config: { hostname: 'x' } }, status.INVALID_ARGUMENT, /^config\.metadata is required$/],
      [{ config: { metadata: { name: 'a', namespace: 'b' } } }, status.INVALID_ARGUMENT, /^config\.metadata\.uid is required$/],
      [{ config: podConfig(), runtime_handler: 'kata' }, status.INVALID_ARGUMENT, /runtime_handler "kata" is not configured/],
      [{ config: podConfig({ hostname: 'Not_A_Hostname!' }) }, status.INVALID_ARGUMENT, /hostname/],
      [
        { config: podConfig({ port_mappings: [{ container_port: 70000, host_port: 1 }] }) },
        status.INVALID_ARGUMENT,
        /port_mappings\[0\]\.container_port 70000 is not a port number/,
      ],
      [
        { config: podConfig({ linux: { cgroup_parent: 'relative/path' } }) },
        status.INVALID_ARGUMENT,
        /cgroup_parent "relative\/path" is not an absolute cgroup path/,
      ],
    ];
    for (const [req, code, msg] of cases) {
      const e = await grpcError(b.runtime.RunPodSandbox(req as never));
      assert.equal(e.code, code, `${JSON.stringify(req).slice(0, 80)}: ${e.details}`);
      assert.match(e.details, msg);
    }
    const cfg = podConfig();
    const { pod_sandbox_id: id } = await b.runtime.RunPodSandbox({ config: cfg });
    const dup = await grpcError(b.runtime.RunPodSandbox({ config: cfg }));
    assert.equal(dup.code, status.ALREADY_EXISTS);
    assert.ok(dup.details.includes(id), 'names the existing pod');
    const missing = await grpcError(b.runtime.PodSandboxStatus({ pod_sandbox_id: 'a'.repeat(64) }));
    assert.equal(missing.code, status.NOT_FOUND);
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: id });
    assert.deepEqual(readdirSync(join(b.state, 'ns')), []);
  });

  it('a failing CNI plugin is named, and nothing of the pod remains', async () => {
    const b = await start();
    const net = network(b, [{ type: 'no-such-plugin' }]);
    const e = await grpcError(b.runtime.RunPodSandbox({ config: podConfig() }));
    assert.match(e.details, /no-such-plugin/);
    assert.deepEqual((await b.runtime.ListPodSandbox({})).items, []);
    assert.deepEqual(allocated(net), [], 'the IP was released');
    assert.deepEqual(readdirSync(join(b.state, 'ns')), []);
    assert.deepEqual(readdirSync(join(b.root, 'sandboxes')), []);
    assert.deepEqual(mounts(b.dir), []);
  });

  it('answers FAILED_PRECONDITION while no network config exists', async () => {
    const b = await start();
    const e = await grpcError(b.runtime.RunPodSandbox({ config: podConfig() }));
    assert.equal(e.code, status.FAILED_PRECONDITION);
    assert.match(e.details, /pod network is not ready: no network config found/);
    assert.deepEqual(readdirSync(join(b.state, 'ns')), []);
  });

  it('hands a pod whose creation outlived the caller’s deadline back to the retry, once', async () => {
    // A chained plugin that takes its time, as a slow IPAM would.
    const b = await Berthd.start({ config: '' });
    cleanup.push(() => b.dispose());
    const bin = join(b.dir, 'cnibin');
    mkdirSync(bin);
    writeFileSync(
      join(bin, 'slow'),
      `#!${process.execPath}\nlet s='';process.stdin.on('data',d=>s+=d).on('end',()=>{const c=JSON.parse(s);` +
        `if(process.env.CNI_COMMAND!=='ADD'){process.exit(0)}setTimeout(()=>{process.stdout.write(JSON.stringify(c.prevResult));},1500)});\n`,
    );
    chmodSync(join(bin, 'slow'), 0o755);
    await b.stop();
    const again = await Berthd.start({ reuse: { dir: b.dir }, config: `[cni]\nconf_dir = "${join(b.dir, 'cni')}"\nbin_dirs = ["${bin}", "/usr/lib/cni"]\n` });
    cleanup.push(() => again.dispose({ keepDir: true }));
    network(again, [{ type: 'slow' }]);
    const cfg = podConfig();
    const first = await grpcError(again.runtime.RunPodSandbox({ config: cfg }, { deadline: Date.now() + 400 }));
    assert.equal(first.code, status.DEADLINE_EXCEEDED);
    const { pod_sandbox_id: id } = await again.runtime.RunPodSandbox({ config: cfg });
    assert.equal((await again.runtime.PodSandboxStatus({ pod_sandbox_id: id })).status!.state, 'SANDBOX_READY');
    assert.equal((await again.runtime.ListPodSandbox({})).items.length, 1, 'one pod, not two');
    const third = await grpcError(again.runtime.RunPodSandbox({ config: cfg }));
    assert.equal(third.code, status.ALREADY_EXISTS);
    await again.runtime.RemovePodSandbox({ pod_sandbox_id: id });
  });

  it('reports IPv4 and IPv6 addresses of a dual-stack pod', async () => {
    const b = await start();
    network(b, [], { ipv6: true });
    const { pod_sandbox_id: id } = await b.runtime.RunPodSandbox({ config: podConfig() });
    const st = (await b.runtime.PodSandboxStatus({ pod_sandbox_id: id })).status!;
    assert.match(st.network!.ip, /^10\./, 'IPv4 first, as kubelet expects');
    assert.equal(st.network!.additional_ips.length, 1);
    assert.match(st.network!.additional_ips[0]!.ip, /^fd00:/);
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: id });
  });

  it('stops and removes a pod whose network namespace vanished, releasing its IP', async () => {
    const b = await start();
    const net = network(b);
    const { pod_sandbox_id: id } = await b.runtime.RunPodSandbox({ config: podConfig() });
    assert.equal(allocated(net).length, 1);
    const pin = join(b.state, 'ns', id, 'net');
    sh('umount', ['-l', pin]);
    sh('rm', ['-f', pin]);
    await b.runtime.StopPodSandbox({ pod_sandbox_id: id });
    assert.deepEqual(allocated(net), [], 'host-local released the IP by container id');
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: id });
    assert.deepEqual(readdirSync(join(b.state, 'ns')), []);
    assert.deepEqual(mounts(b.dir), []);
  });

  it('after a restart that lost the namespaces (as a reboot does), the pod is NOTREADY and its IP released', async () => {
    const b = await Berthd.start();
    const net = network(b);
    const { pod_sandbox_id: id } = await b.runtime.RunPodSandbox({ config: podConfig() });
    await b.stop('SIGKILL');
    for (const kind of ['net', 'ipc', 'uts']) sh('umount', ['-l', join(b.state, 'ns', id, kind)]);
    const again = await Berthd.start({ reuse: { dir: b.dir } });
    cleanup.push(() => again.dispose());
    assert.equal((await again.runtime.PodSandboxStatus({ pod_sandbox_id: id })).status!.state, 'SANDBOX_NOTREADY');
    assert.deepEqual(allocated(net), []);
    await again.runtime.RemovePodSandbox({ pod_sandbox_id: id });
    assert.deepEqual(readdirSync(join(again.state, 'ns')), []);
  });

  it('keeps pods, their namespaces and IPs across a berthd restart', async () => {
    const b = await Berthd.start();
    network(b);
    const { pod_sandbox_id: id } = await b.runtime.RunPodSandbox({ config: podConfig() });
    const ip = (await b.runtime.PodSandboxStatus({ pod_sandbox_id: id })).status!.network!.ip;
    assert.equal((await b.stop('SIGKILL')).signal, 'SIGKILL');
    const again = await Berthd.start({ reuse: { dir: b.dir } });
    cleanup.push(() => again.dispose());
    const st = (await again.runtime.PodSandboxStatus({ pod_sandbox_id: id })).status!;
    assert.equal(st.state, 'SANDBOX_READY');
    assert.equal(st.network!.ip, ip);
    assert.ok(sh('nsenter', [`--net=${join(again.state, 'ns', id, 'net')}`, 'ip', '-o', 'addr', 'show', 'eth0']).includes(ip));
    await again.runtime.RemovePodSandbox({ pod_sandbox_id: id });
  });
});
