import type { Db } from '../store/database.js';
import { canTransition, type ContainerState } from './state.js';

export interface ContainerRecord {
  id: string;
  sandboxId: string;
  name: string;
  attempt: number;
  imageId: string;
  /** The image as the CRI request named it. */
  imageRef: string;
  state: ContainerState;
  /** The ContainerConfig as kubelet sent it (JSON-able). */
  config: Record<string, unknown>;
  logPath: string;
  pid: number | null;
  shimPid: number | null;
  exitCode: number | null;
  reason: string;
  message: string;
  /** Nanoseconds since the epoch, as decimal strings ('0' when not yet). */
  createdAt: string;
  startedAt: string;
  finishedAt: string;
}

interface Row {
  id: string;
  sandbox_id: string;
  name: string;
  attempt: number;
  image_id: string;
  image_ref: string;
  state: ContainerState;
  config: string;
  log_path: string;
  pid: number | null;
  shim_pid: number | null;
  exit_code: number | null;
  reason: string;
  message: string;
  created_at: string;
  started_at: string;
  finished_at: string;
}

function toRecord(r: Row): ContainerRecord {
  return {
    id: r.id,
    sandboxId: r.sandbox_id,
    name: r.name,
    attempt: r.attempt,
    imageId: r.image_id,
    imageRef: r.image_ref,
    state: r.state,
    config: JSON.parse(r.config) as Record<string, unknown>,
    logPath: r.log_path,
    pid: r.pid,
    shimPid: r.shim_pid,
    exitCode: r.exit_code,
    reason: r.reason,
    message: r.message,
    createdAt: r.created_at,
    startedAt: r.started_at,
    finishedAt: r.finished_at,
  };
}

export type ContainerChange = Partial<Pick<ContainerRecord, 'state' | 'pid' | 'shimPid' | 'exitCode' | 'reason' | 'message' | 'startedAt' | 'finishedAt'>>;

/** Containers. Owns `containers`. Every state change goes through {@link update}. */
export class ContainerRepository {
  private readonly getStmt;
  private readonly allStmt;
  private readonly bySandboxStmt;
  private readonly byNameStmt;
  private readonly prefixStmt;
  private readonly insertStmt;
  private readonly deleteStmt;
  private readonly updateStmt;
  private readonly updateConfigStmt;

  constructor(private readonly db: Db) {
    this.getStmt = db.prepare<[string], Row>('SELECT * FROM containers WHERE id = ?');
    this.allStmt = db.prepare<[], Row>('SELECT * FROM containers ORDER BY created_at');
    this.bySandboxStmt = db.prepare<[string], Row>('SELECT * FROM containers WHERE sandbox_id = ? ORDER BY created_at');
    this.byNameStmt = db.prepare<[string, string, number], Row>('SELECT * FROM containers WHERE sandbox_id = ? AND name = ? AND attempt = ?');
    this.prefixStmt = db.prepare<[string], { id: string }>("SELECT id FROM containers WHERE id LIKE ? ESCAPE '\\'");
    this.insertStmt = db.prepare<[string, string, string, number, string, string, string, string, string]>(
      "INSERT INTO containers (id, sandbox_id, name, attempt, image_id, image_ref, state, config, log_path, created_at) VALUES (?, ?, ?, ?, ?, ?, 'creating', ?, ?, ?)",
    );
    this.deleteStmt = db.prepare<[string]>('DELETE FROM containers WHERE id = ?');
    this.updateConfigStmt = db.prepare<[string, string]>('UPDATE containers SET config = ? WHERE id = ?');
    this.updateStmt = db.prepare(
      'UPDATE containers SET state = @state, pid = @pid, shim_pid = @shimPid, exit_code = @exitCode, reason = @reason, message = @message, started_at = @startedAt, finished_at = @finishedAt WHERE id = @id',
    );
  }

  get(id: string): ContainerRecord | undefined {
    const r = this.getStmt.get(id);
    return r ? toRecord(r) : undefined;
  }

  idsWithPrefix(prefix: string): string[] {
    return this.prefixStmt.all(prefix.replace(/[\\%_]/g, (c) => '\\' + c) + '%').map((r) => r.id);
  }

  byName(sandboxId: string, name: string, attempt: number): ContainerRecord | undefined {
    const r = this.byNameStmt.get(sandboxId, name, attempt);
    return r ? toRecord(r) : undefined;
  }

  list(): ContainerRecord[] {
    return this.allStmt.all().map(toRecord);
  }

  ofSandbox(sandboxId: string): ContainerRecord[] {
    return this.bySandboxStmt.all(sandboxId).map(toRecord);
  }

  insert(c: {
    id: string;
    sandboxId: string;
    name: string;
    attempt: number;
    imageId: string;
    imageRef: string;
    config: Record<string, unknown>;
    logPath: string;
    createdAt: string;
  }): void {
    this.insertStmt.run(c.id, c.sandboxId, c.name, c.attempt, c.imageId, c.imageRef, JSON.stringify(c.config), c.logPath, c.createdAt);
  }

  /** Changes a container in one transaction; a state change must be a legal transition. */
  update(id: string, fn: (cur: ContainerRecord) => ContainerChange): ContainerRecord {
    return this.db.transaction(() => {
      const cur = this.get(id);
      if (!cur) throw new Error(`container ${id} vanished`);
      const ch = fn(cur);
      if (ch.state !== undefined && !canTransition(cur.state, ch.state)) throw new Error(`container ${id}: illegal transition ${cur.state} -> ${ch.state}`);
      const next = { ...cur, ...ch };
      this.updateStmt.run({
        id,
        state: next.state,
        pid: next.pid,
        shimPid: next.shimPid,
        exitCode: next.exitCode,
        reason: next.reason,
        message: next.message,
        startedAt: next.startedAt,
        finishedAt: next.finishedAt,
      });
      return next;
    })();
  }

  /** Replaces the recorded ContainerConfig (after UpdateContainerResources). */
  updateConfig(id: string, config: Record<string, unknown>): void {
    this.updateConfigStmt.run(JSON.stringify(config), id);
  }

  delete(id: string): void {
    this.deleteStmt.run(id);
  }
}
