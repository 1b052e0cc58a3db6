/**
 * An interactive command in a running container (the streaming Exec): `runc exec` with
 * pipes for stdin/stdout/stderr, or with a terminal (`-t`). For a terminal, runc runs in
 * the foreground on a pty pair of berth's (it wants a terminal as its own stdio, relays
 * it to the container's and follows its size on SIGWINCH), so its exit code is the
 * command's in both cases. (A --console-socket would need `runc exec -d`, which loses
 * the exit code.) The command's whole process tree is killed when the session is cut
 * off, and nothing is left behind: the pid file goes with it.
 */
import { open, rm } from 'node:fs/promises';
import { constants as fsConstants } from 'node:fs';
import type { Socket } from 'node:net';
import { ReadStream } from 'node:tty';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { closeSync, readFileSync, readdirSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { BerthError, messageOf } from '../common/errors.js';
import { spawnProcess, type ChildProcess } from '../common/process.js';
import { attachConmon, openPty, setWinsize } from '../common/sys.js';

export interface ExecSession {
  /** The command's stdin (present when asked for); ending it closes the command's stdin. */
  stdin?: Writable;
  /** Its stdout, or with a terminal everything the terminal prints. */
  stdout: Readable;
  /** Its stderr (never with a terminal). */
  stderr?: Readable;
  /** Resizes the terminal (no-op without one). */
  resize(width: number, height: number): void;
  /** The exit code: the command's, 128+signal when killed, runc's own (with its message on stderr) when it could not start it. */
  exited: Promise<number>;
  /** Kills the command and everything it started. */
  kill(): void;
}

export interface ExecSessionOptions {
  runtimePath: string;
  runtimeRoot: string;
  containerId: string;
  cmd: string[];
  tty: boolean;
  stdin: boolean;
  /** A file for runc's --pid-file (removed at the end). */
  pidFile: string;
}

export function startExecSession(o: ExecSessionOptions): ExecSession {
  const args = ['--root', o.runtimeRoot, 'exec', '--pid-file', o.pidFile, ...(o.tty ? ['--tty'] : []), o.containerId, ...o.cmd];
  let pty: [number, number] | undefined;
  let child: ChildProcess;
  try {
    if (o.tty) {
      pty = openPty();
      setWinsize(pty[0], 24, 80);
    }
    child = spawnProcess(o.runtimePath, args, { stdio: pty ? [pty[1], pty[1], pty[1]] : [o.stdin ? 'in' : 'ignore', 'out', 'out'] });
  } catch (err) {
    if (pty) for (const fd of pty) closeQuietly(fd);
    throw new BerthError('Internal', `cannot run ${o.runtimePath} exec: ${messageOf(err)}`, { cause: err });
  } finally {
    // The child has its own copy of the terminal's slave side.
    if (pty) closeQuietly(pty[1]);
  }
  const exited = child.exited.then(async (st) => {
    await rm(o.pidFile, { force: true });
    return st.code ?? 128 + signalNumber(st.signal);
  });
  const kill = (): void => {
    let pid = 0;
    try {
      pid = Number(readFileSync(o.pidFile, 'utf8').trim());
    } catch {
      // not started yet, or gone
    }
    if (pid > 0) for (const p of [pid, ...descendants(pid)]) killQuietly(p);
    // runc reaps what it started; if it lingers, it goes too.
    const t = setTimeout(() => child.kill('SIGKILL'), 2000);
    void child.exited.then(() => clearTimeout(t));
  };

  if (!pty) {
    return {
      ...(child.stdin ? { stdin: child.stdin } : {}),
      stdout: child.stdout!,
      stderr: child.stderr!,
      resize: () => undefined,
      exited,
      kill,
    };
  }
  const master = pty[0];
  const term = new ReadStream(master);
  // EIO once nothing holds the slave side any more (runc exited): that is the end.
  term.on('error', () => term.push(null));
  void exited.then(() => setTimeout(() => term.destroy(), 1000).unref());
  return {
    ...(o.stdin ? { stdin: term } : {}),
    stdout: term,
    resize: (width, height) => {
      try {
        setWinsize(master, height, width);
        // runc follows its own terminal's size on SIGWINCH.
        child.kill('SIGWINCH');
      } catch {
        // the terminal is gone
      }
    },
    exited,
    kill,
  };
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
}

function signalNumber(sig: NodeJS.Signals | null): number {
  return sig ? osConstants.signals[sig] : 9;
}

export function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

/** Every descendant of `pid`, from /proc. */
export function descendants(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(name));
      children.set(ppid, list);
    } catch {
      // the process went away while we looked
    }
  }
  const out: number[] = [];
  const stack = [pid];
  while (stack.length > 0) {
    for (const c of children.get(stack.pop()!) ?? []) {
      out.push(c);
      stack.push(c);
    }
  }
  return out;
}

/**
 * Attaches to a container's main process through its shim: conmon's attach socket
 * (bridged by the native addon, see native/berth_sys.c attachConmon) carries stdin in
 * and stdout/stderr out; resizes go through conmon's control FIFO. The session ends when
 * the container exits or the caller detaches ({@link ExecSession.kill}); it never stops
 * the container. `exited` is 0: an attach has no exit code of its own.
 */
export function startAttachSession(o: { socketDir: string; ctlPath: string; stdin: boolean }): ExecSession {
  let sock: Socket;
  try {
    sock = attachConmon(o.socketDir);
  } catch (err) {
    throw new BerthError('Unavailable', `cannot attach: the shim's attach socket does not answer (${messageOf(err)})`, { cause: err });
  }
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let buf: Buffer = Buffer.alloc(0);
  sock.on('data', (d: Buffer) => {
    buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
    while (buf.length >= 3) {
      const len = buf.readUInt16BE(1);
      if (buf.length < 3 + len) break;
      const payload = buf.subarray(3, 3 + len);
      if (buf[0] === CONMON_STDERR) stderr.write(payload);
      else if (buf[0] === CONMON_STDOUT) stdout.write(payload);
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
  if (!o.stdin) sock.end();
  return {
    ...(o.stdin ? { stdin: sock } : {}),
    stdout,
    stderr,
    resize: (width, height) => {
      void writeCtl(o.ctlPath, `1 ${height} ${width}\n`);
    },
    exited,
    kill: () => sock.destroy(),
  };
}

/** conmon's pipe numbers on its attach socket. */
const CONMON_STDOUT = 2;
const CONMON_STDERR = 3;

async function writeCtl(path: string, line: string): Promise<void> {
  let fh;
  try {
    fh = await open(path, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK);
    await fh.write(line);
  } catch {
    // the shim is gone; a lost resize does no harm
  } finally {
    await fh?.close();
  }
}
