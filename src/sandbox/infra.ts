/**
 * The infra process of a pod that shares one PID namespace (namespace_options.pid POD,
 * kubelet's shareProcessNamespace): PID 1 of that namespace, which reaps the pod's
 * orphans and keeps the namespace alive while containers come and go.
 *
 * It is the host's static `catatonit` in pause mode, bind-mounted read-only into an
 * empty, read-only rootfs, run like a container (conmon + the pod's OCI runtime), so no
 * pause image is needed and pods work offline. It runs as 65535:65535 with no
 * capabilities, no_new_privs and berth's RuntimeDefault seccomp profile, in the pod's
 * pinned network, IPC and UTS namespaces and its cgroup parent. Its runtime id is the
 * pod's id (container ids are drawn from the same 256-bit space, so they never clash).
 *
 * Its PID namespace is pinned at `<nsDir>/pid`; containers join that path. When the
 * infra process exits, the kernel kills every process of the namespace and no new one
 * can enter it: the pod is then NOTREADY, as containerd reports a pod whose pause
 * container died, and kubelet recreates it.
 */
import { mkdir, open, writeFile } from 'node:fs/promises';
import { constants } from 'node:fs';
import { join } from 'node:path';
import { hostPlatform } from '../images/manifest.js';
import type { OciRuntime } from '../oci/oci-runtime.js';
import { cgroupsPath } from '../oci/runtime.js';
import { runtimeDefaultProfile } from '../oci/seccomp-default.js';
import { DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS, OCI_VERSION, type OciSpec } from '../oci/spec.js';
import type { Shim } from '../shim/shim.js';
import type { PinnedNamespaces } from './namespaces.js';

/** Where the infra binary appears inside its rootfs. */
const INFRA_BIN = '/catatonit';
/** The user of the infra process (kubelet's pause image runs as 65535 too). */
const INFRA_ID = 65535;

export interface InfraSpecInput {
  sandboxId: string;
  /** The empty rootfs directory. */
  rootfs: string;
  /** The catatonit binary on the host. */
  infraPath: string;
  /** The pod's pins; a namespace without one is the host's (host network, host IPC). */
  namespaces: PinnedNamespaces;
  cgroupDriver: 'cgroupfs' | 'systemd';
  cgroupParent: string;
  /** berthd's own oom_score_adj: the infra asks for -998 (as kubelet's pause), clamped to it. */
  minOomScoreAdj: number;
}

/** The OCI spec of a pod's infra process (pure). */
export function infraSpec(i: InfraSpecInput): OciSpec {
  const none: string[] = [];
  const ns: OciSpec['linux']['namespaces'] = [{ type: 'pid' }, { type: 'mount' }];
  if (i.namespaces.net) ns.push({ type: 'network', path: i.namespaces.net });
  if (i.namespaces.uts) ns.push({ type: 'uts', path: i.namespaces.uts });
  if (i.namespaces.ipc) ns.push({ type: 'ipc', path: i.namespaces.ipc });
  return {
    ociVersion: OCI_VERSION,
    process: {
      terminal: false,
      user: { uid: INFRA_ID, gid: INFRA_ID },
      args: [INFRA_BIN, '-P'],
      env: ['PATH=/'],
      cwd: '/',
      capabilities: { bounding: none, effective: none, permitted: none, inheritable: none, ambient: none },
      noNewPrivileges: true,
      oomScoreAdj: Math.max(-998, i.minOomScoreAdj),
    },
    root: { path: i.rootfs, readonly: true },
    mounts: [
      // runc needs /proc in the container (it closes inherited fds through /proc/self/fd).
      { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'noexec', 'strictatime', 'mode=755', 'size=65536k'] },
      { destination: INFRA_BIN, type: 'bind', source: i.infraPath, options: ['rbind', 'ro', 'nosuid', 'nodev'] },
    ],
    annotations: { 'io.kubernetes.cri.container-type': 'sandbox', 'io.kubernetes.cri.sandbox-id': i.sandboxId },
    linux: {
      namespaces: ns,
      cgroupsPath: cgroupsPath(i.cgroupDriver, i.cgroupParent, i.sandboxId),
      devices: [],
      // No device at all: catatonit opens none.
      resources: { devices: [{ allow: false, access: 'rwm' }] },
      maskedPaths: [...DEFAULT_MASKED_PATHS],
      readonlyPaths: [...DEFAULT_READONLY_PATHS],
      seccomp: runtimeDefaultProfile([], hostPlatform().architecture),
    },
  };
}

export interface InfraOptions {
  shim: Shim;
}

/** Starts and removes pods' infra processes through the shim and the pod's OCI runtime. */
export class PodInfra {
  constructor(private readonly o: InfraOptions) {}

  /**
   * Creates and starts the infra process in `bundle` (made here, inside the pod's dir) and
   * returns its pid. On failure the caller's `remove` (armed before) clears what was made.
   */
  async start(input: Omit<InfraSpecInput, 'rootfs'>, bundle: string, rt: OciRuntime, signal?: AbortSignal): Promise<number> {
    const rootfs = join(bundle, 'rootfs');
    for (const d of ['proc', 'dev']) await mkdir(join(rootfs, d), { recursive: true, mode: 0o755 });
    // The bind mount's target; O_NOFOLLOW as the dir is berth's own but never trusted blindly.
    await (await open(join(rootfs, INFRA_BIN), constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW, 0o444)).close();
    await writeFile(join(bundle, 'config.json'), JSON.stringify(infraSpec({ ...input, rootfs })));
    const handle = await this.o.shim.create({
      id: input.sandboxId,
      bundle,
      runtime: rt,
      logPath: join(bundle, 'infra.log'),
      terminal: false,
      stdin: false,
      stdinOnce: false,
      ...(signal ? { signal } : {}),
    });
    await rt.start(input.sandboxId);
    return handle.pid;
  }

  /** Kills the infra process (and with it every process of the pod's PID namespace) and removes its runtime state and shim files; idempotent. */
  async remove(id: string, bundle: string, rt: OciRuntime): Promise<void> {
    await rt.delete(id, true);
    await this.o.shim.removeFiles({ id, bundle });
  }

  /** Whether the infra process is running: no exit recorded and the runtime says so. */
  async running(id: string, rt: OciRuntime): Promise<boolean> {
    if ((await this.o.shim.exitCode(id)) !== undefined) return false;
    const st = await rt.state(id);
    return st?.status === 'running';
  }

  /** Resolves with the exit code when the infra process exits; rejects on abort. */
  waitExit(id: string, signal: AbortSignal): Promise<number> {
    return this.o.shim.waitExit(id, signal);
  }
}
