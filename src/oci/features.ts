/**
 * What this host and berth can do for kubelet's optional features, probed at start-up
 * (cheap reads of /proc and /sys) and reported in CRI `Status`: per runtime handler
 * `recursive_read_only_mounts` and `user_namespaces`, node-wide
 * `supplemental_groups_policy`, and in verbose info the facilities the host lacks
 * (AppArmor, SELinux, CRIU).
 *
 * A feature is reported true only when both hold: the kernel can do it, and berth has the
 * code path that does it ({@link BERTH_IMPLEMENTS}). runc 1.1 makes neither idmapped nor
 * recursively read-only mounts itself, so berth prepares such mounts (mount_setattr
 * through its addon) before runc sees the bundle; the runtime handler does not matter
 * beyond being runnable.
 */
import { accessSync, constants, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { messageOf } from '../common/errors.js';
import { execProcess } from '../common/sys.js';

/**
 * The features berth's own code implements, whatever the host. Each flag is switched to
 * true in the change that implements its feature end to end (with its e2e test):
 * - `recursiveReadOnlyMounts`: `Mount.recursive_read_only` honoured through
 *   mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY) on a bind mount berth prepares;
 * - `userNamespaces`: `userns_options` (hostUsers: false) honoured with a pod user
 *   namespace and idmapped rootfs and volume mounts (MOUNT_ATTR_IDMAP);
 * - `supplementalGroupsPolicyStrict`: `supplemental_groups_policy: Strict` honoured (the
 *   image's /etc/group not merged) by the spec generator (src/containers/spec.ts).
 * Until then the probes below answer false for them, as kubelet must not rely on them.
 */
export const BERTH_IMPLEMENTS = {
  recursiveReadOnlyMounts: false,
  userNamespaces: false,
  supplementalGroupsPolicyStrict: false,
} as const satisfies Record<string, boolean>;

/** What berth implements, as {@link BERTH_IMPLEMENTS}; a parameter so that tests can vary it. */
export type Implemented = { readonly [K in keyof typeof BERTH_IMPLEMENTS]: boolean };

/** A runtime handler's features as CRI's RuntimeHandlerFeatures reports them. */
export interface HandlerFeatures {
  recursiveReadOnlyMounts: boolean;
  userNamespaces: boolean;
}

/** The kernel facts the feature probes need. */
export interface KernelFacts {
  /** `uname -r`, e.g. "6.1.0-18-amd64". */
  release: string;
  /** /proc/sys/user/max_user_namespaces; 0 when user namespaces are disabled. */
  maxUserNamespaces: number;
}

/** mount_setattr(2) with AT_RECURSIVE and MOUNT_ATTR_IDMAP arrived in Linux 5.12. */
export const MOUNT_SETATTR_KERNEL: readonly [number, number] = [5, 12];
/**
 * Idmapped mounts of overlayfs (a container's rootfs is one) arrived in Linux 5.19; with
 * an older kernel the rootfs of a pod with its own user namespace could not be idmapped.
 */
export const IDMAPPED_OVERLAY_KERNEL: readonly [number, number] = [5, 19];

/** [major, minor] of a kernel release string; undefined when it does not start with them. */
export function kernelVersion(rel: string): [number, number] | undefined {
  const m = /^(\d+)\.(\d+)/.exec(rel);
  return m ? [Number(m[1]), Number(m[2])] : undefined;
}

function atLeast(rel: string, [major, minor]: readonly [number, number]): boolean {
  const v = kernelVersion(rel);
  return v !== undefined && (v[0] > major || (v[0] === major && v[1] >= minor));
}

/** The running kernel's facts. */
export function kernelFacts(): KernelFacts {
  let maxUserNamespaces = 0;
  try {
    maxUserNamespaces = Number(readFileSync('/proc/sys/user/max_user_namespaces', 'utf8').trim()) || 0;
  } catch {
    // no user namespaces in this kernel
  }
  return { release: release(), maxUserNamespaces };
}

/**
 * A handler's features: each true only when its runtime binary is runnable, the kernel can
 * make the mounts it needs, and berth implements it.
 */
export function handlerFeatures(runtimePath: string, kernel: KernelFacts = kernelFacts(), implemented: Implemented = BERTH_IMPLEMENTS): HandlerFeatures {
  let runnable = true;
  try {
    accessSync(runtimePath, constants.X_OK);
  } catch {
    runnable = false;
  }
  const mountSetattr = atLeast(kernel.release, MOUNT_SETATTR_KERNEL);
  return {
    recursiveReadOnlyMounts: runnable && mountSetattr && implemented.recursiveReadOnlyMounts,
    userNamespaces: runnable && mountSetattr && atLeast(kernel.release, IDMAPPED_OVERLAY_KERNEL) && kernel.maxUserNamespaces > 0 && implemented.userNamespaces,
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
