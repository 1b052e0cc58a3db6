/**
 * What `berthd doctor` reports: one finding per thing it saw on the node (a mount, a
 * pin, a cgroup, a process, a file or dir, an IPAM reservation, a blob) or in the
 * database, judged "known to berth" (the database names its owner) or "unknown: leaked"
 * (nothing in the database owns it), and how a leak would be repaired.
 */
import type { DbView } from './db-view.js';

export type Category =
  | 'database'
  | 'mount'
  | 'namespace pin'
  | 'cgroup'
  | 'conmon'
  | 'container process'
  | 'runtime state'
  | 'bundle'
  | 'pod dir'
  | 'prepared mounts'
  | 'conmon dir'
  | 'attach link'
  | 'snapshot'
  | 'download'
  | 'exit file'
  | 'ipam reservation'
  | 'blob';

export type Status = 'known' | 'leaked' | 'damaged';

/** Who may own what the node holds; judged against the database by {@link judge}. */
export type Owner =
  /** A pod or container ID (the name of a pin dir, bundle, exit file, cgroup, conmon…). */
  | { kind: 'berth-id'; id: string }
  /** A snapshot row's id (`<root>/snapshots/<id>`). */
  | { kind: 'snapshot'; id: string }
  /** A blob file: its row in `blobs`. */
  | { kind: 'blob-file'; digest: string; recent: boolean }
  /** A blob row no image references: a pull in flight may hold it while berthd runs. */
  | { kind: 'unreferenced-blob'; digest: string }
  /** Work berthd does while it runs (downloads, mount probes); left over once it stopped. */
  | { kind: 'in-flight' }
  /** Nothing in the database can own it (a mount under the root that names no pod or container). */
  | { kind: 'none' };

/** How a leak is removed (see repair.ts). */
export type Repair =
  | { kind: 'unmount'; path: string }
  | { kind: 'remove-pins'; path: string; dir: boolean }
  | { kind: 'cgroup'; paths: string[] }
  | { kind: 'kill-conmon'; pid: number; id: string }
  | { kind: 'runtime-delete'; handler: string; root: string; id: string; path: string }
  | { kind: 'remove'; path: string }
  | { kind: 'blob-row'; digest: string; path: string };

/** What the node scan saw, before the database judges it. */
export interface Observation {
  category: Category;
  /** What it is: a path, "pid N", a cgroup path. */
  subject: string;
  owner: Owner;
  detail: string;
  repair: Repair;
}

export interface Finding {
  category: Category;
  subject: string;
  /** The pod or container ID (or snapshot id, digest) it names, when it names one. */
  owner?: string;
  status: Status;
  detail: string;
  /** What to do about it. */
  action: string;
  repair?: Repair;
}

/** The key a finding keeps from one scan to the next. */
export function keyOf(f: { category: Category; subject: string }): string {
  return `${f.category}\0${f.subject}`;
}

/** Whether the database (as read in `db`) owns what `o` names; `running`: berthd holds the root. */
export function judge(owner: Owner, db: DbView, running: boolean): { known: boolean; why: string } {
  switch (owner.kind) {
    case 'berth-id':
      if (db.sandboxes.has(owner.id)) return { known: true, why: `pod sandbox ${short(owner.id)} (${db.sandboxes.get(owner.id)})` };
      if (db.containers.has(owner.id)) return { known: true, why: `container ${short(owner.id)} (${db.containers.get(owner.id)})` };
      return { known: false, why: `no pod sandbox or container ${short(owner.id)} in the database` };
    case 'snapshot':
      return db.snapshots.has(owner.id)
        ? { known: true, why: `snapshot ${owner.id} (${db.snapshots.get(owner.id)})` }
        : { known: false, why: `no snapshot row ${owner.id}` };
    case 'blob-file':
      if (db.blobs.has(owner.digest)) return { known: true, why: 'blob row' };
      // A download renames its file into place, then inserts the row: give it time.
      if (running && owner.recent) return { known: true, why: 'no row yet; written in the last minute (a download may be committing it)' };
      return { known: false, why: 'no blob row' };
    case 'unreferenced-blob':
      if (running) return { known: true, why: 'no image references it; a pull in flight may (judged with berthd stopped)' };
      return { known: false, why: 'orphaned: no image references it' };
    case 'in-flight':
      return running ? { known: true, why: 'berthd is running: work in progress' } : { known: false, why: 'berthd is stopped: left over' };
    case 'none':
      return { known: false, why: 'names no pod sandbox or container' };
  }
}

const ACTIONS: Record<Repair['kind'], string> = {
  unmount: 'unmount',
  'remove-pins': 'unmount the pins and remove them',
  cgroup: 'kill its processes and remove the cgroup',
  'kill-conmon': 'kill conmon and its container',
  'runtime-delete': 'runtime delete --force, then remove the state dir',
  remove: 'remove',
  'blob-row': 'delete the blob row and its file',
};

/** Judges one observation against the database. */
export function findingOf(o: Observation, db: DbView, running: boolean): Finding {
  const { known, why } = judge(o.owner, db, running);
  const owner = o.owner.kind === 'berth-id' || o.owner.kind === 'snapshot' ? o.owner.id : 'digest' in o.owner ? o.owner.digest : undefined;
  return {
    category: o.category,
    subject: o.subject,
    ...(owner !== undefined ? { owner } : {}),
    status: known ? 'known' : 'leaked',
    detail: o.detail === '' ? why : `${o.detail}; ${why}`,
    action: known ? 'none' : `${ACTIONS[o.repair.kind]} (berthd doctor --repair)`,
    ...(known ? {} : { repair: o.repair }),
  };
}

function short(id: string): string {
  return id.length > 12 ? id.slice(0, 12) : id;
}
