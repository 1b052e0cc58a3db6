/**
 * `berthd doctor`: compares what the database knows with what exists on the node, and
 * with `repair` removes what nothing in the database owns. Read-only by default, and
 * safe beside a running berthd: the node is scanned first and the database read after,
 * so anything berthd was making meanwhile is already recorded (berth records intent
 * before touching the node), and each repair checks its finding again just before it acts.
 */
import { readFileSync } from 'node:fs';
import type { BerthConfig } from '../config/schema.js';
import { findNetwork } from '../sandbox/cni/conf-dir.js';
import type { Db } from '../store/database.js';
import { integrityProblems, readDbView, type DbView } from './db-view.js';
import { findingOf, judge, type Finding, type Observation, type Repair } from './findings.js';
import { scanNode } from './node-scan.js';
import { runRepair } from './repair.js';

export interface DoctorContext {
  config: BerthConfig;
  /** berthd holds the root lock. */
  running: boolean;
  db: Db;
  /** Cgroup parents to look under besides the pods' ("/" for the root cgroup). */
  cgroupParents: readonly string[];
}

/** A finding with the observation it came from, for the re-check before a repair. */
interface Judged extends Finding {
  observation?: Observation;
}

export interface RepairOutcome {
  category: Finding['category'];
  subject: string;
  owner?: string;
  ok: boolean;
  result: string;
}

/** Everything doctor finds: the node's objects judged against the database, and the database's own soundness. */
export async function diagnose(ctx: DoctorContext): Promise<Finding[]> {
  return (await judgedFindings(ctx)).map(({ observation: _o, ...f }) => f);
}

async function judgedFindings(ctx: DoctorContext): Promise<Judged[]> {
  const observations = await observe(ctx, readDbView(ctx.db));
  // Read after the scan: what the node holds was recorded before it was made.
  const view = readDbView(ctx.db);
  const unreferenced = new Set(view.unreferencedBlobs);
  const out: Judged[] = observations.map((o) => {
    const adjusted = adoptOrphanBlob(o, unreferenced);
    return { ...findingOf(adjusted, view, ctx.running), observation: adjusted };
  });
  for (const [id, pid] of view.containerPids) {
    if (!aliveNotZombie(pid)) continue;
    out.push({
      category: 'container process',
      subject: `pid ${pid}`,
      owner: id,
      status: 'known',
      detail: `init of container ${id.slice(0, 12)} (${view.containers.get(id)})`,
      action: 'none',
    });
  }
  const problems = integrityProblems(ctx.db);
  out.push({
    category: 'database',
    subject: ctx.db.name,
    status: problems.length === 0 ? 'known' : 'damaged',
    detail: problems.length === 0 ? 'integrity_check ok, foreign keys ok' : problems.slice(0, 5).join('; '),
    action: problems.length === 0 ? 'none' : 'stop berthd and restore the database from a backup (doctor does not repair it)',
  });
  return out;
}

/** A blob whose row no image references is an orphan (its repair deletes the row, then the file). */
function adoptOrphanBlob(o: Observation, unreferenced: ReadonlySet<string>): Observation {
  if (o.owner.kind !== 'blob-file' || !unreferenced.has(o.owner.digest)) return o;
  return { ...o, owner: { kind: 'unreferenced-blob', digest: o.owner.digest }, repair: { kind: 'blob-row', digest: o.owner.digest, path: o.subject } };
}

/** The node scan, looking under the cgroup parents and CNI networks the database and config name. */
async function observe(ctx: DoctorContext, before: DbView): Promise<Observation[]> {
  const conf = await findNetwork(ctx.config.cni.conf_dir);
  const parents = new Set([...before.cgroupParents].filter((p) => p !== '' && p !== '/'));
  for (const p of ctx.cgroupParents) parents.add(p === '/' ? '' : p);
  return scanNode({ config: ctx.config, cgroupParents: parents, networks: [...(conf.found ? [conf.network] : []), ...before.networks] });
}

/** Processes first: a killed conmon writes its exit file, and the runtime's delete removes its cgroup. */
const PROCESS_REPAIRS: ReadonlySet<Repair['kind']> = new Set(['runtime-delete', 'kill-conmon']);
/** Then mounts (deepest first) before the dirs that hold them, and cgroups once their processes are gone. */
const ORDER: Repair['kind'][] = ['unmount', 'remove-pins', 'cgroup', 'remove', 'blob-row'];

/**
 * Repairs what is leaked: processes first, then, from a fresh scan, mounts, pins,
 * cgroups, files and blobs. Each repair re-reads the database and acts only if its
 * owner is still unknown. `writableDb`: given with berthd stopped, for orphaned blob rows.
 */
export async function repair(ctx: DoctorContext, writableDb?: Db): Promise<RepairOutcome[]> {
  const outcomes: RepairOutcome[] = [];
  const pass = async (kinds: ReadonlySet<Repair['kind']>): Promise<void> => {
    const leaked = (await judgedFindings(ctx)).filter((f) => f.status === 'leaked' && f.repair && kinds.has(f.repair.kind));
    leaked.sort((a, b) => ORDER.indexOf(a.repair!.kind) - ORDER.indexOf(b.repair!.kind) || b.subject.length - a.subject.length);
    for (const f of leaked) {
      const which = { category: f.category, subject: f.subject, ...(f.owner !== undefined ? { owner: f.owner } : {}) };
      const now = readDbView(ctx.db);
      if (f.observation && judge(f.observation.owner, now, ctx.running).known) {
        outcomes.push({ ...which, ok: true, result: 'now known to berth: left alone' });
        continue;
      }
      try {
        const result = await runRepair(f.repair!, { config: ctx.config, ...(writableDb ? { db: writableDb } : {}) });
        outcomes.push({ ...which, ok: true, result });
      } catch (err) {
        outcomes.push({ ...which, ok: false, result: err instanceof Error ? err.message : String(err) });
      }
    }
  };
  await pass(PROCESS_REPAIRS);
  await pass(new Set(ORDER));
  return outcomes;
}

function aliveNotZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}
