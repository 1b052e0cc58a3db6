/**
 * SELinux labels for containers, containerd-like:
 *
 * - process label `user:role:type:level`, each part from the container's
 *   selinux_options or else `system_u`, `system_r`, `container_t`;
 * - mount label `system_u:object_r:container_file_t:level` (its type from
 *   selinux_options.type only when that names a file type, i.e. never: the mount label
 *   keeps container_file_t, as containerd's default file context does);
 * - level: selinux_options.level, or else the pod's own MCS level: `s0:cA,cB`, two
 *   distinct categories of 0..1023 derived from the pod's id, so the containers of one
 *   pod share a level and pods get different ones (two pods collide with a chance of
 *   one in 523,776; containerd reserves levels to avoid even that).
 *
 * kubelet copies the pod's seLinuxOptions into every container's security context, so
 * the container-level options are the ones that count. On a host without SELinux the
 * options are ignored: the caller logs that once and shows it in verbose status.
 */
import { createHash } from 'node:crypto';
import { invalidArgument } from '../common/errors.js';

export interface SelinuxOptions {
  user: string;
  role: string;
  type: string;
  level: string;
}

/** The warning logged (once) and shown in verbose status when selinux_options meet a host without SELinux. */
export const SELINUX_IGNORED = 'selinux_options ignored: SELinux is not enabled on this host';

/** Whether any part of the options is set (kubelet may send an empty message). */
export function selinuxRequested(o: SelinuxOptions | undefined | null): o is SelinuxOptions {
  return !!o && (o.user !== '' || o.role !== '' || o.type !== '' || o.level !== '');
}

/** The pod's MCS level, `s0:cA,cB` with A < B, from its id. */
export function podMcsLevel(sandboxId: string): string {
  const h = createHash('sha256').update(sandboxId).digest();
  const a = h.readUInt16BE(0) % 1024;
  let b = h.readUInt16BE(2) % 1024;
  if (b === a) b = (a + 1) % 1024;
  return `s0:c${Math.min(a, b)},c${Math.max(a, b)}`;
}

const PART = /^[A-Za-z0-9_.-]+$/;
const LEVEL = /^s\d+(?:-s\d+)?(?::c\d+(?:[.,]c\d+)*)?$/;

/** The process and mount labels of a container on a host with SELinux. Throws InvalidArgument naming the field. */
export function selinuxLabels(opts: SelinuxOptions | undefined, sandboxId: string): { processLabel: string; mountLabel: string } {
  for (const k of ['user', 'role', 'type'] as const) {
    const v = opts?.[k] ?? '';
    if (v !== '' && !PART.test(v)) throw invalidArgument(`selinux_options.${k} "${v}" is not a valid SELinux ${k}`);
  }
  const level = opts?.level || podMcsLevel(sandboxId);
  if (!LEVEL.test(level)) throw invalidArgument(`selinux_options.level "${level}" is not a valid MLS/MCS level (e.g. s0:c1,c2)`);
  const user = opts?.user || 'system_u';
  const role = opts?.role || 'system_r';
  const type = opts?.type || 'container_t';
  return { processLabel: `${user}:${role}:${type}:${level}`, mountLabel: `system_u:object_r:container_file_t:${level}` };
}
