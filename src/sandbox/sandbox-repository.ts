import { errnoOf } from '../common/errors.js';
import type { IdMap } from '../common/userns.js';
import type { TimelineStep } from '../common/timeline.js';
import { tracedSync } from '../common/trace-points.js';
import type { Db } from '../store/database.js';
import { DATA_VERSION_COLUMN, RowDocuments, lazyJsonField, withChanges } from '../store/lazy-json.js';
import { RecordCache } from '../store/record-cache.js';
import type { PortMapping } from './cni/protocol.js';
import type { DnsConfig } from './pod-files.js';
import { canTransition, type SandboxState } from './state.js';

export interface SandboxMetadata {
  name: string;
  namespace: string;
  uid: string;
  attempt: number;
}

/** How a pod holds one of its namespaces: its own (POD), or the host's (NODE). */
export type NamespaceMode = 'POD' | 'CONTAINER' | 'NODE' | 'TARGET';

/** LinuxContainerResources as numbers (a pod's overhead and resources, as kubelet sized them). */
export interface PodResources {
  cpu_period: number;
  cpu_quota: number;
  cpu_shares: number;
  memory_limit_in_bytes: number;
  oom_score_adj: number;
  cpuset_cpus: string;
  cpuset_mems: string;
  hugepage_limits: Array<{ page_size: string; limit: number }>;
  unified: Record<string, string>;
  memory_swap_limit_in_bytes: number;
}

/**
 * What was decided about a pod when it was made, so nothing re-reads the request: the
 * version says which shape the JSON document has (a new shape is a new version and a
 * migration that converts the stored ones).
 */
export interface PodFacts {
  v: 1;
  /** The hostname as applied (kubelet's, else derived from the pod name, else the node's for host-network pods). */
  hostname: string;
  /** Where kubelet wants the containers' logs ('' when it did not say). */
  logDirectory: string;
  namespaces: { network: NamespaceMode; pid: NamespaceMode; ipc: NamespaceMode };
  /** The pod's own user namespace (userns_options mode POD); null: the host's. */
  userns: { uids: IdMap[]; gids: IdMap[] } | null;
  cgroupParent: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  /** The port mappings given to CNI (those with a host port). */
  portMappings: PortMapping[];
  /** The DNS config written into resolv.conf; null: the host's resolv.conf. */
  dns: DnsConfig | null;
  sysctls: Record<string, string>;
  /** LinuxPodSandboxConfig.overhead and .resources, as at creation or as UpdatePodSandboxResources last set them. */
  overhead: PodResources | null;
  resources: PodResources | null;
  /**
   * The steps of RunPodSandbox, then of StopPodSandbox, and their times (common/timeline.ts),
   * at most 64; absent before the pod is ready and in pods made by a berthd without timelines. Optional, so
   * version 1 documents without it stay valid ones.
   */
  timeline?: TimelineStep[];
}

export const POD_FACTS_VERSION = 1;

export interface SandboxRecord {
  id: string;
  metadata: SandboxMetadata;
  state: SandboxState;
  facts: PodFacts;
  /** The PodSandboxConfig as kubelet sent it (JSON-able), shown only by verbose status. */
  request: Record<string, unknown>;
  runtimeHandler: string;
  /** Directory of the pinned namespaces, when the pod has its own. */
  nsDir: string | null;
  /** The CNI result, kept for DEL. */
  network: Record<string, unknown> | null;
  ips: string[];
  /** Whether kubelet received the RunPodSandbox answer (else it is handed back on retry). */
  acknowledged: boolean;
  /** Creation time, nanoseconds since the epoch, as a decimal string. */
  createdAt: string;
}

/** A row as read: without `config`, `facts` and `network`, which are read when wanted (see toRecord). */
interface Row {
  data_version: number;
  id: string;
  name: string;
  namespace: string;
  uid: string;
  attempt: number;
  state: SandboxState;
  runtime_handler: string;
  ns_dir: string | null;
  ips: string;
  acknowledged: number;
  created_at: string;
}

/** The columns read for a record; `config` (the request), `facts` and `network` are read apart. */
const COLUMNS = `${DATA_VERSION_COLUMN}, id, name, namespace, uid, attempt, state, runtime_handler, ns_dir, ips, acknowledged, created_at`;

