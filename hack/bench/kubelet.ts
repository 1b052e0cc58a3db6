/**
 * What the lifecycle and churn suites share: kubelet-like pod and container configs (the
 * fields kubelet fills for an ordinary Deployment pod: namespace options network POD,
 * pid CONTAINER, ipc POD, a DNS config, a cgroup parent, two containers with the mounts
 * kubelet adds, resources and log paths under the pod's log dir), a per-RPC timer, and
 * the sampling of a runtime's processes (daemon, shims) for RSS and CPU seconds.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pushFixtures } from '../test-images/oci.js';
import type { CriClients } from '../../test/helpers/cri-client.js';
import { processes } from './containerd.js';
import { onBerthd, onContainerd } from './runtimes.js';
import { ms, out, type SuiteContext, type SuiteNet } from './suite.js';

/** kubelet's namespace options for a pod without shareProcessNamespace. */
export const KUBELET_NAMESPACES = { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } as const;

/** kubelet's default masked and read-only paths (what it sends for a non-privileged container). */
const MASKED_PATHS = [
  '/proc/asound',
  '/proc/acpi',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
];
const READONLY_PATHS = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

/** The per-run places kubelet would own: the pods' log root, its kubelet-managed files, a cgroup root. */
export interface KubeletDirs {
  /** Parent of each pod's log dir (kubelet's /var/log/pods). */
  logRoot: string;
  /** Parent of each pod's kubelet files (etc-hosts, termination logs, token volume). */
  podsRoot: string;
  /** cgroup parent of every pod, relative to each hierarchy's root (kubelet's /kubepods/burstable). */
  cgroupRoot: string;
}

export interface KubeletPod {
  name: string;
  uid: string;
  config: Record<string, unknown>;
  /** The two containers' configs, in kubelet's order. */
  containers: Array<Record<string, unknown>>;
}

export interface PodOptions {
  /** The containers' command (`sh -c SCRIPT`); default: sleep until SIGTERM. */
  scripts?: [string, string];
}

/** A container that runs until SIGTERM (and then exits 0 at once, as a well-behaved server does). */
export const SERVE_UNTIL_TERM = 'trap "exit 0" TERM; sleep 100000 & wait';

/**
 * A kubelet-like pod named `name` with two containers of `image`: the pod's log dir and
 * the kubelet-managed files (etc-hosts, termination logs, a service-account token dir)
 * are created as kubelet does before it calls the runtime.
 */
export function kubeletPod(dirs: KubeletDirs, name: string, image: string, opts: PodOptions = {}): KubeletPod {
  const namespace = 'bench';
  const uid = randomUUID();
  const logDir = join(dirs.logRoot, `${namespace}_${name}_${uid}`);
  const podDir = join(dirs.podsRoot, uid);
  mkdirSync(logDir, { recursive: true });
  mkdirSync(join(podDir, 'token'), { recursive: true });
  writeFileSync(join(podDir, 'etc-hosts'), `127.0.0.1\tlocalhost\n::1\tlocalhost\n10.0.0.1\t${name}\n`);
  writeFileSync(join(podDir, 'token', 'token'), 'bench-token\n');
  const podLabels = { 'io.kubernetes.pod.name': name, 'io.kubernetes.pod.namespace': namespace, 'io.kubernetes.pod.uid': uid, app: 'berth-bench' };
  const config = {
    metadata: { name, namespace, uid, attempt: 0 },
    hostname: name,
    log_directory: logDir,
    dns_config: {
      servers: ['10.96.0.10'],
      searches: [`${namespace}.svc.cluster.local`, 'svc.cluster.local', 'cluster.local'],
      options: ['ndots:5'],
    },
    labels: podLabels,
    annotations: { 'kubernetes.io/config.source': 'api', 'kubernetes.io/config.seen': new Date().toISOString() },
    linux: {
      cgroup_parent: `${dirs.cgroupRoot}/pod${uid}`,
      security_context: { namespace_options: KUBELET_NAMESPACES },
    },
  };
  const scripts = opts.scripts ?? [SERVE_UNTIL_TERM, SERVE_UNTIL_TERM];
  const containers = (['app', 'sidecar'] as const).map((cname, i) => {
    mkdirSync(join(logDir, cname), { recursive: true });
    const termLog = join(podDir, `termination-${cname}`);
    writeFileSync(termLog, '');
    return {
      metadata: { name: cname, attempt: 0 },
      image: { image },
      command: ['sh', '-c', scripts[i]!],
      // The value is `bytes` in berth's proto (string in the upstream one: the same on the wire).
      envs: [
        ['KUBERNETES_SERVICE_HOST', '10.96.0.1'],
        ['KUBERNETES_SERVICE_PORT', '443'],
        ['POD_NAME', name],
      ].map(([key, value]) => ({ key, value: Buffer.from(value!) })),
      mounts: [
        { container_path: '/etc/hosts', host_path: join(podDir, 'etc-hosts') },
        { container_path: '/dev/termination-log', host_path: termLog },
        { container_path: '/var/run/secrets/kubernetes.io/serviceaccount', host_path: join(podDir, 'token'), readonly: true },
      ],
      labels: { ...podLabels, 'io.kubernetes.container.name': cname },
      annotations: {
        'io.kubernetes.container.hash': '0badc0de',
        'io.kubernetes.container.restartCount': '0',
        'io.kubernetes.container.terminationMessagePath': '/dev/termination-log',
        'io.kubernetes.container.terminationMessagePolicy': 'File',
        'io.kubernetes.pod.terminationGracePeriod': '30',
      },
      log_path: `${cname}/0.log`,
      linux: {
        // Burstable: requests 100m / 32 MiB, limits 200m / 64 MiB.
        resources: { cpu_period: 100000, cpu_quota: 20000, cpu_shares: 102, memory_limit_in_bytes: 64 << 20, oom_score_adj: 968 },
        security_context: { namespace_options: KUBELET_NAMESPACES, masked_paths: MASKED_PATHS, readonly_paths: READONLY_PATHS },
      },
    };
  });
  return { name, uid, config, containers };
}

