/**
 * Linux capability sets for a container: the default set containerd and Docker give,
 * CRI add/drop (with "ALL"), privileged, and ambient capabilities.
 */
import { invalidArgument } from '../common/errors.js';
import type { OciCapabilities } from '../oci/spec.js';

/** Every capability of a 6.x kernel, in kernel order (CAP_CHOWN = 0 … CAP_CHECKPOINT_RESTORE = 40). */
export const ALL_CAPABILITIES: readonly string[] = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_DAC_READ_SEARCH',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETPCAP',
  'CAP_LINUX_IMMUTABLE',
  'CAP_NET_BIND_SERVICE',
  'CAP_NET_BROADCAST',
  'CAP_NET_ADMIN',
  'CAP_NET_RAW',
  'CAP_IPC_LOCK',
  'CAP_IPC_OWNER',
  'CAP_SYS_MODULE',
  'CAP_SYS_RAWIO',
  'CAP_SYS_CHROOT',
  'CAP_SYS_PTRACE',
  'CAP_SYS_PACCT',
  'CAP_SYS_ADMIN',
  'CAP_SYS_BOOT',
  'CAP_SYS_NICE',
  'CAP_SYS_RESOURCE',
  'CAP_SYS_TIME',
  'CAP_SYS_TTY_CONFIG',
  'CAP_MKNOD',
  'CAP_LEASE',
  'CAP_AUDIT_WRITE',
  'CAP_AUDIT_CONTROL',
  'CAP_SETFCAP',
  'CAP_MAC_OVERRIDE',
  'CAP_MAC_ADMIN',
  'CAP_SYSLOG',
  'CAP_WAKE_ALARM',
  'CAP_BLOCK_SUSPEND',
  'CAP_AUDIT_READ',
  'CAP_PERFMON',
  'CAP_BPF',
  'CAP_CHECKPOINT_RESTORE',
];

/** The capability names of a bounding-set mask such as /proc/self/status CapBnd. */
export function capabilitiesFromMask(mask: bigint): string[] {
  return ALL_CAPABILITIES.filter((_, bit) => ((mask >> BigInt(bit)) & 1n) === 1n);
}

/** containerd's and Docker's default set for unprivileged containers. */
export const DEFAULT_CAPABILITIES: readonly string[] = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FSETID',
  'CAP_FOWNER',
  'CAP_MKNOD',
  'CAP_NET_RAW',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETFCAP',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_KILL',
  'CAP_AUDIT_WRITE',
];

const KNOWN = new Set(ALL_CAPABILITIES);

/** "net_admin", "CAP_NET_ADMIN", "Net_Admin" → "CAP_NET_ADMIN"; "all" → "ALL". Unknown names → InvalidArgument. */
export function normalizeCapability(name: string, field: string): string {
  const upper = name.trim().toUpperCase();
  if (upper === 'ALL') return 'ALL';
  const full = upper.startsWith('CAP_') ? upper : `CAP_${upper}`;
  if (!KNOWN.has(full)) throw invalidArgument(`${field}: unknown capability "${name}"`);
  return full;
}

export interface CapabilityRequest {
  privileged: boolean;
  add: string[];
  drop: string[];
  addAmbient?: string[];
  /**
   * The capabilities berthd itself may hand out (its own bounding set). Anything else
   * is left out, as containerd does: runc cannot give what it does not hold (here: no
   * CAP_SYS_RESOURCE), and privileged containers would otherwise fail to start.
   */
  host?: readonly string[];
}

/**
 * The process's capability sets. As containerd: "ALL" in add, then "ALL" in drop, then
 * the individual adds, then the individual drops, so add=[ALL] drop=[CHOWN] is everything
 * but CHOWN and drop=[ALL] add=[KILL] is only KILL. Privileged gets every capability.
 * Ambient capabilities are also put in the inheritable set, which the kernel requires.
 */
export function capabilitySets(req: CapabilityRequest): { caps: OciCapabilities; warnings: string[] } {
  const warnings: string[] = [];
  const add = req.add.map((c, i) => normalizeCapability(c, `capabilities.add_capabilities[${i}]`));
  const drop = req.drop.map((c, i) => normalizeCapability(c, `capabilities.drop_capabilities[${i}]`));
  const ambient = (req.addAmbient ?? []).map((c, i) => {
    const n = normalizeCapability(c, `capabilities.add_ambient_capabilities[${i}]`);
    if (n === 'ALL') throw invalidArgument(`capabilities.add_ambient_capabilities[${i}]: "ALL" is not allowed`);
    return n;
  });

  let set: Set<string>;
  if (req.privileged) {
    set = new Set(ALL_CAPABILITIES);
  } else {
    set = new Set(DEFAULT_CAPABILITIES);
    if (add.includes('ALL')) set = new Set(ALL_CAPABILITIES);
    if (drop.includes('ALL')) set.clear();
    for (const c of add) if (c !== 'ALL') set.add(c);
    for (const c of drop) if (c !== 'ALL') set.delete(c);
  }
  if (req.host) {
    const host = new Set(req.host);
    const missing = [...set].filter((c) => !host.has(c));
    for (const c of missing) set.delete(c);
    if (missing.length > 0 && !req.privileged && !add.includes('ALL'))
      warnings.push(`capabilities ${missing.join(', ')} are not held by berthd and were left out`);
  }
  const effective = ALL_CAPABILITIES.filter((c) => set.has(c));
  for (const c of ambient) {
    if (!set.has(c)) warnings.push(`ambient capability ${c} is not in the bounding set and will have no effect`);
  }
  const amb = [...new Set(ambient)];
  return {
    caps: { bounding: [...effective], effective: [...effective], permitted: [...effective], inheritable: [...amb], ambient: amb },
    warnings,
  };
}
