import type { Db } from '../store/database.js';
import { canTransition, type SandboxState } from './state.js';

export interface SandboxMetadata {
  name: string;
  namespace: string;
  uid: string;
  attempt: number;
}

export interface SandboxRecord {
  id: string;
  metadata: SandboxMetadata;
  state: SandboxState;
  /** The PodSandboxConfig as kubelet sent it (JSON-able). */
  config: Record<string, unknown>;
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
  runtime_handler: string;
  ns_dir: string | null;
  network: string | null;
  ips: string;
  acknowledged: number;
  created_at: string;
}

function toRecord(r: Row): SandboxRecord {
  return {
    id: r.id,
    metadata: { name: r.name, namespace: r.namespace, uid: r.uid, attempt: r.attempt },
    state: r.state,
    config: JSON.parse(r.config) as Record<string, unknown>,
    runtimeHandler: r.runtime_handler,
    nsDir: r.ns_dir,
    network: r.network === null ? null : (JSON.parse(r.network) as Record<string, unknown>),
    ips: JSON.parse(r.ips) as string[],
    acknowledged: r.acknowledged !== 0,
    createdAt: r.created_at,
  };
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
    this.insertStmt = db.prepare<[string, string, string, string, number, string, string, string]>(
      "INSERT INTO sandboxes (id, name, namespace, uid, attempt, state, config, runtime_handler, created_at) VALUES (?, ?, ?, ?, ?, 'creating', ?, ?, ?)",
    );
    this.deleteStmt = db.prepare<[string]>('DELETE FROM sandboxes WHERE id = ?');
    this.updateStmt = db.prepare<[string, string | null, string | null, string, number, string]>(
      'UPDATE sandboxes SET state = ?, ns_dir = ?, network = ?, ips = ?, acknowledged = ? WHERE id = ?',
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

  /** Records the intent to create a sandbox (state `creating`). */
  insert(id: string, m: SandboxMetadata, config: Record<string, unknown>, runtimeHandler: string, createdAt: string): void {
    this.insertStmt.run(id, m.name, m.namespace, m.uid, m.attempt, JSON.stringify(config), runtimeHandler, createdAt);
  }

  /**
   * Changes a sandbox in one transaction; `fn` gets the current record and returns the
   * fields to change. A state change must be a legal transition.
   */
  update(id: string, fn: (cur: SandboxRecord) => Partial<Pick<SandboxRecord, 'state' | 'nsDir' | 'network' | 'ips' | 'acknowledged'>>): SandboxRecord {
    return this.db.transaction(() => {
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
        id,
      );
      return next;
    })();
  }

  delete(id: string): void {
    this.deleteStmt.run(id);
  }
}