/** Removes the cgroup dirs the runtimes left under `root` in every hierarchy (pod cgroups: kubelet's job). */
export function removeCgroupRoot(root: string): void {
  const base = '/sys/fs/cgroup';
  const hierarchies = readdirSync(base).map((h) => join(base, h));
  const rmTree = (dir: string): void => {
    if (!existsSync(dir)) return;
    for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) rmTree(join(dir, e.name));
    try {
      rmdirSync(dir);
    } catch {
      // still in use (a process left behind): the runtime's clean-up check names it
    }
  };
  for (const h of hierarchies) rmTree(join(h, root));
}

// ---------------------------------------------------------------------------------------
// Timing

/** Latencies by RPC name, in ms. */
export class RpcTimes {
  readonly by = new Map<string, number[]>();

  add(name: string, v: number): void {
    let xs = this.by.get(name);
    if (!xs) this.by.set(name, (xs = []));
    xs.push(v);
  }

  /** Runs `fn`, recording how long it took under `name`. */
  async time<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const t0 = process.hrtime.bigint();
    const r = await fn();
    this.add(name, ms(t0));
    return r;
  }

  get(name: string): number[] {
    return this.by.get(name) ?? [];
  }
}

// ---------------------------------------------------------------------------------------
// Process sampling

const CLK_TCK = ((): number => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

interface ProcStat {
  /** utime + stime, seconds. */
  self: number;
  /** cutime + cstime: children it reaped, seconds. */
  children: number;
  rssKiB: number;
}

function procStat(pid: number): ProcStat | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // Fields after the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14) ... rss(21, pages).
    const self = (Number(f[11]) + Number(f[12])) / CLK_TCK;
    const children = (Number(f[13]) + Number(f[14])) / CLK_TCK;
    const rssKiB = Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
    return { self, children, rssKiB };
  } catch {
    return undefined;
  }
}

/** One sample of a runtime's processes. */
export interface Sample {
  /** Seconds since sampling began. */
  t: number;
  daemonRssKiB: number;
  shimCount: number;
  shimRssKiB: number;
  /** CPU seconds so far: the daemon, the children it reaped (CNI plugins, runc, …), its shims (with what they reaped). */
  cpu: { daemon: number; daemonChildren: number; shims: number };
}

/**
 * Samples a daemon and its shims. Shims leave as pods go and their CPU time is then lost
 * (they are children of init), so each shim's last seen CPU time is kept: the total is
 * short by at most one sampling interval of each exited shim's work.
 */
