/**
 * What exists on the node under one berthd's root and state dirs, found without the
 * database: mounts, namespace pins, cgroups under the pods' cgroup parents, conmon
 * processes naming these dirs, the per-container dirs and files, IPAM reservations of
 * berth's networks, and content blobs. Each is an {@link Observation} naming the owner
 * the database must know for it not to be a leak.
 *
 * The directory scans are the ones start-up recovery uses (strayPodEntries,
 * straySnapshotDirs, strayBlobFiles): recovery removes what they return, doctor reports it.
 */
import { lstatSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join, posix, relative, sep } from 'node:path';
import { errnoOf } from '../common/errors.js';
import { canonicalPath, unescapeMountPath } from '../common/mount.js';
import type { BerthConfig } from '../config/schema.js';
import { containerDirs } from '../containers/container-dirs.js';
import { contentDirs, strayBlobFiles } from '../images/content/content-store.js';
import { snapshotsDir, straySnapshotDirs } from '../images/snapshots/overlay.js';
import { runtimeStateRoot } from '../oci/oci-runtime.js';
import type { CniNetworkList } from '../sandbox/cni/conf-dir.js';
import { isPinned } from '../sandbox/namespaces.js';
import { podDirs, strayPodEntries } from '../sandbox/pod-dirs.js';
import { shimDirs } from '../shim/shim.js';
import type { Observation } from './findings.js';

/** Pod and container IDs: 64 hex digits. */
const ID = /^[0-9a-f]{64}$/;
/** host-local's default data dir. */
const HOST_LOCAL_DIR = '/var/lib/cni/networks';
/** A blob file younger than this may be a download between its rename and its row. */
const RECENT_BLOB_MS = 60_000;

export interface ScanContext {
  config: BerthConfig;
  /** Cgroup parents to look under: the pods' (from the database) and the operator's --cgroup-parent. */
  cgroupParents: ReadonlySet<string>;
  /** CNI network lists whose IPAM reservations are berth's: the conf dir's and the pods'. */
  networks: readonly CniNetworkList[];
}

interface MountEntry {
  path: string;
  /** The mounted filesystem's own path shown there (for a cgroup hierarchy, the cgroup it starts at). */
  root: string;
  fstype: string;
}

function mountTable(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const sepAt = line.indexOf(' - ');
    if (sepAt < 0) continue;
    const pre = line.slice(0, sepAt).split(' ');
    const fstype = line.slice(sepAt + 3).split(' ')[0] ?? '';
    if (pre[4] !== undefined) out.push({ path: unescapeMountPath(pre[4]), root: unescapeMountPath(pre[3] ?? '/'), fstype });
  }
  return out;
}

function within(path: string, dir: string): boolean {
  return path.startsWith(dir.endsWith(sep) ? dir : dir + sep);
}

function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT' || errnoOf(err) === 'ENOTDIR') return [];
    throw err;
  }
}

/** Everything under the dirs of `ctx.config` that the database may or may not know. */
export function scanNode(ctx: ScanContext): Observation[] {
  const mountinfo = readFileSync('/proc/self/mountinfo', 'utf8');
  return [
    ...scanMounts(ctx, mountinfo),
    ...scanPins(ctx),
    ...scanProcesses(ctx),
    ...scanRuntimeState(ctx),
    ...scanDirs(ctx),
    ...scanCgroups(ctx, mountinfo),
    ...scanIpam(ctx),
    ...scanContent(ctx),
  ];
}

