/**
 * What this host and berth can do for kubelet's optional features, reported in CRI
 * `Status`: per runtime handler `recursive_read_only_mounts` and `user_namespaces`,
 * node-wide `supplemental_groups_policy`, and in verbose info the facilities the host
 * lacks (AppArmor, SELinux, CRIU).
 *
 * A feature is reported true only when both hold: berth has the code path that does it
 * ({@link BERTH_IMPLEMENTS}), and the start-up probe that makes the real mount in a
 * scratch directory passed (common/mount-probes.ts). runc 1.1 makes neither idmapped nor
 * recursively read-only mounts itself, so berth prepares such mounts (open_tree and
 * mount_setattr through its addon) before runc sees the bundle; the runtime handler
 * matters only in being runnable.
 */
import { accessSync, constants, readFileSync } from 'node:fs';
import { messageOf } from '../common/errors.js';
import type { MountFeatures } from '../common/mount-probes.js';
import { execProcess } from '../common/process.js';

/**
 * The features berth's own code implements, whatever the host:
 * - `recursiveReadOnlyMounts`: `Mount.recursive_read_only` through
 *   mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY) on a bind berth prepares (containers/idmap.ts);
 * - `userNamespaces`: `userns_options` POD (hostUsers: false) with a pinned pod user
 *   namespace, idmapped lower layers of the rootfs and idmapped volumes (sandbox/userns.ts);
 * - `supplementalGroupsPolicyStrict`: `supplemental_groups_policy: Strict` (the image's
 *   /etc/group not merged) in the spec generator (containers/user.ts).
 */
export const BERTH_IMPLEMENTS = {
  recursiveReadOnlyMounts: true,
  userNamespaces: true,
  supplementalGroupsPolicyStrict: true,
} as const satisfies Record<string, boolean>;

/** What berth implements, as {@link BERTH_IMPLEMENTS}; a parameter so that tests can vary it. */
export type Implemented = { readonly [K in keyof typeof BERTH_IMPLEMENTS]: boolean };

/** A runtime handler's features as CRI's RuntimeHandlerFeatures reports them. */
export interface HandlerFeatures {
  recursiveReadOnlyMounts: boolean;
  userNamespaces: boolean;
}

/**
 * A handler's features: each true only when its runtime binary is runnable, the mount
 * probe for it passed on this host, and berth implements it.
 */
export function handlerFeatures(runtimePath: string, probes: MountFeatures, implemented: Implemented = BERTH_IMPLEMENTS): HandlerFeatures {
  let runnable = true;
  try {
    accessSync(runtimePath, constants.X_OK);
  } catch {
    runnable = false;
  }
  return {
    recursiveReadOnlyMounts: runnable && probes.recursiveReadOnly.ok && implemented.recursiveReadOnlyMounts,
    userNamespaces: runnable && probes.idmappedMounts.ok && implemented.userNamespaces,
  };
}

/** Whether `supplemental_groups_policy: Strict` is honoured (no kernel facility needed). */
export function supplementalGroupsPolicy(implemented: Implemented = BERTH_IMPLEMENTS): boolean {
  return implemented.supplementalGroupsPolicyStrict;
}

/** A host facility and, when it is missing, why. */
export interface Facility {
  available: boolean;
  reason?: string;
}

/** AppArmor: enforced by the kernel when /sys/module/apparmor/parameters/enabled is "Y". */
export function appArmorFacility(path = '/sys/module/apparmor/parameters/enabled'): Facility {
  let text: string;
  try {
    text = readFileSync(path, 'utf8').trim();
  } catch {
    return { available: false, reason: `AppArmor is not in this kernel (${path} does not exist)` };
  }
  return text === 'Y' ? { available: true } : { available: false, reason: `AppArmor is disabled (${path} is "${text}")` };
}

/** SELinux: available when selinuxfs is mounted at /sys/fs/selinux, enforcing or permissive. */
export function seLinuxFacility(dir = '/sys/fs/selinux'): Facility {
  let enforce: string;
  try {
    enforce = readFileSync(`${dir}/enforce`, 'utf8').trim();
  } catch {
    return { available: false, reason: `SELinux is not enabled (selinuxfs is not mounted at ${dir})` };
  }
  if (enforce === '1') return { available: true, reason: 'enforcing' };
  if (enforce === '0') return { available: true, reason: 'permissive' };
  return { available: false, reason: `SELinux state unknown (${dir}/enforce is "${enforce}")` };
}

let criu: Promise<Facility> | undefined;

/**
 * CRIU, for checkpoint/restore: `criu check` run once, on first use (it takes a while
 * and the answer does not change while berthd runs), and its verdict kept.
 */
export function criuFacility(): Promise<Facility> {
  criu ??= probeCriu();
  return criu;
}

async function probeCriu(): Promise<Facility> {
  let r;
  try {
    r = await execProcess('criu', ['check'], { timeoutMs: 30_000, maxBuffer: 64 * 1024 });
  } catch (err) {
    return { available: false, reason: `criu is not installed (${messageOf(err)})` };
  }
  if (r.code === 0 && !r.timedOut) return { available: true };
  const said = `${r.stderr}\n${r.stdout}`
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
  const why = r.timedOut ? 'timed out after 30 s' : (said.find((l) => /error|fail/i.test(l)) ?? said[0] ?? `exit code ${r.code}`);
  return { available: false, reason: `criu check fails on this host: ${why}` };
}
