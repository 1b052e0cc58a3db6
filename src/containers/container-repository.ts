import type { TimelineStep } from '../common/timeline.js';
import { tracedSync } from '../common/trace-points.js';
import type { Db } from '../store/database.js';
import { DATA_VERSION_COLUMN, RowDocuments, lazyJsonField, withChanges } from '../store/lazy-json.js';
import { RecordCache } from '../store/record-cache.js';
import type { CriMount } from './mounts.js';
import type { SelinuxOptions } from './selinux.js';
import type { CriLinuxResources } from './spec.js';
import { canTransition, type ContainerState } from './state.js';

/**
 * What was decided about a container when it was made, so nothing re-reads the request.
 * The version says which shape the JSON document has (a new shape is a new version and a
 * migration that converts the stored ones).
 */
export interface ContainerFacts {
  v: 1;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  /** The rest of the request's ImageSpec (the reference itself is `imageRef`, the image `imageId`). */
  image: { annotations: Record<string, string>; userSpecifiedImage: string; runtimeHandler: string };
  tty: boolean;
  stdin: boolean;
  stdinOnce: boolean;
  /** The LinuxContainerResources in force: as created, then as UpdateContainerResources merged them. */
  resources: CriLinuxResources | null;
  /** The CRI mounts, as requested (ContainerStatus reports them). */
  mounts: CriMount[];
  privileged: boolean;
  selinuxOptions: SelinuxOptions | null;
  /** The identity the process runs as, as resolved into the OCI spec; null when unknown. */
  user: { uid: number; gid: number; supplementalGroups: number[] } | null;
  /** The signal StopContainer sends first (a CRI Signal name), as decided into the OCI spec; null when unknown. */
  stopSignal: string | null;
  /**
   * The steps of CreateContainer and StartContainer and their times (common/timeline.ts),
   * at most 64. Optional, so version 1 documents without it stay valid ones.
   */
  timeline?: TimelineStep[];
}

export const CONTAINER_FACTS_VERSION = 1;

function parseFacts(id: string, text: string): ContainerFacts {
  const f = JSON.parse(text) as ContainerFacts;
  if (f.v !== CONTAINER_FACTS_VERSION)
    throw new Error(`container ${id}: facts of version ${String(f.v)}; this berthd reads version ${CONTAINER_FACTS_VERSION}`);
  return f;
}

