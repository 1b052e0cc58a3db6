/**
 * Reloading the configuration while berthd runs (SIGHUP, `berthd reload`, systemd's
 * `ExecReload=`): the files are read again with the same command-line flags on top,
 * validated whole, and what {@link planReload} allows is put in force.
 *
 * - A file that fails to read, parse or validate changes nothing: the running config
 *   stays and one error line says why.
 * - A changed key that needs a restart keeps its running value, with one warning line
 *   naming the key; the other changes still apply.
 * - Reloads run one at a time, in the order asked.
 *
 * The outcome, and the config in force (passwords masked), are published in the state
 * dir as `berthd.config.json`, which `berthd reload` waits on and `berthd config` prints.
 */
import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { planReload, type LiveConfig } from './live.js';
import { redactedConfig, type LoadedConfig } from './load.js';
import type { BerthConfig } from './schema.js';

/** The file, in the state dir, that tells the config in force and the last reload's outcome. */
export const IN_FORCE_FILE = 'berthd.config.json';

export interface ReloadOutcome {
  at: string;
  ok: boolean;
  /** Why the new config was refused (when not ok). */
  error?: string;
  /** Keys whose new value is in force. */
  applied: string[];
  /** Keys whose new value needs a restart; their running value stays. */
  refused: string[];
}

/** What `berthd.config.json` holds. */
export interface InForceRecord {
  pid: number;
  /** 1 at start-up, one more per reload that put a config in force. */
  generation: number;
  /** Reloads attempted so far, refused ones included: `berthd reload` waits for it to grow. */
  reloads: number;
  loaded_at: string;
  sources: string[];
  /** The config in force, passwords masked. */
  config: BerthConfig;
  last_reload?: ReloadOutcome;
}

export interface ReloaderOptions {
  live: LiveConfig;
  /** Reads the files again, with the daemon's flags on top; throws ConfigError. */
  load(): LoadedConfig;
  /** Checks that go beyond the schema (e.g. that every pinned reference parses); throws to refuse. */
  check?(config: BerthConfig): void;
  stateDir: string;
  log: Logger;
  /** Told when a reload begins and ends (systemd's RELOADING=1 and READY=1). */
  onBegin?(): void;
  onEnd?(outcome: ReloadOutcome): void;
}

export class ConfigReloader {
  private reloads = 0;
  private last: ReloadOutcome | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  /** Set at shutdown: nothing is published after the record is removed. */
  private closed = false;

  constructor(private readonly o: ReloaderOptions) {}

  get file(): string {
    return join(this.o.stateDir, IN_FORCE_FILE);
  }

  /** Reloads once the reloads asked before have finished. Never rejects. */
  reload(): Promise<ReloadOutcome> {
    const next = this.queue.then(() => this.reloadNow());
    this.queue = next;
    return next;
  }

  private async reloadNow(): Promise<ReloadOutcome> {
    const { live, log } = this.o;
    this.o.onBegin?.();
    let outcome: ReloadOutcome;
    try {
      const { config, sources } = this.o.load();
      this.o.check?.(config);
      const plan = planReload(live.current, config);
      for (const r of plan.refused) {
        log.warn('config key needs a restart; its running value stays', { key: r.key, running: r.running, wanted: r.wanted });
      }
      live.replace(plan.config, sources);
      outcome = { at: new Date().toISOString(), ok: true, applied: plan.applied, refused: plan.refused.map((r) => r.key) };
      log.info('configuration reloaded', { generation: live.generation, applied: outcome.applied, refused: outcome.refused, config_files: sources });
    } catch (err) {
      outcome = { at: new Date().toISOString(), ok: false, error: messageOf(err), applied: [], refused: [] };
      log.error('configuration reload refused; the running configuration stays', { error: outcome.error });
    }
    this.reloads++;
    this.last = outcome;
    this.publish();
    this.o.onEnd?.(outcome);
    return outcome;
  }

  /**
   * Writes the config in force and the last outcome to the state dir (a temp file renamed
   * over, so readers never see half a record; not fsynced: it describes this boot's
   * daemon only). A failure is logged.
   */
  publish(): void {
    const { live } = this.o;
    if (this.closed) return;
    const record: InForceRecord = {
      pid: process.pid,
      generation: live.generation,
      reloads: this.reloads,
      loaded_at: live.loadedAt.toISOString(),
      sources: [...live.sources],
      config: redactedConfig(live.current),
      ...(this.last ? { last_reload: this.last } : {}),
    };
    const tmp = `${this.file}.tmp-${process.pid}`;
    try {
      writeFileSync(tmp, JSON.stringify(record, null, 2) + '\n', { mode: 0o600 });
      renameSync(tmp, this.file);
    } catch (err) {
      rmSync(tmp, { force: true });
      this.o.log.warn('cannot publish the config in force', { file: this.file, error: messageOf(err) });
    }
  }

  /** Removes the published record (at shutdown: no daemon, no config in force). */
  unpublish(): void {
    this.closed = true;
    rmSync(this.file, { force: true });
  }
}

/** The record a berthd publishes in `stateDir`, or undefined when there is none (or it is unreadable). */
export function readInForce(stateDir: string): InForceRecord | undefined {
  try {
    return JSON.parse(readFileSync(join(stateDir, IN_FORCE_FILE), 'utf8')) as InForceRecord;
  } catch {
    return undefined;
  }
}
