/**
 * An interactive command in a running container (the streaming Exec): `runc exec` with
 * pipes for stdin/stdout/stderr, or with a terminal (`-t`). For a terminal, runc runs in
 * the foreground on a pty pair of berth's (it wants a terminal as its own stdio, relays
 * it to the container's and follows its size on SIGWINCH), so its exit code is the
 * command's in both cases. (A --console-socket would need `runc exec -d`, which loses
 * the exit code.) The command's whole process tree is killed when the session is cut
 * off, and nothing is left behind: the pid file goes with it.
 */
import { rm } from 'node:fs/promises';
import { ReadStream } from 'node:tty';
import { closeSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { BerthError, messageOf } from '../common/errors.js';
import { spawnProcess, type ChildProcess } from '../common/process.js';
import { openPty, setWinsize } from '../common/sys.js';
import type { OciRuntime } from '../oci/oci-runtime.js';
import type { ExecSession } from '../shim/shim.js';
import { ExecProcess } from './exec-process.js';

export type { ExecSession };

export interface ExecSessionOptions {
  runtime: OciRuntime;
  containerId: string;
  cmd: string[];
  tty: boolean;
  stdin: boolean;
  /** A file for runc's --pid-file (removed at the end). */
  pidFile: string;
}

export function startExecSession(o: ExecSessionOptions): ExecSession {
  const argv = o.runtime.execArgv(o.containerId, o.cmd, { pidFile: o.pidFile, tty: o.tty });
  let pty: [number, number] | undefined;
  let child: ChildProcess;
  try {
    if (o.tty) {
      pty = openPty();
      setWinsize(pty[0], 24, 80);
    }
    o.runtime.warmCgroupJoin();
    child = spawnProcess(argv.file, argv.args, { stdio: pty ? [pty[1], pty[1], pty[1]] : [o.stdin ? 'in' : 'ignore', 'out', 'out'] });
  } catch (err) {
    if (pty) for (const fd of pty) closeQuietly(fd);
    throw new BerthError('Internal', `cannot run ${argv.file} exec: ${messageOf(err)}`, { cause: err });
  } finally {
    // The child has its own copy of the terminal's slave side.
    if (pty) closeQuietly(pty[1]);
  }
  const exited = child.exited.then(async (st) => {
    await rm(o.pidFile, { force: true });
    return st.code ?? 128 + signalNumber(st.signal);
  });
  const command = new ExecProcess(o.pidFile, child.pid, child.exited);
  const kill = (): void => {
    command.kill();
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