/** What toRecord reads from the row apart, when first wanted (undefined should the row be gone by then). */
interface RowReads {
  config(id: string): string | undefined;
  network(id: string): string | null | undefined;
}

/** A record of a row: its facts from `facts` (read and parsed once per change); the request and CNI result read when first wanted. */
function toRecord(r: Row, facts: PodFacts, reads: RowReads): SandboxRecord {
  const rec: Omit<SandboxRecord, 'request' | 'network'> = {
    id: r.id,
    metadata: { name: r.name, namespace: r.namespace, uid: r.uid, attempt: r.attempt },
    state: r.state,
    facts,
    runtimeHandler: r.runtime_handler,
    nsDir: r.ns_dir,
    ips: JSON.parse(r.ips) as string[],
    acknowledged: r.acknowledged !== 0,
    createdAt: r.created_at,
  };
  // The CNI result is read by teardown and verbose status only.
  const withNetwork = lazyJsonField<typeof rec, 'network', Record<string, unknown> | null>(rec, 'network', () => reads.network(r.id) ?? 'null');
  return lazyJsonField<typeof withNetwork, 'request', Record<string, unknown>>(withNetwork, 'request', () => reads.config(r.id) ?? '{}');
}

function parseFacts(id: string, text: string): PodFacts {
  const f = JSON.parse(text) as PodFacts;
  if (f.v !== POD_FACTS_VERSION) throw new Error(`sandbox ${id}: facts of version ${String(f.v)}; this berthd reads version ${POD_FACTS_VERSION}`);
  return f;
}

/** The parameters of the row update: `network` and `facts` are written only when `setNetwork` and `setFacts` are 1. */
interface UpdateParams {
  id: string;
  state: SandboxState;
  nsDir: string | null;
  ips: string;
  acknowledged: number;
  setNetwork: number;
  network: string | null;
  setFacts: number;
  facts: string | null;
}

/** Pod sandboxes. Owns `sandboxes`. Every state change goes through {@link update}. */
export class SandboxRepository {
  private readonly getStmt;
  private readonly byMetaStmt;
  private readonly allStmt;
  private readonly insertStmt;
  private readonly deleteStmt;
  private readonly prefixStmt;
  private readonly updateStmt;
  private readonly facts: RowDocuments<PodFacts>;
  private readonly reads: RowReads;
  /** Records by id and the whole list, kept between writes (status and list calls read them every second). */
  private readonly cache: RecordCache<SandboxRecord>;

  constructor(private readonly db: Db) {
    this.cache = new RecordCache(db);
    this.getStmt = db.prepare<[string], Row>(`SELECT ${COLUMNS} FROM sandboxes WHERE id = ?`);
    this.byMetaStmt = db.prepare<[string, string, string, number], Row>(
      `SELECT ${COLUMNS} FROM sandboxes WHERE name = ? AND namespace = ? AND uid = ? AND attempt = ?`,
    );
    this.allStmt = db.prepare<[], Row>(`SELECT ${COLUMNS} FROM sandboxes ORDER BY created_at`);
    const factsStmt = db.prepare<[string], string>('SELECT facts FROM sandboxes WHERE id = ?').pluck();
    this.facts = new RowDocuments(db, (id) => factsStmt.get(id), parseFacts);
    const configStmt = db.prepare<[string], string>('SELECT config FROM sandboxes WHERE id = ?').pluck();
    const networkStmt = db.prepare<[string], string | null>('SELECT network FROM sandboxes WHERE id = ?').pluck();
    this.reads = { config: (id) => configStmt.get(id), network: (id) => networkStmt.get(id) };
    this.prefixStmt = db.prepare<[string], { id: string }>("SELECT id FROM sandboxes WHERE id LIKE ? ESCAPE '\\'");
    this.insertStmt = db.prepare<[string, string, string, string, number, string, string, string, string]>(
      "INSERT INTO sandboxes (id, name, namespace, uid, attempt, state, config, facts, runtime_handler, created_at) VALUES (?, ?, ?, ?, ?, 'creating', ?, ?, ?, ?)",
    );
    this.deleteStmt = db.prepare<[string]>('DELETE FROM sandboxes WHERE id = ?');
    // The CNI result and the facts are written only when the change has them: the record's
    // network is read from its row when first wanted, and a state change need not read it.
    this.updateStmt = db.prepare<[UpdateParams]>(
      'UPDATE sandboxes SET state = @state, ns_dir = @nsDir, ips = @ips, acknowledged = @acknowledged, ' +
        'network = CASE WHEN @setNetwork THEN @network ELSE network END, facts = CASE WHEN @setFacts THEN @facts ELSE facts END WHERE id = @id',
    );
  }

