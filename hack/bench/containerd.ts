/**
 * containerd 1.6 (Debian's package) started in temp dirs for comparison: its own root,
 * state and socket, the CRI plugin told to reach the local registry over plain HTTP.
 * Nothing of the host's containerd setup is used or changed.
 *
 * For pod sandboxes it can also be given a CNI conf dir and a sandbox (pause) image;
 * pods then run with the runc v2 shim (one `containerd-shim-runc-v2` and one pause
 * process per pod), the cgroupfs driver, and network namespaces pinned under its state
 * dir, so everything a pod leaves behind would show up under the temp dir.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_PATH, RegistryPusher, buildImage, buildLayer } from '../test-images/oci.js';
import { criClients, type CriClients } from '../../test/helpers/cri-client.js';

export interface ContainerdOptions {
  /** CNI conf dir for the CRI plugin (default: an empty dir of its own). */
  cniConfDir?: string;
  /** CNI plugin dir (default /usr/lib/cni, Debian's containernetworking-plugins). */
  cniBinDir?: string;
  /** `sandbox_image` of the CRI plugin, e.g. `127.0.0.1:5000/pause:3.9`. */
  sandboxImage?: string;
  /** containerd's --log-level (default warn). */
  logLevel?: string;
  /** Port of the CRI streaming server on 127.0.0.1 (default 0). The streaming suite passes a free port of its own. */
  streamServerPort?: number;
  /** `[metrics] address` ("127.0.0.1:port"): containerd's own Prometheus endpoint at /v1/metrics (default off). */
  metricsAddress?: string;
}

export interface Containerd {
  /** The temp dir holding root, state, socket and config. */
  dir: string;
  socket: string;
  clients: CriClients;
  pid: number;
  /** What containerd wrote to stderr so far. */
  logs(): string;
  /** The runc v2 shims serving this containerd (found by its socket on their command line). */
  shimPids(): number[];
  /** Stops containerd; fails when a process, mount or shim of it is left behind. */
  stop(): Promise<void>;
}

export function containerdAvailable(): boolean {
  return existsSync('/usr/bin/containerd');
}

export async function startContainerd(registryHost: string, opts: ContainerdOptions = {}): Promise<Containerd> {
  const dir = mkdtempSync(join(tmpdir(), 'berth-bench-containerd-'));
  const socket = join(dir, 'containerd.sock');
  const cniConfDir = opts.cniConfDir ?? join(dir, 'cni');
  mkdirSync(cniConfDir, { recursive: true });
  const config = `version = 2
root = "${dir}/root"
state = "${dir}/state"
[grpc]
  address = "${socket}"
${opts.metricsAddress ? `[metrics]\n  address = "${opts.metricsAddress}"\n` : ''}[plugins."io.containerd.internal.v1.opt"]
  path = "${dir}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "${opts.streamServerPort ?? 0}"
  # No CAP_SYS_RESOURCE here: the pause container's default oom_score_adj (-998) would make runc fail.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
${opts.sandboxImage ? `  sandbox_image = "${opts.sandboxImage}"\n` : ''}  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "${opts.cniBinDir ?? '/usr/lib/cni'}"
    conf_dir = "${cniConfDir}"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."${registryHost}"]
    endpoint = ["http://${registryHost}"]
`;
  writeFileSync(join(dir, 'config.toml'), config);
  const proc: ChildProcess = spawn('/usr/bin/containerd', ['--config', join(dir, 'config.toml'), '--log-level', opts.logLevel ?? 'warn'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  proc.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  let clients: CriClients;
  try {
    clients = await waitFor(socket, proc, () => log);
  } catch (err) {
    proc.kill('SIGKILL');
    await exited;
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const shimPids = (): number[] =>
    processes()
      .filter((p) => p.cmd.split(' ')[0]!.endsWith('containerd-shim-runc-v2') && p.cmd.includes(socket))
      .map((p) => p.pid);
  return {
    dir,
    socket,
    clients,
    pid: proc.pid!,
    logs: () => log,
    shimPids,
    async stop() {
      clients.close();
      // Shims exit on their own once their pod is removed; give the last ones a moment.
      for (let i = 0; i < 50 && shimPids().length > 0; i++) await new Promise((r) => setTimeout(r, 100));
      proc.kill('SIGTERM');
      await exited;
      const problems = [
        ...processes()
          .filter((p) => p.cmd.includes(dir))
          .map((p) => `process ${p.pid}: ${p.cmd}`),
        ...mountsUnder(dir).map((m) => `mount ${m}`),
      ];
      if (problems.length === 0) rmSync(dir, { recursive: true, force: true });
      if (problems.length > 0) throw new Error(`containerd left things behind (kept ${dir}):\n  ${problems.join('\n  ')}`);
    },
  };
}

async function waitFor(socket: string, proc: ChildProcess, log: () => string): Promise<CriClients> {
  for (let i = 0; i < 300; i++) {
    if (proc.exitCode !== null) throw new Error(`containerd exited: ${log()}`);
    if (existsSync(socket)) {
      const c = criClients(socket);
      try {
        await c.runtime.Version({}, { deadline: Date.now() + 1000 });
        return c;
      } catch {
        c.close();
      }
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`containerd did not answer on ${socket}: ${log()}`);
}

/** Every process with its command line (arguments joined by spaces). */
export function processes(): Array<{ pid: number; cmd: string }> {
  const out: Array<{ pid: number; cmd: string }> = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      out.push({ pid: Number(name), cmd: readFileSync(`/proc/${name}/cmdline`, 'utf8').replace(/\0/g, ' ').trim() });
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

/** The children of `pid` (from /proc/<child>/stat). */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      // The command name may hold spaces and parentheses: the fields start after the last ')'.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(name));
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m.startsWith(dir));
}

/** The sandbox image containerd needs: Debian's static catatonit in pause mode, built offline (pushed once per run). */
let pausePushed: Promise<string> | undefined;
export function pushPauseImage(registryHost: string): Promise<string> {
  pausePushed ??= pushPauseImageOnce(registryHost);
  return pausePushed;
}

async function pushPauseImageOnce(registryHost: string): Promise<string> {
  const catatonit = '/usr/bin/catatonit';
  if (!existsSync(catatonit)) throw new Error(`${catatonit} is missing: install Debian's catatonit (hack/install.sh)`);
  const layer = await buildLayer([{ path: 'catatonit', type: 'file', mode: 0o755, content: readFileSync(catatonit) }], 'gzip');
  const image = buildImage({
    layers: [layer],
    config: { Entrypoint: ['/catatonit', '-P'], Env: [`PATH=${DEFAULT_PATH}`], Labels: { 'org.berth.bench': 'pause' } },
  });
  const pusher = new RegistryPusher(registryHost);
  try {
    await pusher.pushImage('pause', image, ['3.9']);
  } finally {
    pusher.close();
  }
  return `${registryHost}/pause:3.9`;
}
