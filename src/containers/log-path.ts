import { isAbsolute, join, relative } from 'node:path';
import { invalidArgument } from '../common/errors.js';

/**
 * Where a container's CRI log goes: `log_path` under the pod's `log_directory`, or
 * undefined when either is empty (the log then stays in the bundle). The file must land
 * inside the directory: a path with `..` that climbs out of it, or names the directory
 * itself, is refused, as is a relative log directory (conmon would resolve it against
 * its own working directory).
 */
export function containerLogPath(logDirectory: string, logPath: string): string | undefined {
  if (logDirectory === '' || logPath === '') return undefined;
  if (!isAbsolute(logDirectory)) throw invalidArgument(`the pod's log_directory "${logDirectory}" is not an absolute path`);
  const path = join(logDirectory, logPath);
  const rel = relative(logDirectory, path);
  if (rel === '' || rel === '..' || rel.startsWith('../') || isAbsolute(rel)) {
    throw invalidArgument(`config.log_path "${logPath}" does not name a file inside the pod's log_directory "${logDirectory}"`);
  }
  return path;
}
