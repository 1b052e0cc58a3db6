/**
 * The impure inputs of spec generation that depend on the request: the CRI devices
 * stat'ed, the host's /dev for a privileged container, berth's default AppArmor profile
 * loaded when a container will run under it. Runs before anything of the container
 * exists, so bad input fails without anything to undo.
 */
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
