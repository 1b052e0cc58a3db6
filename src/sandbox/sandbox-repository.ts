import type { IdMap } from '../common/userns.js';
import type { TimelineStep } from '../common/timeline.js';
import { tracedSync } from '../common/trace-points.js';
import type { Db } from '../store/database.js';
import { ParsedJsonCache, lazyJsonField } from '../store/lazy-json.js';
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

interface Row {
  id: string;
  name: string;
  namespace: string;
  uid: string;
  attempt: number;
  state: SandboxState;
  config: string;
  facts: string;
  runtime_handler: string;
  ns_dir: string | null;
  network: string | null;
  ips: string;
  acknowledged: number;
  created_at: string;
}

/** The parsed facts of each pod, while its row holds the same text. */
const factsCache = new ParsedJsonCache(parseFacts);

function toRecord(r: Row): SandboxRecord {
  const rec: Omit<SandboxRecord, 'request' | 'network'> = {
    id: r.id,
    metadata: { name: r.name, namespace: r.namespace, uid: r.uid, attempt: r.attempt },
    state: r.state,
    facts: factsCache.get(r.id, r.facts),
    runtimeHandler: r.runtime_handler,
    nsDir: r.ns_dir,
    ips: JSON.parse(r.ips) as string[],
    acknowledged: r.acknowledged !== 0,
    createdAt: r.created_at,
  };
  // The CNI result is read by teardown and verbose status only: parsed when first read.
  const withNetwork = lazyJsonField<typeof rec, 'network', Record<string, unknown> | null>(rec, 'network', r.network ?? 'null');
  return lazyJsonField<typeof withNetwork, 'request', Record<string, unknown>>(withNetwork, 'request', r.config);
}

function parseFacts(id: string, text: string): PodFacts {
  const f = JSON.parse(text) as PodFacts;
  if (f.v !== POD_FACTS_VERSION) throw new Error(`sandbox ${id}: facts of version ${String(f.v)}; this berthd reads version ${POD_FACTS_VERSION}`);
  return f;
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

  constructor(private readonly db: Db) {
    this.getStmt = db.prepare<[string], Row>('SELECT * FROM sandboxes WHERE id = ?');
    this.byMetaStmt = db.prepare<[string, string, string, number], Row>('SELECT * FROM sandboxes WHERE name = ? AND namespace = ? AND uid = ? AND attempt = ?');
    this.allStmt = db.prepare<[], Row>('SELECT * FROM sandboxes ORDER BY created_at');
    this.prefixStmt = db.prepare<[string], { id: string }>("SELECT id FROM sandboxes WHERE id LIKE ? ESCAPE '\\'");
    this.insertStmt = db.prepare<[string, string, string, string, number, string, string, string, string]>(
      "INSERT INTO sandboxes (id, name, namespace, uid, attempt, state, config, facts, runtime_handler, created_at) VALUES (?, ?, ?, ?, ?, 'creating', ?, ?, ?, ?)",
    );
    this.deleteStmt = db.prepare<[string]>('DELETE FROM sandboxes WHERE id = ?');
    this.updateStmt = db.prepare<[string, string | null, string | null, string, number, string, string]>(
      'UPDATE sandboxes SET state = ?, ns_dir = ?, network = ?, ips = ?, acknowledged = ?, facts = ? WHERE id = ?',
    );
  }

  get(id: string): SandboxRecord | undefined {
    const r = this.getStmt.get(id);
    return r ? toRecord(r) : undefined;
  }

  byMetadata(m: SandboxMetadata): SandboxRecord | undefined {
    const r = this.byMetaStmt.get(m.name, m.namespace, m.uid, m.attempt);
    return r ? toRecord(r) : undefined;
  }

  /** Ids starting with `prefix` (crictl and users pass short ids). */
  idsWithPrefix(prefix: string): string[] {
    return this.prefixStmt.all(prefix.replace(/[\\%_]/g, (c) => '\\' + c) + '%').map((r) => r.id);
  }

  list(): SandboxRecord[] {
    return this.allStmt.all().map(toRecord);
  }

  /** Records the intent to create a sandbox (state `creating`), with its facts and the request as sent. */
  insert(id: string, m: SandboxMetadata, facts: PodFacts, request: Record<string, unknown>, runtimeHandler: string, createdAt: string): void {
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
        const next = { ...cur, ...ch };
        this.updateStmt.run(
          next.state,
          next.nsDir,
          next.network === null ? null : JSON.stringify(next.network),
          JSON.stringify(next.ips),
          next.acknowledged ? 1 : 0,
          JSON.stringify(next.facts),
          id,
        );
        return next;
      }),
    );
  }

  delete(id: string): void {
    this.deleteStmt.run(id);
    factsCache.delete(id);
  }
}