  /** The record of a row read (undefined when its facts are gone: deleted in between). */
  private record(r: Row | undefined): SandboxRecord | undefined {
    if (r === undefined) return undefined;
    const facts = this.facts.get(r.id, r.data_version);
    return facts === undefined ? undefined : toRecord(r, facts, this.reads);
  }

  get(id: string): SandboxRecord | undefined {
    return this.cache.get(id, (key) => this.record(this.getStmt.get(key)));
  }

  byMetadata(m: SandboxMetadata): SandboxRecord | undefined {
    return this.record(this.byMetaStmt.get(m.name, m.namespace, m.uid, m.attempt));
  }

  /** Ids starting with `prefix` (crictl and users pass short ids). */
  idsWithPrefix(prefix: string): string[] {
    return this.prefixStmt.all(prefix.replace(/[\\%_]/g, (c) => '\\' + c) + '%').map((r) => r.id);
  }

  list(): SandboxRecord[] {
    return this.cache.all(() =>
      this.allStmt
        .all()
        .map((r) => this.record(r))
        .filter((r): r is SandboxRecord => r !== undefined),
    );
  }

  /** Records the intent to create a sandbox (state `creating`), with its facts and the request as sent. */
  insert(id: string, m: SandboxMetadata, facts: PodFacts, request: Record<string, unknown>, runtimeHandler: string, createdAt: string): void {
    this.facts.forget(id);
    this.cache.forget(id);
    this.insertStmt.run(id, m.name, m.namespace, m.uid, m.attempt, JSON.stringify(request), JSON.stringify(facts), runtimeHandler, createdAt);
  }

  /**
   * Changes a sandbox in one transaction; `fn` gets the current record and returns the
   * fields to change. A state change must be a legal transition.
   */
  update(
    id: string,
    fn: (cur: SandboxRecord) => Partial<Pick<SandboxRecord, 'state' | 'nsDir' | 'network' | 'ips' | 'acknowledged' | 'facts'>>,
  ): SandboxRecord {
    return tracedSync(
      'berth:db.write',
      { table: 'sandboxes' },
      this.db.transaction(() => {
        const cur = this.get(id);
        if (!cur) throw new Error(`sandbox ${id} vanished`);
        const ch = fn(cur);
        if (ch.state !== undefined && ch.state !== cur.state && !canTransition(cur.state, ch.state)) {
          throw new Error(`sandbox ${id}: illegal transition ${cur.state} -> ${ch.state}`);
        }
        const next = withChanges<SandboxRecord>(cur, ch);
        if (ch.facts !== undefined) this.facts.forget(id);
        this.cache.forget(id);
        this.updateStmt.run({
          id,
          state: next.state,
          nsDir: next.nsDir,
          ips: JSON.stringify(next.ips),
          acknowledged: next.acknowledged ? 1 : 0,
          setNetwork: ch.network !== undefined ? 1 : 0,
          network: ch.network ? JSON.stringify(ch.network) : null,
          setFacts: ch.facts !== undefined ? 1 : 0,
          facts: ch.facts !== undefined ? JSON.stringify(ch.facts) : null,
        });
        return next;
      }),
    );
  }

  delete(id: string): void {
    this.facts.forget(id);
    this.cache.forget(id);
    this.deleteStmt.run(id);
  }

  /**
   * Deletes the pod's row unless a container's row still names it (containers reference
   * their pod): false then, and nothing deleted.
   */
  deleteIfNoContainers(id: string): boolean {
    try {
      this.delete(id);
      return true;
    } catch (err) {
      if (errnoOf(err) === 'SQLITE_CONSTRAINT_FOREIGNKEY') return false;
      throw err;
    }
  }
}
