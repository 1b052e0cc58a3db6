/**
 * Runs a created container to its end, for tests that observe from inside a container:
 * StartContainer, wait until it exited, read what it wrote to stdout from its CRI log,
 * RemoveContainer.
 */
import { readFileSync } from 'node:fs';
import { until, type Berthd } from './berthd.js';

/** The stdout lines of a CRI-format log file, partial lines as written. */
export function stdoutOf(logPath: string): string {
  return readFileSync(logPath, 'utf8')
    .split('\n')
    .filter((l) => / stdout [FP] /.test(l))
    .map((l) => l.replace(/^\S+ stdout [FP] /, ''))
    .join('\n');
}

/** Starts container `id`, waits for its exit, removes it; its exit code and stdout. */
export async function runToExit(b: Berthd, id: string): Promise<{ code: number; out: string }> {
  await b.runtime.StartContainer({ container_id: id });
  const st = await until(async () => {
    const s = (await b.runtime.ContainerStatus({ container_id: id })).status!;
    return s.state === 'CONTAINER_EXITED' ? s : undefined;
  });
  const out = stdoutOf(st.log_path);
  await b.runtime.RemoveContainer({ container_id: id });
  return { code: st.exit_code, out };
}