/** Mounts under the root and state dirs, except the pins of the ns dir (scanPins reports those). */
function scanMounts(ctx: ScanContext, mountinfo: string): Observation[] {
  const root = canonicalPath(ctx.config.root);
  const state = canonicalPath(ctx.config.state);
  const nsRoot = canonicalPath(podDirs(ctx.config).nsRoot);
  const probe = join(state, 'probe');
  const out: Observation[] = [];
  const seen = new Set<string>();
  for (const m of mountTable(mountinfo)) {
    const base = within(m.path, root) ? root : within(m.path, state) ? state : undefined;
    if (base === undefined || within(m.path, nsRoot) || seen.has(m.path)) continue;
    seen.add(m.path);
    const id = relative(base, m.path)
      .split(sep)
      .find((c) => ID.test(c));
    const owner =
      id !== undefined
        ? { kind: 'berth-id' as const, id }
        : m.path === probe || within(m.path, probe)
          ? { kind: 'in-flight' as const }
          : { kind: 'none' as const };
    out.push({
      category: 'mount',
      subject: m.path,
      owner,
      detail: m.fstype === 'nsfs' ? 'a namespace pin (nsfs)' : `${m.fstype} mount`,
      repair: { kind: 'unmount', path: m.path },
    });
  }
  return out;
}

/** The entries of the ns dir: a pod's pin dir (`<id>/{net,ipc,uts,pid,user}`) or a pin file. */
function scanPins(ctx: ScanContext): Observation[] {
  return strayPodEntries(podDirs(ctx.config), new Set())
    .filter((e) => e.kind === 'ns')
    .map(({ name, path }): Observation => {
      let dir = false;
      try {
        dir = lstatSync(path).isDirectory();
      } catch {
        // gone meanwhile: reported as a file
      }
      const pinned = dir ? listDir(path).filter((f) => isPinned(join(path, f))) : [];
      const detail = dir
        ? pinned.length > 0
          ? `pins ${pinned.join(', ')}`
          : 'nothing pinned'
        : isPinned(path)
          ? 'a pinned namespace'
          : 'a file, nothing pinned';
      return {
        category: 'namespace pin',
        subject: path,
        owner: ID.test(name) ? { kind: 'berth-id', id: name } : { kind: 'none' },
        detail,
        repair: { kind: 'remove-pins', path, dir },
      };
    });
}

function readArgv(pid: string): string[] | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return undefined;
  }
}

function procStat(pid: string): { ppid: number; state: string } | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
    return { state: rest[0] ?? '', ppid: Number(rest[1]) };
  } catch {
    return undefined;
  }
}

/**
 * conmon processes whose command line names this berthd's dirs (exit dir, bundle or
 * persist dir), and the container processes they watch over (their children).
 */
function scanProcesses(ctx: ScanContext): Observation[] {
  const { exitDir, persistRoot } = shimDirs(ctx.config.state);
  const root = ctx.config.root;
  const pids = listDir('/proc').filter((p) => /^\d+$/.test(p));
  const children = new Map<number, number[]>();
  const conmons: Array<{ pid: number; id: string; bundle: string }> = [];
  for (const pid of pids) {
    const st = procStat(pid);
    if (!st || st.state === 'Z') continue;
    const list = children.get(st.ppid) ?? [];
    list.push(Number(pid));
    children.set(st.ppid, list);
    const argv = readArgv(pid);
    if (!argv || !(argv[0] ?? '').endsWith('conmon')) continue;
    const arg = (flag: string): string | undefined => {
      const i = argv.indexOf(flag);
      return i >= 0 ? argv[i + 1] : undefined;
    };
    const id = arg('--cid');
    const bundle = arg('--bundle') ?? '';
    const ours = arg('--exit-dir') === exitDir || within(bundle, root) || within(arg('--persist-dir') ?? '', persistRoot);
    if (id !== undefined && ours) conmons.push({ pid: Number(pid), id, bundle });
  }
  return conmons.map((c): Observation => {
    const kids = children.get(c.pid) ?? [];
    return {
      category: 'conmon',
      subject: `pid ${c.pid}`,
      owner: { kind: 'berth-id', id: c.id },
      detail: `conmon of ${c.id.slice(0, 12)} (bundle ${c.bundle})${kids.length > 0 ? `, container process(es) ${kids.join(' ')}` : ''}`,
      repair: { kind: 'kill-conmon', pid: c.pid, id: c.id },
    };
  });
}

