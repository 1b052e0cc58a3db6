/**
 * The container's user, resolved the way containerd's CRI plugin and runc do: from the CRI
 * security context (run_as_user, run_as_username, run_as_group, supplemental_groups) or
 * else the image's USER, looked up in the image's own /etc/passwd and /etc/group (the
 * caller reads them from the rootfs; this module does no I/O).
 */
import { invalidArgument } from '../common/errors.js';
import { MAX_ID, parseIdRef, parseImageUser, parseNumericId, type IdRef } from '../common/user-ids.js';

export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

export interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

export interface UserRequest {
  runAsUser?: number;
  runAsUsername?: string;
  runAsGroup?: number;
  supplementalGroups: number[];
  /** The image's USER ("", "uid", "uid:gid", "name", "name:group"). */
  imageUser: string;
  /** SupplementalGroupsPolicy Strict: no groups from the image's /etc/group, only the primary gid and the requested ones. */
  strictGroups?: boolean;
}

export interface ResolvedUser {
  uid: number;
  gid: number;
  /** The primary gid first, then groups of /etc/group naming the user (not with Strict), then the CRI supplemental groups (as containerd). */
  additionalGids: number[];
  /** The passwd name when the user has an entry (for HOME and logs). */
  name?: string;
  home?: string;
}

/** Parses /etc/passwd text; comment, blank and malformed lines are skipped, as libc does. */
export function parsePasswd(text: string): PasswdEntry[] {
  const out: PasswdEntry[] = [];
  for (const f of records(text)) {
    const uid = parseNumericId(f[2] ?? '');
    const gid = parseNumericId(f[3] ?? '');
    if (f[0] === undefined || f[0] === '' || uid === undefined || gid === undefined) continue;
    out.push({ name: f[0], uid, gid, home: f[5] ?? '' });
  }
  return out;
}

/** Parses /etc/group text; comment, blank and malformed lines are skipped. */
export function parseGroup(text: string): GroupEntry[] {
  const out: GroupEntry[] = [];
  for (const f of records(text)) {
    const gid = parseNumericId(f[2] ?? '');
    if (f[0] === undefined || f[0] === '' || gid === undefined) continue;
    const members = (f[3] ?? '')
      .split(',')
      .map((m) => m.trim())
      .filter((m) => m !== '');
    out.push({ name: f[0], gid, members });
  }
  return out;
}

/** The colon-separated fields of each line of a passwd or group file; comment and blank lines are skipped. */
function records(text: string): string[][] {
  return text
    .split('\n')
    .filter((line) => line.trim() !== '' && !line.startsWith('#'))
    .map((line) => line.split(':'));
}

function checkId(n: number, field: string): number {
  if (!Number.isInteger(n) || n < 0 || n > MAX_ID) throw invalidArgument(`${field} ${n} is not a valid id (0..${MAX_ID})`);
  return n;
}

/**
 * Resolves uid, gid and additional gids. Throws InvalidArgument naming the CRI field (or
 * the image USER) when a name is unknown or the request is inconsistent.
 */
export function resolveUser(req: UserRequest, passwdText: string, groupText: string): ResolvedUser {
  const passwd = parsePasswd(passwdText);
  const groups = parseGroup(groupText);
  let entry: PasswdEntry | undefined;
  let uid: number;
  let gid: number;

  if (req.runAsUser !== undefined) {
    // kubelet sends a numeric user as run_as_user; the gid comes from its passwd entry when there is one.
    uid = checkId(req.runAsUser, 'run_as_user');
    entry = passwd.find((p) => p.uid === uid);
    gid = entry?.gid ?? 0;
  } else if (req.runAsUsername !== undefined && req.runAsUsername !== '') {
    // kubelet sends the image's USER here when ImageStatus gave it as a name; all digits is a uid, never a name.
    const name = req.runAsUsername;
    ({ uid, gid, entry } = userOf(parseIdRef(name), passwd, {
      tooBig: () => `run_as_username "${name}" is all digits, so a uid, and above ${MAX_ID}`,
      unknown: () => `run_as_username "${name}": no such user in the image's /etc/passwd`,
    }));
  } else {
    if (req.runAsGroup !== undefined) throw invalidArgument('run_as_group requires run_as_user or run_as_username');
    ({ uid, gid, entry } = fromImageUser(req.imageUser, passwd, groups));
  }
  if (req.runAsGroup !== undefined) gid = checkId(req.runAsGroup, 'run_as_group');

  const additional: number[] = [gid];
  if (entry && !req.strictGroups) {
    const name = entry.name;
    for (const g of groups) if (g.members.includes(name)) additional.push(g.gid);
  }
  req.supplementalGroups.forEach((g, i) => additional.push(checkId(g, `supplemental_groups[${i}]`)));
  return {
    uid,
    gid,
    additionalGids: [...new Set(additional)],
    ...(entry ? { name: entry.name, home: entry.home } : {}),
  };
}

function fromImageUser(user: string, passwd: PasswdEntry[], groups: GroupEntry[]): { uid: number; gid: number; entry?: PasswdEntry } {
  const spec = parseImageUser(user);
  if (spec.user === undefined) {
    const root = passwd.find((p) => p.uid === 0);
    return { uid: 0, gid: root?.gid ?? 0, ...(root ? { entry: root } : {}) };
  }
  const u = spec.user;
  if (u.kind === 'name' && u.name === '') throw invalidArgument(`image USER "${user}" has no user part`);

  const named = userOf(u, passwd, {
    tooBig: (text) => `image USER "${user}": uid ${text} is above ${MAX_ID}`,
    unknown: (name) => `image USER "${user}": no user "${name}" in the image's /etc/passwd`,
  });
  let gid = named.gid;
  const g = spec.group;
  if (g !== undefined) {
    if (g.kind === 'too-big') throw invalidArgument(`image USER "${user}": gid ${g.text} is above ${MAX_ID}`);
    if (g.kind === 'id') gid = g.id;
    else {
      const found = groups.find((x) => x.name === g.name);
      if (!found) throw invalidArgument(`image USER "${user}": no group "${g.name}" in the image's /etc/group`);
      gid = found.gid;
    }
  }
  return { uid: named.uid, gid, ...(named.entry ? { entry: named.entry } : {}) };
}

/**
 * The user a user part names in the image's /etc/passwd: a uid (with its entry's gid when
 * it has one, else 0), or a name that must have an entry. The refusals are worded by the caller.
 */
function userOf(
  ref: IdRef,
  passwd: PasswdEntry[],
  refusal: { tooBig(text: string): string; unknown(name: string): string },
): { uid: number; gid: number; entry?: PasswdEntry } {
  if (ref.kind === 'too-big') throw invalidArgument(refusal.tooBig(ref.text));
  if (ref.kind === 'id') {
    const entry = passwd.find((p) => p.uid === ref.id);
    return { uid: ref.id, gid: entry?.gid ?? 0, ...(entry ? { entry } : {}) };
  }
  const entry = passwd.find((p) => p.name === ref.name);
  if (!entry) throw invalidArgument(refusal.unknown(ref.name));
  return { uid: entry.uid, gid: entry.gid, entry };
}
