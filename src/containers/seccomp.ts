/**
 * Choosing a container's seccomp filter from its CRI security context.
 *
 * When the CRI request names no profile, berth follows containerd and runs the container
 * unconfined (the kubelet sends RuntimeDefault when the pod asks for it, and since
 * Kubernetes 1.27 SeccompDefault makes it the pods' default). Privileged containers never
 * get a filter.
 */
import { invalidArgument } from '../common/errors.js';
import type { OciSeccomp } from '../oci/spec.js';
import { runtimeDefaultProfile } from '../oci/seccomp-default.js';

export interface SeccompRequest {
  profile_type: 'RuntimeDefault' | 'Unconfined' | 'Localhost';
  localhost_ref: string;
}

export function selectSeccomp(opts: {
  request?: SeccompRequest;
  privileged: boolean;
  capabilities: readonly string[];
  arch: string;
  localhostProfiles?: Record<string, unknown>;
}): OciSeccomp | undefined {
  const { request } = opts;
  if (opts.privileged || !request) return undefined;
  switch (request.profile_type) {
    case 'Unconfined':
      return undefined;
    case 'RuntimeDefault':
      return runtimeDefaultProfile(opts.capabilities, opts.arch);
    case 'Localhost': {
      const ref = request.localhost_ref;
      if (!ref) throw invalidArgument('seccomp.localhost_ref is required for a Localhost seccomp profile');
      const profile = opts.localhostProfiles?.[ref];
      if (profile === undefined) throw invalidArgument(`seccomp.localhost_ref "${ref}": profile not found`);
      return checkProfile(profile, ref);
    }
    default:
      throw invalidArgument(`seccomp.profile_type "${String((request as { profile_type: unknown }).profile_type)}" is not supported`);
  }
}

/** A light shape check of a Localhost profile; runc validates the rest. */
function checkProfile(profile: unknown, ref: string): OciSeccomp {
  if (typeof profile !== 'object' || profile === null || Array.isArray(profile)) {
    throw invalidArgument(`seccomp.localhost_ref "${ref}": profile is not a JSON object`);
  }
  const p = profile as Record<string, unknown>;
  if (typeof p.defaultAction !== 'string' || !p.defaultAction.startsWith('SCMP_ACT_')) {
    throw invalidArgument(`seccomp.localhost_ref "${ref}": profile has no valid defaultAction`);
  }
  if (p.syscalls !== undefined && !Array.isArray(p.syscalls)) {
    throw invalidArgument(`seccomp.localhost_ref "${ref}": syscalls is not a list`);
  }
  return p as unknown as OciSeccomp;
}