/** The OCI runtimes' state dirs (`<state>/runtime/<handler>/<id>`): a container the runtime still knows. */
function scanRuntimeState(ctx: ScanContext): Observation[] {
  const out: Observation[] = [];
  const base = join(ctx.config.state, 'runtime');
  for (const handler of listDir(base)) {
    const root = runtimeStateRoot(ctx.config.state, handler);
    for (const id of listDir(root)) {
      const path = join(root, id);
      out.push({
        category: 'runtime state',
        subject: path,
        owner: { kind: 'berth-id', id },
        detail: `${handler} container ${id.slice(0, 12)}`,
        repair: { kind: 'runtime-delete', handler, root, id, path },
      });
    }
  }
  return out;
}

/** The per-pod and per-container dirs and files, named by the pod's or container's ID. */
function scanDirs(ctx: ScanContext): Observation[] {
  const out: Observation[] = [];
  const shim = shimDirs(ctx.config.state);
  const pods = podDirs(ctx.config);
  const containers = containerDirs(ctx.config);
  const byId: Array<[Observation['category'], string]> = [
    ['bundle', containers.bundles],
    ['prepared mounts', containers.mounts],
    ['exit file', shim.exitDir],
    ['conmon dir', shim.persistRoot],
    ['attach link', shim.socketDir],
  ];
  for (const [category, dir] of byId) {
    for (const name of listDir(dir)) {
      const path = join(dir, name);
      out.push({
        category,
        subject: path,
        owner: ID.test(name) ? { kind: 'berth-id', id: name } : { kind: 'none' },
        detail: category === 'exit file' ? `exit code ${readSmall(path)}` : '',
        repair: { kind: 'remove', path },
      });
    }
  }
  // The scans recovery uses, with nothing known: the database judges every entry afterwards.
  for (const { name, path } of strayPodEntries(pods, new Set()).filter((e) => e.kind === 'pod')) {
    out.push({
      category: 'pod dir',
      subject: path,
      owner: ID.test(name) ? { kind: 'berth-id', id: name } : { kind: 'none' },
      detail: '',
      repair: { kind: 'remove', path },
    });
  }
  const snapDir = snapshotsDir(ctx.config.root);
  for (const path of straySnapshotDirs(snapDir, [])) {
    const id = path.slice(snapDir.length + 1);
    out.push({ category: 'snapshot', subject: path, owner: { kind: 'snapshot', id }, detail: '', repair: { kind: 'remove', path } });
  }
  const content = contentDirs(ctx.config.root);
  for (const dir of [content.ingestDir, content.trashDir]) {
    for (const name of listDir(dir)) {
      const path = join(dir, name);
      out.push({
        category: 'download',
        subject: path,
        owner: { kind: 'in-flight' },
        detail: 'a download or collection in progress',
        repair: { kind: 'remove', path },
      });
    }
  }
  return out;
}

function readSmall(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim().slice(0, 40) || '(empty)';
  } catch {
    return '(unreadable)';
  }
}

/** Content blob files (the database judges them: a row, and an image referencing it). */
function scanContent(ctx: ScanContext): Observation[] {
  const { blobsDir } = contentDirs(ctx.config.root);
  const now = Date.now();
  return strayBlobFiles(blobsDir, new Set()).map(({ digest, path }): Observation => {
    let recent = false;
    try {
      recent = now - statSync(path).mtimeMs < RECENT_BLOB_MS;
    } catch {
      // gone meanwhile
    }
    return { category: 'blob', subject: path, owner: { kind: 'blob-file', digest, recent }, detail: '', repair: { kind: 'remove', path } };
  });
}

/**
 * The systemd driver's path of a slice: "a-b.slice" is "/a.slice/a-b.slice" (each dash
 * a level), "" or "-.slice" the root.
 */
export function slicePath(slice: string): string {
  if (slice === '' || slice === '-.slice') return '/';
  const name = slice.replace(/\.slice$/, '');
  const parts = name.split('-');
  const levels = parts.map((_, i) => `${parts.slice(0, i + 1).join('-')}.slice`);
  return `/${levels.join('/')}`;
}

