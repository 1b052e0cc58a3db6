/**
 * AppArmor for containers: which profile a container runs under, berth's own default
 * profile (text and loading), and the deprecated `apparmor_profile` string.
 *
 * As containerd decides it:
 * - on a host without AppArmor, a RuntimeDefault or Localhost profile asked for
 *   explicitly is refused ("apparmor is not supported"); none, or Unconfined, runs
 *   unconfined;
 * - on a host with AppArmor, privileged containers and Unconfined run unconfined;
 *   Localhost names a profile the node has loaded; RuntimeDefault, and no profile at
 *   all for an unprivileged container, run under berth's default profile, which berth
 *   loads with apparmor_parser on first use.
 */
import { execProcess } from '../common/process.js';
import { BerthError, invalidArgument, messageOf } from '../common/errors.js';

export interface AppArmorRequest {
  profile_type: 'RuntimeDefault' | 'Unconfined' | 'Localhost';
  localhost_ref: string;
}

/** The name berth's default profile is loaded under. */
export const DEFAULT_APPARMOR_PROFILE = 'berth-default';

/**
 * A deprecated profile string (apparmor_profile, seccomp_profile_path: "runtime/default",
 * "unconfined", "localhost/<name>") as a SecurityProfile; undefined for "".
 */
export function parseProfileString(s: string, field: string): AppArmorRequest | undefined {
  if (s === '') return undefined;
  if (s === 'runtime/default') return { profile_type: 'RuntimeDefault', localhost_ref: '' };
  if (s === 'unconfined') return { profile_type: 'Unconfined', localhost_ref: '' };
  if (s.startsWith('localhost/') && s.length > 'localhost/'.length) return { profile_type: 'Localhost', localhost_ref: s.slice('localhost/'.length) };
  throw invalidArgument(`${field} "${s}" is not "runtime/default", "unconfined" or "localhost/<profile>"`);
}

/**
 * The process.apparmorProfile of a container, or undefined for none. Throws
 * FailedPrecondition when a profile is asked of a host without AppArmor, and
 * InvalidArgument for a Localhost request without a profile name.
 */
export function appArmorProfile(
  req: AppArmorRequest | undefined,
  host: { enabled: boolean; privileged: boolean; defaultProfile?: string | undefined },
): string | undefined {
  if (!host.enabled) {
    if (req && req.profile_type !== 'Unconfined')
      throw new BerthError(
        'FailedPrecondition',
        `apparmor ${req.profile_type} profile requested: apparmor is not supported (AppArmor is not enabled on this host)`,
      );
    return undefined;
  }
  if (req?.profile_type === 'Unconfined') return undefined;
  if (req?.profile_type === 'Localhost') {
    const name = req.localhost_ref.replace(/^localhost\//, '');
    if (!name) throw invalidArgument('apparmor.localhost_ref is required for a Localhost AppArmor profile');
    return name;
  }
  // RuntimeDefault, or nothing asked: the default profile, except for privileged containers.
  if (host.privileged) return undefined;
  return host.defaultProfile ?? DEFAULT_APPARMOR_PROFILE;
}

/**
 * berth's default AppArmor profile: everything a normal container does (files,
 * networking, capabilities the container holds), but no mounts, no writes to the
 * kernel's knobs under /proc and /sys, no ptrace or signals out of the profile.
 */
export function defaultAppArmorProfileText(name = DEFAULT_APPARMOR_PROFILE): string {
  return `#include <tunables/global>

profile ${name} flags=(attach_disconnected,mediate_deleted) {
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,

  # Signals and ptrace only among processes of this profile (and from the unconfined runtime).
  signal (receive) peer=unconfined,
  signal (send,receive) peer=${name},
  ptrace (trace,read,tracedby,readby) peer=${name},

  deny mount,
  deny pivot_root,

  deny @{PROC}/* w,
  deny @{PROC}/{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9/]*}/** w,
  deny @{PROC}/sys/[^k]** w,
  deny @{PROC}/sys/kernel/{?,??,[^s][^h][^m]**} w,
  deny @{PROC}/sysrq-trigger rwklx,
  deny @{PROC}/kcore rwklx,
  deny @{PROC}/kmem rwklx,
  deny @{PROC}/mem rwklx,

  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,
  deny /sys/kernel/security/** rwklx,
}
`;
}

let loaded: Promise<string> | undefined;

/**
 * Loads berth's default profile into the kernel (apparmor_parser -r, from stdin) once per
 * process and answers its name. Fails with FailedPrecondition when apparmor_parser is
 * missing or refuses the profile.
 */
export function ensureDefaultAppArmorProfile(parser = 'apparmor_parser'): Promise<string> {
  loaded ??= (async () => {
    let run;
    try {
      run = await execProcess(parser, ['-Kr'], { input: defaultAppArmorProfileText(), maxBuffer: 64 * 1024 });
    } catch (err) {
      throw new BerthError('FailedPrecondition', `loading the default AppArmor profile: cannot run ${parser}: ${messageOf(err)}`);
    }
    if (run.code !== 0) throw new BerthError('FailedPrecondition', `loading the default AppArmor profile: ${parser} failed: ${run.stderr.trim()}`);
    return DEFAULT_APPARMOR_PROFILE;
  })();
  loaded.catch(() => (loaded = undefined));
  return loaded;
}
