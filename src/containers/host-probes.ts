/**
 * What this host can do, probed once at start-up: AppArmor, SELinux, berthd's own
 * capability bounding set and oom_score_adj. Spec generation takes the answers as data.
 */
import { readFileSync } from 'node:fs';
import type { Logger } from '../common/logger.js';
import { ownOomScoreAdj } from '../oci/runtime.js';
import { capabilitiesFromMask } from './capabilities.js';

export interface HostProbes {
  /** The kernel enforces AppArmor (the module parameter says Y, as runc decides). */
  appArmorEnabled: boolean;
  /** The capabilities berthd holds (its bounding set); undefined when unreadable. */
  hostCapabilities?: string[];
  /** berthd's own oom_score_adj: containers cannot go lower (no CAP_SYS_RESOURCE). */
  minOomScoreAdj: number;
  /** selinuxfs is mounted at /sys/fs/selinux and its `enforce` file is readable. */
  selinuxEnabled: boolean;
}

/** Whether AppArmor is enabled: /sys/module/apparmor/parameters/enabled reads Y. */
export function probeAppArmor(path = '/sys/module/apparmor/parameters/enabled'): boolean {
  try {
    return readFileSync(path, 'utf8').trim() === 'Y';
  } catch {
    return false;
  }
}

/** Whether SELinux is enabled: a selinuxfs mount at `mountPoint` (per /proc/self/mountinfo) whose `enforce` reads 0 or 1. */
export function probeSelinux(mountPoint = '/sys/fs/selinux', mountinfo = '/proc/self/mountinfo'): boolean {
  try {
    const mounted = readFileSync(mountinfo, 'utf8')
      .split('\n')
      .some((line) => {
        const f = line.split(' ');
        const dash = f.indexOf('-');
        return f[4] === mountPoint && dash > 0 && f[dash + 1] === 'selinuxfs';
      });
    return mounted && /^[01]$/.test(readFileSync(`${mountPoint}/enforce`, 'utf8').trim());
  } catch {
    return false;
  }
}

/** The capability bounding set of this process, from /proc/self/status. */
export function probeCapabilities(status = '/proc/self/status'): string[] | undefined {
  const capBnd = /^CapBnd:\s*([0-9a-f]+)$/m.exec(readFileSync(status, 'utf8'))?.[1];
  return capBnd ? capabilitiesFromMask(BigInt(`0x${capBnd}`)) : undefined;
}

let probed: HostProbes | undefined;

/** The host's probes, read once per process. */
export function hostProbes(): HostProbes {
  if (!probed) {
    const caps = probeCapabilities();
    probed = {
      appArmorEnabled: probeAppArmor(),
      ...(caps ? { hostCapabilities: caps } : {}),
      minOomScoreAdj: ownOomScoreAdj(),
      selinuxEnabled: probeSelinux(),
    };
  }
  return probed;
}

const logged = new Set<string>();

/** Logs a warning about the host once per process, however many containers meet it. */
export function warnOnce(log: Logger, message: string, fields?: Record<string, unknown>): void {
  if (logged.has(message)) return;
  logged.add(message);
  log.warn(message, fields);
}
