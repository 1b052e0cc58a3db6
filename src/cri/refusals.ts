/**
 * Fields berth does not apply yet, refused by name when a request sets them (the
 * `refused` decisions of contract.ts). Zero values, which kubelet sends for everything
 * it does not use, pass.
 */
import { BerthError } from '../common/errors.js';
import { hostProbes } from '../containers/host-probes.js';
import type { ContainerConfig__Output } from './gen/runtime/v1/ContainerConfig.js';
import type { NamespaceOption__Output } from './gen/runtime/v1/NamespaceOption.js';

const unsupported = (field: string, what: string): BerthError => new BerthError('FailedPrecondition', `${field}: ${what} not supported by berth yet`);

/**
 * A container's userns_options: its pod decides (RunPodSandbox pins the user namespace and
 * checks the mappings, sandbox/userns.ts), and the container joins the pod's; only the
 * mode is checked here.
 */
function checkContainerUserNamespace(ns: NamespaceOption__Output | null | undefined, field: string): void {
  const mode = ns?.userns_options?.mode;
  if (mode !== undefined && mode !== 'NODE' && mode !== 'POD') throw new BerthError('InvalidArgument', `${field}.mode ${mode} is not valid (POD or NODE)`);
}

/** Throws for a ContainerConfig field berth cannot apply. */
export function refuseUnsupportedContainerFields(c: ContainerConfig__Output, selinuxEnabled = hostProbes().selinuxEnabled): void {
  checkContainerUserNamespace(c.linux?.security_context?.namespace_options, 'linux.security_context.namespace_options.userns_options');
  c.mounts.forEach((m, i) => {
    const field = `mounts[${i}]`;
    if (m.selinux_relabel && selinuxEnabled) throw unsupported(`${field}.selinux_relabel`, 'relabelling volumes for SELinux is');
  });
}