/**
 * Cgroups berth's runtime made (`berth-<id>`, `berth-<id>.scope` with the systemd
 * driver) under the given parents, in every hierarchy: each v1 controller and v2. The
 * root cgroup is looked under only when asked for (`--cgroup-parent /`): pods without a
 * parent share it with every other runtime on the node, other berthds included.
 */
function scanCgroups(ctx: ScanContext, mountinfo: string): Observation[] {
  // Every hierarchy: v1 controllers, named ones (name=systemd, where runc makes its cgroups too) and v2.
  const hierarchies = new Map<string, string>();
  for (const m of mountTable(mountinfo)) if (m.fstype === 'cgroup' || m.fstype === 'cgroup2') hierarchies.set(m.path, m.root);
  const systemd = ctx.config.cgroup_driver === 'systemd';
  const pattern = systemd ? /^berth-([0-9a-f]{64})\.scope$/ : /^berth-([0-9a-f]{64})$/;
  const found = new Map<string, { id: string; parent: string; paths: string[] }>();
  for (const parent of ctx.cgroupParents) {
    const rel = systemd ? slicePath(parent) : posix.join('/', parent);
    for (const [mountpoint, mountRoot] of hierarchies) {
      // A hierarchy mounted from a sub-cgroup (in a container) holds only what lies below it.
      if (mountRoot !== '/' && rel !== mountRoot && !within(rel, mountRoot)) continue;
      const dir = join(mountpoint, mountRoot === '/' ? rel : posix.relative(mountRoot, rel));
      for (const name of listDir(dir)) {
        const m = pattern.exec(name);
        if (!m) continue;
        const key = posix.join(rel, name);
        const f = found.get(key) ?? { id: m[1]!, parent, paths: [] };
        f.paths.push(join(dir, name));
        found.set(key, f);
      }
    }
  }
  return [...found.entries()].map(([key, f]): Observation => {
    const procs = new Set<string>();
    for (const p of f.paths) for (const pid of readSmallLines(join(p, 'cgroup.procs'))) procs.add(pid);
    return {
      category: 'cgroup',
      subject: key,
      owner: { kind: 'berth-id', id: f.id },
      detail: `in ${f.paths.length} hierarchies, ${procs.size > 0 ? `processes ${[...procs].join(' ')}` : 'no processes'}`,
      repair: { kind: 'cgroup', paths: f.paths },
    };
  });
}

function readSmallLines(path: string): string[] {
  try {
    return readFileSync(path, 'utf8')
      .split('\n')
      .filter((l) => l !== '');
  } catch {
    return [];
  }
}

/**
 * host-local reservations (`<dataDir>/<network>/<ip>`, holding the container ID: berth's
 * pod sandbox ID) of the networks berth attaches pods to. Only files naming an ID of
 * berth's form count; host-local's own files (lock, last_reserved_ip.*) never do.
 */
function scanIpam(ctx: ScanContext): Observation[] {
  const dirs = new Set<string>();
  for (const list of ctx.networks) {
    for (const plugin of list.plugins) {
      const ipam = plugin.ipam as { type?: unknown; dataDir?: unknown } | undefined;
      if (ipam?.type !== 'host-local') continue;
      dirs.add(join(typeof ipam.dataDir === 'string' && ipam.dataDir !== '' ? ipam.dataDir : HOST_LOCAL_DIR, list.name));
    }
  }
  const out: Observation[] = [];
  for (const dir of dirs) {
    for (const name of listDir(dir)) {
      if (name === 'lock' || name.startsWith('last_reserved_ip')) continue;
      const path = join(dir, name);
      const [id = '', ifname = ''] = readSmallLines(path).map((l) => l.trim());
      if (!ID.test(id)) continue;
      out.push({
        category: 'ipam reservation',
        subject: path,
        owner: { kind: 'berth-id', id },
        detail: `${name} reserved for ${id.slice(0, 12)}${ifname !== '' ? ` (${ifname})` : ''}`,
        repair: { kind: 'remove', path },
      });
    }
  }
  return out;
}
