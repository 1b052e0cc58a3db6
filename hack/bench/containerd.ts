/**
 * containerd 1.6 (Debian's package) started in temp dirs for comparison: its own root,
 * state and socket, the CRI plugin told to reach the local registry over plain HTTP.
 * Nothing of the host's containerd setup is used or changed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { criClients, type CriClients } from '../../test/helpers/cri-client.js';

export interface Containerd {
  socket: string;
  clients: CriClients;
  pid: number;
  stop(): Promise<void>;
}

export function containerdAvailable(): boolean {
  return existsSync('/usr/bin/containerd');
}

export async function startContainerd(registryHost: string): Promise<Containerd> {
  const dir = mkdtempSync(join(tmpdir(), 'berth-bench-containerd-'));
  const socket = join(dir, 'containerd.sock');
  const config = `version = 2
root = "${dir}/root"
state = "${dir}/state"
[grpc]
  address = "${socket}"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${dir}/cni"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."${registryHost}"]
    endpoint = ["http://${registryHost}"]
`;
  writeFileSync(join(dir, 'config.toml'), config);
  const proc: ChildProcess = spawn('/usr/bin/containerd', ['--config', join(dir, 'config.toml'), '--log-level', 'warn'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  proc.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  const clients = await waitFor(socket, proc, () => log);
  return {
    socket,
    clients,
    pid: proc.pid!,
    async stop() {
      clients.close();
      proc.kill('SIGTERM');
      await new Promise((r) => proc.once('exit', r));
      rmSync(dir, { recursive: true, force: true });
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