export interface ContainerRecord {
  id: string;
  sandboxId: string;
  name: string;
  attempt: number;
  imageId: string;
  /** The image as the CRI request named it. */
  imageRef: string;
  state: ContainerState;
  facts: ContainerFacts;
  /** The ContainerConfig as kubelet sent it (JSON-able), shown only by verbose status. */
  request: Record<string, unknown>;
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

/** A row as read: without `config` and `facts`, which are read when wanted (see toRecord). */
interface Row {
  data_version: number;
  id: string;
  sandbox_id: string;
  name: string;
  attempt: number;
  image_id: string;
  image_ref: string;
  state: ContainerState;
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

/** The columns read for a record; `config` (the request) and `facts` are read apart. */
const COLUMNS = `${DATA_VERSION_COLUMN}, id, sandbox_id, name, attempt, image_id, image_ref, state, log_path, pid, shim_pid, exit_code, reason, message, created_at, started_at, finished_at`;

/**
 * A record of a row: its facts from `facts` (read and parsed once per change), the request
 * read from the row when first wanted (`{}` should the row be gone by then).
 */
function toRecord(r: Row, facts: ContainerFacts, config: (id: string) => string | undefined): ContainerRecord {
  const rec: Omit<ContainerRecord, 'request'> = {
    id: r.id,
    sandboxId: r.sandbox_id,
    name: r.name,
    attempt: r.attempt,
    imageId: r.image_id,
    imageRef: r.image_ref,
    state: r.state,
    facts,
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
  return lazyJsonField<typeof rec, 'request', Record<string, unknown>>(rec, 'request', () => config(r.id) ?? '{}');
}

export type ContainerChange = Partial<Pick<ContainerRecord, 'state' | 'pid' | 'shimPid' | 'exitCode' | 'reason' | 'message' | 'startedAt' | 'finishedAt'>> & {
  /** Facts changed with the state, in the same transaction (merged into the current ones). */
  facts?: Partial<ContainerFacts>;
};

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
  private readonly updateFactsStmt;
  private readonly facts: RowDocuments<ContainerFacts>;
  private readonly config: (id: string) => string | undefined;
  /** Records by id and the whole list, kept between writes (status and list calls read them every second). */
  private readonly cache: RecordCache<ContainerRecord>;

  constructor(private readonly db: Db) {
    this.cache = new RecordCache(db);
    this.getStmt = db.prepare<[string], Row>(`SELECT ${COLUMNS} FROM containers WHERE id = ?`);
    this.allStmt = db.prepare<[], Row>(`SELECT ${COLUMNS} FROM containers ORDER BY created_at`);
    this.bySandboxStmt = db.prepare<[string], Row>(`SELECT ${COLUMNS} FROM containers WHERE sandbox_id = ? ORDER BY created_at`);
    this.byNameStmt = db.prepare<[string, string, number], Row>(`SELECT ${COLUMNS} FROM containers WHERE sandbox_id = ? AND name = ? AND attempt = ?`);
    const factsStmt = db.prepare<[string], string>('SELECT facts FROM containers WHERE id = ?').pluck();
    this.facts = new RowDocuments(db, (id) => factsStmt.get(id), parseFacts);
    const configStmt = db.prepare<[string], string>('SELECT config FROM containers WHERE id = ?').pluck();
    this.config = (id) => configStmt.get(id);
    this.prefixStmt = db.prepare<[string], { id: string }>("SELECT id FROM containers WHERE id LIKE ? ESCAPE '\\'");
    this.insertStmt = db.prepare<[string, string, string, number, string, string, string, string, string, string]>(
      "INSERT INTO containers (id, sandbox_id, name, attempt, image_id, image_ref, state, config, facts, log_path, created_at) VALUES (?, ?, ?, ?, ?, ?, 'creating', ?, ?, ?, ?)",
    );
    this.deleteStmt = db.prepare<[string]>('DELETE FROM containers WHERE id = ?');
    this.updateFactsStmt = db.prepare<[string, string]>('UPDATE containers SET facts = ? WHERE id = ?');
    this.updateStmt = db.prepare(
      'UPDATE containers SET state = @state, pid = @pid, shim_pid = @shimPid, exit_code = @exitCode, reason = @reason, message = @message, started_at = @startedAt, finished_at = @finishedAt WHERE id = @id',
    );
  }

  /** The record of a row read (undefined when its facts are gone: deleted in between). */
  private record(r: Row | undefined): ContainerRecord | undefined {
    if (r === undefined) return undefined;
    const facts = this.facts.get(r.id, r.data_version);
    return facts === undefined ? undefined : toRecord(r, facts, this.config);
  }

  private records(rows: Row[]): ContainerRecord[] {
    return rows.map((r) => this.record(r)).filter((c): c is ContainerRecord => c !== undefined);
  }

  get(id: string): ContainerRecord | undefined {
    return this.cache.get(id, (key) => this.record(this.getStmt.get(key)));
  }

  idsWithPrefix(prefix: string): string[] {
    return this.prefixStmt.all(prefix.replace(/[\\%_]/g, (c) => '\\' + c) + '%').map((r) => r.id);
  }

  byName(sandboxId: string, name: string, attempt: number): ContainerRecord | undefined {
    return this.record(this.byNameStmt.get(sandboxId, name, attempt));
  }

  list(): ContainerRecord[] {
    return this.cache.all(() => this.records(this.allStmt.all()));
  }

  ofSandbox(sandboxId: string): ContainerRecord[] {
    return this.records(this.bySandboxStmt.all(sandboxId));
  }

  insert(c: {
    id: string;
    sandboxId: string;
    name: string;
    attempt: number;
    imageId: string;
    imageRef: string;
    facts: ContainerFacts;
    request: Record<string, unknown>;
    logPath: string;
    createdAt: string;
  }): void {
    this.facts.forget(c.id);
    this.cache.forget(c.id);
    this.insertStmt.run(
      c.id,
      c.sandboxId,
      c.name,
      c.attempt,
      c.imageId,
      c.imageRef,
      JSON.stringify(c.request),
      JSON.stringify(c.facts),
      c.logPath,
      c.createdAt,
    );
  }

  /**
   * Changes a container in one transaction (one commit, one WAL write): its state and, when
   * the change has `facts`, its facts too. A state change must be a legal transition.
   */
  update(id: string, fn: (cur: ContainerRecord) => ContainerChange): ContainerRecord {
    return tracedSync(
      'berth:db.write',
      { table: 'containers' },
      this.db.transaction(() => {
        const cur = this.get(id);
        if (!cur) throw new Error(`container ${id} vanished`);
        const { facts: factsChange, ...ch } = fn(cur);
        if (ch.state !== undefined && !canTransition(cur.state, ch.state)) throw new Error(`container ${id}: illegal transition ${cur.state} -> ${ch.state}`);
        this.cache.forget(id);
        const next: ContainerRecord = withChanges(cur, ch);
        if (factsChange !== undefined) {
          next.facts = { ...cur.facts, ...factsChange };
          this.facts.forget(id);
          this.updateFactsStmt.run(JSON.stringify(next.facts), id);
        }
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
      }),
    );
  }

  /** Changes a container's facts in one transaction (resources after an update; user and stop signal learnt from the spec). */
  updateFacts(id: string, fn: (cur: ContainerFacts) => Partial<ContainerFacts>): ContainerRecord {
    return this.db.transaction(() => {
      const cur = this.get(id);
      if (!cur) throw new Error(`container ${id} vanished`);
      const facts: ContainerFacts = { ...cur.facts, ...fn(cur.facts) };
      this.facts.forget(id);
      this.cache.forget(id);
      this.updateFactsStmt.run(JSON.stringify(facts), id);
      return withChanges(cur, { facts });
    })();
  }

  delete(id: string): void {
    this.facts.forget(id);
    this.cache.forget(id);
    this.deleteStmt.run(id);
  }
}
