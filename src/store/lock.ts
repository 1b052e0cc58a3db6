/**
 * An exclusive, crash-safe lock on a directory, so that two berthd processes never
 * share a root or a state directory.
 *
 * The lock is a POSIX record lock taken through SQLite on `<dir>/berthd.lock`
 * (`locking_mode=EXCLUSIVE` plus an open write transaction): the kernel drops it when
 * the holder exits for any reason, kill -9 included, so a lock is never stale. The
 * holder's pid is written beside it (`berthd.pid`) only to make the refusal message
 * useful; the pid file itself grants nothing.
 */
import Database from 'better-sqlite3';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BerthError, messageOf } from '../common/errors.js';

export class DirectoryLock {
  private constructor(
    private readonly db: Database.Database,
    private readonly pidFile: string,
  ) {}

  /** Takes the lock on `dir` or throws a FailedPrecondition naming the holder. */
  static acquire(dir: string, what: string): DirectoryLock {
    mkdirSync(dir, { recursive: true, mode: 0o711 });
    const lockFile = join(dir, 'berthd.lock');
    const pidFile = join(dir, 'berthd.pid');
    const db = new Database(lockFile, { timeout: 0 });
    try {
      db.pragma('locking_mode = EXCLUSIVE');
      db.exec('BEGIN EXCLUSIVE');
    } catch (err) {
      db.close();
      let holder = '';
      try {
        holder = ` (pid ${readFileSync(pidFile, 'utf8').trim()})`;
      } catch {
        // no pid file: the message goes without it
      }
      throw new BerthError(
        'FailedPrecondition',
        `another berthd${holder} is using ${what} ${dir} (lock ${lockFile} is held: ${messageOf(err)}); ` +
          'stop it first, or give this one its own --root, --state and --socket',
      );
    }
    writeFileSync(pidFile, `${process.pid}\n`);
    return new DirectoryLock(db, pidFile);
  }

  release(): void {
    rmSync(this.pidFile, { force: true });
    this.db.close();
  }
}
