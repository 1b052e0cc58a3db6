/**
 * What an OCI runtime (runc, crun) says when it fails, turned into a {@link BerthError}:
 * the one place that reads a runtime's error output. runc prints logrus lines
 * (`time="…" level=error msg="…"`), crun plain text; conmon passes either on from
 * `create`.
 */
import { BerthError, type ErrorKind } from '../common/errors.js';

/** A runtime command that failed: the kind from its message, and the message itself as {@link detail}. */
export class OciRuntimeError extends BerthError {
  /** The runtime's own words, without the command. */
  readonly detail: string;

  constructor(kind: ErrorKind, command: string, detail: string) {
    super(kind, `${command}: ${detail}`);
    this.detail = detail;
  }
}

/**
 * The human part of a runtime's stderr: the `msg` of each logrus line, or each line as it
 * is; joined with "; ".
 */
export function runtimeMessage(stderr: string): string {
  const msgs: string[] = [];
  for (const line of stderr.split('\n')) {
    const m = /\bmsg="((?:[^"\\]|\\.)*)"/.exec(line);
    if (m?.[1] !== undefined) {
      msgs.push(m[1].replace(/\\(.)/g, '$1'));
    } else if (line.trim() !== '') {
      msgs.push(line.trim());
    }
  }
  return msgs.join('; ') || stderr.trim();
}

/** The kind of a runtime failure, from its message. */
export function runtimeErrorKind(msg: string): ErrorKind {
  if (/does not exist|not found/i.test(msg) && !/executable file not found/i.test(msg)) return 'NotFound';
  if (/not running|not stopped|cannot (start|delete)|already (running|exists)|is paused/i.test(msg)) return 'FailedPrecondition';
  return 'Internal';
}

/**
 * The error for a runtime command that exited unsuccessfully: `command` names it for the
 * message (e.g. "/usr/sbin/runc kill c1"); `stderr` is what it printed, and `status`
 * says how it ended when it printed nothing.
 */
export function runtimeFailure(command: string, stderr: string, status: { code: number | null; signal: string | null }): OciRuntimeError {
  const detail = runtimeMessage(stderr) || `exited with ${status.code ?? status.signal}`;
  return new OciRuntimeError(runtimeErrorKind(detail), command, detail);
}
