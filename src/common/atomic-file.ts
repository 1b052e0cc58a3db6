/** Files that exist whole or not at all, even across a kill -9 or a power cut. */
import { randomBytes } from 'node:crypto';
import { open, rename, unlink } from 'node:fs/promises';
import { BerthError, messageOf } from './errors.js';

/**
 * Writes `content` to `path` atomically: a temp file in the same dir, fsynced, renamed
 * over. Readers (and a process killed halfway) see the old file, or none, or the new one.
 */
export async function writeFileAtomic(path: string, content: string, mode: number): Promise<void> {
  const staged = await stageFile(path, content, mode);
  await staged.commit();
}

/** A whole file written under a temp name, not yet in place (see {@link stageFile}). */
export interface StagedFile {
  /** Renames it into place. */
  commit(): Promise<void>;
  /** Removes the temp file (after a failure, when it will not be committed). */
  discard(): Promise<void>;
}

/**
 * Writes `content` to a temp file beside `path`, so that the slow part of an atomic write
 * can overlap other work and only the rename waits for it. `sync: false` skips the fsync:
 * the file is then whole after a kill -9 (the page cache survives it) but not necessarily
 * after a power cut, which suits files that matter only while the machine is up.
 */
export async function stageFile(path: string, content: string, mode: number, opts: { sync?: boolean } = {}): Promise<StagedFile> {
  const tmp = `${path}.tmp-${randomBytes(6).toString('hex')}`;
  const fail = (err: unknown): BerthError => new BerthError('Internal', `writing ${path}: ${messageOf(err)}`, { cause: err });
  const discard = (): Promise<void> => unlink(tmp).catch(() => undefined);
  try {
    const fh = await open(tmp, 'wx', mode);
    try {
      await fh.writeFile(content, 'utf8');
      await fh.chmod(mode); // the umask may have narrowed it
      if (opts.sync ?? true) await fh.sync();
    } finally {
      await fh.close();
    }
  } catch (err) {
    await discard();
    throw fail(err);
  }
  return {
    commit: async () => {
      try {
        await rename(tmp, path);
      } catch (err) {
        await discard();
        throw fail(err);
      }
    },
    discard,
  };
}
