/**
 * The impure inputs of spec generation that depend on the request: the CRI devices
 * stat'ed, the host's /dev for a privileged container, berth's default AppArmor profile
 * loaded when a container will run under it, and bind mount sources that do not exist
 * yet made as directories (0755), as containerd and CRI-O do (kubelet's hostPath volumes
 * of type "" rely on it); such a directory is not removed with the container. Runs
 * before anything of the container exists, so bad input fails without anything to undo.
 */
import { lstat, mkdir } from 'node:fs/promises';
import { posix } from 'node:path';
import { BerthError, errnoOf, messageOf } from '../common/errors.js';
import { ensureDefaultAppArmorProfile } from './apparmor.js';
import { requestedCdiDevices, type CdiEdits, type CdiRegistry } from './cdi.js';
import { hostDevices, resolveDevices, type ResolvedDevice } from './devices.js';
import type { HostProbes } from './host-probes.js';
import type { CriContainerConfig } from './spec.js';

export interface SpecPrerequisites {
  devices: ResolvedDevice[];
  hostDevices?: ResolvedDevice[];
  appArmorEnabled: boolean;
  appArmorDefaultProfile?: string;
  selinuxEnabled: boolean;
  /** What the container's CDI devices change besides their device nodes (applied with applyCdiEdits). */
  cdi: CdiEdits;
}

export async function specPrerequisites(cfg: CriContainerConfig, probes: HostProbes, cdiRegistry: CdiRegistry): Promise<SpecPrerequisites> {
  const sc = cfg.linux?.security_context;
  const privileged = sc?.privileged ?? false;
  // CDI device nodes join the requested devices: stat'ed and given cgroup rules the same way.
  const cdi = cdiRegistry.resolve(requestedCdiDevices(cfg.CDI_devices ?? [], cfg.annotations));
  const devices = await resolveDevices([...cfg.devices, ...cdi.deviceNodes]);
  await ensureMountSources(cfg.mounts ?? []);
  const aa = sc?.apparmor?.profile_type;
  const needsDefault = probes.appArmorEnabled && !privileged && (aa === undefined || aa === 'RuntimeDefault');
  return {
    devices,
    ...(privileged ? { hostDevices: await hostDevices() } : {}),
    appArmorEnabled: probes.appArmorEnabled,
    ...(needsDefault ? { appArmorDefaultProfile: await ensureDefaultAppArmorProfile() } : {}),
    selinuxEnabled: probes.selinuxEnabled,
    cdi,
  };
}

/** Makes each bind mount's missing host path as a directory; an image volume has none. */
async function ensureMountSources(mounts: ReadonlyArray<{ host_path: string; container_path: string; image?: { image: string } | null }>): Promise<void> {
  for (const [i, m] of mounts.entries()) {
    // Refused by the spec (relative paths) or mounted by berthd (an image volume): nothing to make.
    if (m.image?.image || !posix.isAbsolute(m.host_path) || !posix.isAbsolute(m.container_path)) continue;
    try {
      await lstat(m.host_path);
      continue;
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT') throw new BerthError('FailedPrecondition', `mounts[${i}].host_path ${m.host_path}: ${messageOf(err)}`, { cause: err });
    }
    try {
      await mkdir(m.host_path, { recursive: true, mode: 0o755 });
    } catch (err) {
      throw new BerthError('FailedPrecondition', `mounts[${i}].host_path ${m.host_path} does not exist and cannot be made: ${messageOf(err)}`, { cause: err });
    }
  }
}
