/**
 * Fields berth does not apply yet, refused by name when a request sets them (the
 * `refused` decisions of contract.ts). Zero values, which kubelet sends for everything
 * it does not use, pass.
 */
import { BerthError } from '../common/errors.js';
import { hostProbes } from '../containers/host-probes.js';
import type { ContainerConfig__Output } from './gen/runtime/v1/ContainerConfig.js';
import type { NamespaceOption__Output } from './gen/runtime/v1/NamespaceOption.js';
import type { PodSandboxConfig__Output } from './gen/runtime/v1/PodSandboxConfig.js';

const unsupported = (field: string, what: string): BerthError => new BerthError('FailedPrecondition', `${field}: ${what} not supported by berth yet`);

/** NamespaceOption.userns_options: NODE (the host's namespace) is what berth does; anything else is refused. */
function refuseUserNamespace(ns: NamespaceOption__Output | null | undefined, field: string): void {
  const u = ns?.userns_options;
  if (!u) return;
  if (u.mode === 'NODE') {
    if (u.uids.length > 0 || u.gids.length > 0) throw new BerthError('InvalidArgument', `${field}: mappings are only valid with mode POD`);
    return;
  }
  if (u.mode === 'POD') throw unsupported(`${field}.mode`, 'pod user namespaces (hostUsers: false) are');
  throw new BerthError('InvalidArgument', `${field}.mode ${u.mode} is not valid (POD or NODE)`);
}

/** Throws for a ContainerConfig field berth cannot apply. */
export function refuseUnsupportedContainerFields(c: ContainerConfig__Output, selinuxEnabled = hostProbes().selinuxEnabled): void {
  if (c.CDI_devices.length > 0) throw unsupported(`CDI_devices (${c.CDI_devices.map((d) => d.name).join(', ')})`, 'CDI devices are');
  refuseUserNamespace(c.linux?.security_context?.namespace_options, 'linux.security_context.namespace_options.userns_options');
  c.mounts.forEach((m, i) => {
    const field = `mounts[${i}]`;
    if (m.uidMappings.length > 0 || m.gidMappings.length > 0) throw unsupported(`${field}.uidMappings/gidMappings`, 'idmapped mounts are');
    if (m.recursive_read_only) throw unsupported(`${field}.recursive_read_only`, 'recursive read-only mounts are');
    if ((m.image && m.image.image !== '') || m.image_sub_path !== '') throw unsupported(`${field}.image`, 'image volumes are');
    if (m.selinux_relabel && selinuxEnabled) throw unsupported(`${field}.selinux_relabel`, 'relabelling volumes for SELinux is');
  });
}

/** Throws for a PodSandboxConfig field berth cannot apply. */
export function refuseUnsupportedSandboxFields(c: PodSandboxConfig__Output): void {
  refuseUserNamespace(c.linux?.security_context?.namespace_options, 'config.linux.security_context.namespace_options.userns_options');
}
