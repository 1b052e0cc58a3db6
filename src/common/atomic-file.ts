/** Files that exist whole or not at all, even across a kill -9 or a power cut. */
import { randomBytes } from 'node:crypto';
import { open, rename, unlink } from 'node:fs/promises';
import { BerthError, messageOf } from './errors.js';

/**
 * Writes `content` to `path` atomically: a temp file in the same dir, fsynced, renamed
 * over. Readers (and a process killed halfway) see the old file, or none, or the new one.
 */
export async function writeFileAtomic(path: string, content: string, mode: number): Promise<void> {
  const tmp = `${path}.tmp-${randomBytes(6).toString('hex')}`;
  try {
    const fh = await open(tmp, 'wx', mode);
    try {
      await fh.writeFile(content, 'utf8');
      await fh.chmod(mode); // the umask may have narrowed it
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw new BerthError('Internal', `writing ${path}: ${messageOf(err)}`, { cause: err });
  }
}
