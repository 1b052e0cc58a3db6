/**
 * conmon's two channels into a running container: the attach socket (SOCK_SEQPACKET,
 * bridged by the native addon, see native/berth_sys.c attachConmon) and the control FIFO
 * `ctl`, which takes lines "<type> <height> <width>": type 1 resizes the terminal,
 * type 2 reopens the log file.
 */
import { constants as fsConstants } from 'node:fs';
import { open } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { PassThrough } from 'node:stream';
import { BerthError, messageOf } from '../common/errors.js';
import { attachConmon } from '../common/sys.js';
import type { ExecSession } from './shim.js';

/** conmon's pipe numbers on its attach socket. */
const CONMON_STDOUT = 2;
const CONMON_STDERR = 3;

/** The control FIFO's message types. */
const CTL_RESIZE = 1;
const CTL_REOPEN_LOG = 2;

/**
 * Attaches to a container's main process through conmon: the attach socket in `dir`
 * carries stdin in and stdout/stderr out; resizes go through the control FIFO `ctlPath`.
 * The session ends when the container exits or the caller detaches
 * ({@link ExecSession.kill}); it never stops the container. `exited` is 0: an attach has
 * no exit code of its own.
 */
export function startAttachSession(o: { dir: string; ctlPath: string; stdin: boolean }): ExecSession {
  let sock: Socket;
  try {
    sock = attachConmon(o.dir);
  } catch (err) {
    throw new BerthError('Unavailable', `cannot attach: the shim's attach socket does not answer (${messageOf(err)})`, { cause: err });
  }
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let buf: Buffer = Buffer.alloc(0);
  // Output waits for its reader: while stdout or stderr is full, conmon's socket is not read.
  let full = 0;
  const drained = (): void => {
    if (--full === 0) sock.resume();
  };
  const deliver = (to: PassThrough, payload: Buffer): void => {
    if (to.write(payload)) return;
    if (full++ === 0) sock.pause();
    to.once('drain', drained);
  };
  sock.on('data', (d: Buffer) => {
    // A frame is at most 3 + 65535 bytes, so the concatenation stays small.
    buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
    while (buf.length >= 3) {
      const len = buf.readUInt16BE(1);
      if (buf.length < 3 + len) break;
      const payload = buf.subarray(3, 3 + len);
      if (buf[0] === CONMON_STDERR) deliver(stderr, payload);
      else if (buf[0] === CONMON_STDOUT) deliver(stdout, payload);
      buf = buf.subarray(3 + len);
    }
  });
  const exited = new Promise<number>((resolve) => {
    sock.once('close', () => {
      stdout.end();
      stderr.end();
      resolve(0);
    });
  });
  sock.on('error', () => undefined);
  sock.on('end', () => sock.destroy());
  // Without stdin the socket is left open for writing: ending it would tell conmon the
  // container's stdin is over (it closes it for a stdin_once container).
  return {
    ...(o.stdin ? { stdin: sock } : {}),
    stdout,
    stderr,
    resize: (width, height) => void resizeTerminal(o.ctlPath, width, height),
    exited,
    kill: () => sock.destroy(),
  };
}

/** Resizes the container's terminal; a lost resize (the shim is gone) does no harm. */
export async function resizeTerminal(ctlPath: string, width: number, height: number): Promise<void> {
  try {
    await writeCtl(ctlPath, `${CTL_RESIZE} ${height} ${width}\n`);
  } catch {
    // the shim is gone
  }
}

/** Asks conmon to reopen its log file; throws the errno error when the FIFO does not take it. */
export async function requestLogReopen(ctlPath: string): Promise<void> {
  await writeCtl(ctlPath, `${CTL_REOPEN_LOG} 0 0\n`);
}

/** Writes one line to the control FIFO without blocking: ENXIO when no shim reads it. */
async function writeCtl(path: string, line: string): Promise<void> {
  const fh = await open(path, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK);
  try {
    await fh.write(line);
  } finally {
    await fh.close();
  }
}