export class ProcSampler {
  readonly samples: Sample[] = [];
  private readonly shimCpu = new Map<number, number>();
  /** What a shim already running at reset() had spent then. */
  private readonly shimBase = new Map<number, number>();
  private readonly t0 = process.hrtime.bigint();
  private base: { daemon: number; daemonChildren: number } | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly daemonPid: number,
    /** Whether a command line is one of this runtime's shims. */
    private readonly isShim: (cmd: string) => boolean,
  ) {}

  /** Zeroes the CPU counts here (what start-up and warm-up spent is not counted). */
  reset(): void {
    const d = procStat(this.daemonPid);
    this.base = { daemon: d?.self ?? 0, daemonChildren: d?.children ?? 0 };
    this.shimCpu.clear();
    this.shimBase.clear();
    for (const p of this.shims()) {
      const s = procStat(p);
      if (s) this.shimBase.set(p, s.self + s.children);
    }
  }

  private shims(): number[] {
    return processes()
      .filter((p) => this.isShim(p.cmd))
      .map((p) => p.pid);
  }

  sample(): Sample {
    const d = procStat(this.daemonPid);
    const base = this.base ?? { daemon: 0, daemonChildren: 0 };
    let shimRss = 0;
    const pids = this.shims();
    for (const p of pids) {
      const s = procStat(p);
      if (!s) continue;
      shimRss += s.rssKiB;
      this.shimCpu.set(p, s.self + s.children - (this.shimBase.get(p) ?? 0));
    }
    let shims = 0;
    for (const v of this.shimCpu.values()) shims += v;
    const s: Sample = {
      t: ms(this.t0) / 1000,
      daemonRssKiB: d?.rssKiB ?? 0,
      shimCount: pids.length,
      shimRssKiB: shimRss,
      cpu: { daemon: (d?.self ?? 0) - base.daemon, daemonChildren: (d?.children ?? 0) - base.daemonChildren, shims },
    };
    this.samples.push(s);
    return s;
  }

  start(intervalMs: number): void {
    this.timer = setInterval(() => this.sample(), intervalMs);
  }

  stop(): Sample {
    clearInterval(this.timer);
    return this.sample();
  }
}

// ---------------------------------------------------------------------------------------
// A runtime under test

export type RuntimeName = 'berth' | 'containerd';

export interface RuntimeUnderTest {
  name: RuntimeName;
  clients: CriClients;
  /** The busybox test image, pulled. */
  image: string;
  dirs: KubeletDirs;
  /** A sampler of the daemon and its shims (conmon for berth, containerd-shim-runc-v2 for containerd). */
  sampler(): ProcSampler;
  /** Its version, for the printout. */
  version: string;
}

/**
 * Starts `name` in temp dirs with a bridge network of its own on `subnet`, pulls the
 * busybox test image (and for containerd its pause image), runs `fn`, and then stops the
 * runtime, checking nothing is left behind: pods, IPs, processes, mounts, cgroups.
 */
export async function withRuntime<T>(ctx: SuiteContext, name: RuntimeName, subnet: string, fn: (rt: RuntimeUnderTest) => Promise<T>): Promise<T> {
  const image = (await pushFixtures(ctx.registryHost)).busybox.ref;
  const tmp = mkdtempSync(join(tmpdir(), `berth-bench-kubelet-${name}-`));
  const dirs: KubeletDirs = {
    logRoot: join(tmp, 'logs'),
    podsRoot: join(tmp, 'pods'),
    cgroupRoot: `/berth-bench-${name}-${process.pid}`,
  };
  const run = async (clients: CriClients, net: SuiteNet, sampler: () => ProcSampler): Promise<T> => {
    await clients.image.PullImage({ image: { image } });
    const v = await clients.runtime.Version({});
    const res = await fn({ name, clients, image, dirs, sampler, version: `${v.runtime_name} ${v.runtime_version}` });
    const held = net.allocated();
    if (held.length > 0) out(`${name}: WARNING: host-local still held ${held.join(', ')} at the end`);
    return res;
  };
  try {
    if (name === 'berth') {
      return await onBerthd(ctx, '', subnet, (b, net) => {
        const isConmon = (cmd: string): boolean => cmd.split(' ')[0]!.endsWith('conmon') && cmd.includes(b.dir);
        return run(b.clients, net, () => new ProcSampler(b.proc.pid!, isConmon));
      });
    }
    return await onContainerd(ctx, '', subnet, (ctr, net) => {
      const isShim = (cmd: string): boolean => cmd.split(' ')[0]!.endsWith('containerd-shim-runc-v2') && cmd.includes(ctr.socket);
      return run(ctr.clients, net, () => new ProcSampler(ctr.pid, isShim));
    });
  } finally {
    removeCgroupRoot(dirs.cgroupRoot);
    rmSync(tmp, { recursive: true, force: true });
  }
}
