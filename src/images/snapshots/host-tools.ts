/**
 * The host tools an unpack runs: `mknod` for device nodes, FIFOs and whiteout devices,
 * and `setfattr --restore` for extended attributes and opaque markers, many paths per
 * run. A missing tool is FailedPrecondition naming what needs it.
 */
import { BerthError, messageOf } from '../../common/errors.js';
import { execProcess } from '../../common/process.js';
import { fsError, type Xattrs } from './tar-entry.js';

/** Runs `mknod` with `args`; `layer` names the layer in errors. */
export async function mknod(args: string[], layer: string): Promise<void> {
  const { code, stderr, error } = await run('mknod', args, undefined);
  if (error !== undefined) {
    const msg = `layer ${layer}: device nodes need mknod on the host: ${messageOf(error)}`;
    throw new BerthError('FailedPrecondition', msg);
  }
  if (code !== 0) throw fsError(layer, new Error(stderr.trim()), `mknod ${args.join(' ')}`);
}

/**
 * One `setfattr --restore` run for many paths; -h so symlinks are never followed.
 * `lenient` tolerates attributes the filesystem does not support or permit.
 */
export async function setfattr(batch: ReadonlyArray<readonly [string, Xattrs]>, lenient: boolean, layer: string): Promise<void> {
  let script = '';
  for (const [path, list] of batch) {
    script += `# file: ${quote(path)}\n`;
    for (const [name, value] of list) script += `${quote(name)}=0x${value.toString('hex')}\n`;
    script += '\n';
  }
  const { code, stderr, error } = await run('setfattr', ['-h', '--restore=-'], script);
  if (error !== undefined) {
    const needs = 'extended attributes and opaque directories need setfattr on the host (Debian package attr)';
    throw new BerthError('FailedPrecondition', `layer ${layer}: ${needs}: ${messageOf(error)}`);
  }
  if (code === 0) return;
  const lines = stderr
    .trim()
    .split('\n')
    .filter((l) => l !== '');
  const serious = lenient ? lines.filter((l) => !/: Operation not (supported|permitted)$/.test(l)) : lines;
  if (serious.length > 0 || lines.length === 0) {
    const why = (serious[0] ?? `setfattr exited with ${code}`).slice(0, 500);
    throw new BerthError('FailedPrecondition', `layer ${layer}: setting extended attributes failed: ${why}`);
  }
}

/** Quotes a path or xattr name for `setfattr --restore`, which reads `\ooo` escapes. */
function quote(s: string): string {
  let out = '';
  for (const byte of Buffer.from(s, 'utf8')) {
    const safe =
      (byte >= 0x30 && byte <= 0x39) ||
      (byte >= 0x41 && byte <= 0x5a) ||
      (byte >= 0x61 && byte <= 0x7a) ||
      byte === 0x2e ||
      byte === 0x2f ||
      byte === 0x5f ||
      byte === 0x2d;
    out += safe ? String.fromCharCode(byte) : `\\${byte.toString(8).padStart(3, '0')}`;
  }
  return out;
}

/** Runs a short host tool to completion (never rejects). */
async function run(cmd: string, args: string[], input: string | undefined): Promise<{ code: number | null; stderr: string; error?: unknown }> {
  try {
    const res = await execProcess(cmd, args, { env: { ...process.env, LC_ALL: 'C' }, maxBuffer: 8192, ...(input !== undefined ? { input } : {}) });
    return { code: res.code, stderr: res.stderr };
  } catch (error) {
    return { code: null, stderr: '', error };
  }
}
