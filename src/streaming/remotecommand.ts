/**
 * Kubernetes' remote command protocol (exec) over SPDY, server side, as kubelet's
 * streaming clients speak it (protocol versions v2, v3 and v4 of channel.k8s.io):
 * - after the upgrade the client opens one SPDY stream per channel, naming it in the
 *   `streamtype` header: `error`, and `stdin`, `stdout`, `stderr` as asked, and `resize`
 *   with a terminal (v3 and later); each is answered with a SYN_REPLY;
 * - stdout/stderr are written on their streams; resize carries JSON objects
 *   {"Width":W,"Height":H};
 * - at the end, v4 writes a metav1.Status on the error stream (Success, or Failure with
 *   reason NonZeroExitCode and the code as an ExitCode cause); v2/v3 write only a
 *   failure's text. Then every stream is closed and the session goes away.
 */
import type { Readable } from 'node:stream';
import type { ExecSession } from '../containers/exec-session.js';
import { messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { SpdySession, SpdyStream } from './spdy-session.js';

/** Versions berth speaks, best first; the client's order of preference decides. */
export const SPDY_PROTOCOLS = ['v4.channel.k8s.io', 'v3.channel.k8s.io', 'v2.channel.k8s.io'] as const;
export type SpdyProtocol = (typeof SPDY_PROTOCOLS)[number];

/** The first protocol of the client's list (X-Stream-Protocol-Version, in its order) that berth speaks. */
export function negotiate(offered: string[]): SpdyProtocol | undefined {
  for (const p of offered) {
    const v = p.trim();
    if ((SPDY_PROTOCOLS as readonly string[]).includes(v)) return v as SpdyProtocol;
  }
  return undefined;
}

export interface ChannelOptions {
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
  tty: boolean;
}

export interface Channels {
  error: SpdyStream;
  stdin?: SpdyStream;
  stdout?: SpdyStream;
  stderr?: SpdyStream;
  resize?: SpdyStream;
}

/** What the protocol drives: a started command or an attach (containers/exec-session.ts). */
export type RemoteProcess = ExecSession;

const CHANNEL_NAMES = ['error', 'stdin', 'stdout', 'stderr', 'resize'] as const;

/** Which channels the client must open for these options under `protocol`. */
export function expectedChannels(protocol: SpdyProtocol, o: ChannelOptions): Set<(typeof CHANNEL_NAMES)[number]> {
  const want = new Set<(typeof CHANNEL_NAMES)[number]>(['error']);
  if (o.stdin) want.add('stdin');
  if (o.stdout) want.add('stdout');
  if (o.stderr && !o.tty) want.add('stderr');
  if (o.tty && protocol !== 'v2.channel.k8s.io') want.add('resize');
  return want;
}

/**
 * Waits until the client has opened every channel it must, answering each; rejects when
 * it takes longer than `timeoutMs` or the session ends first.
 */
export function acceptChannels(session: SpdySession, protocol: SpdyProtocol, o: ChannelOptions, timeoutMs: number): Promise<Channels> {
  const want = expectedChannels(protocol, o);
  const got: Partial<Channels> = {};
  return new Promise((resolve, reject) => {
    const done = (err?: Error): void => {
      clearTimeout(timer);
      session.off('stream', onStream);
      session.off('close', onClose);
      if (err) reject(err);
      else resolve(got as Channels);
    };
    const onStream = (s: SpdyStream): void => {
      const type = s.headers.get('streamtype')?.[0] ?? '';
      if (!(CHANNEL_NAMES as readonly string[]).includes(type) || !want.has(type as (typeof CHANNEL_NAMES)[number]) || got[type as keyof Channels]) {
        s.reset(1); // PROTOCOL_ERROR: a stream this exec did not ask for, or twice
        return;
      }
      s.reply({});
      got[type as keyof Channels] = s;
      if ([...want].every((k) => got[k])) done();
    };
    const onClose = (): void => done(new Error('the client went away before opening its streams'));
    const timer = setTimeout(() => done(new Error(`the client did not open its streams (${[...want].join(', ')}) within ${timeoutMs} ms`)), timeoutMs);
    session.on('stream', onStream);
    session.once('close', onClose);
  });
}

/** The v4 status for an exit code (metav1.Status as JSON). */
export function statusV4(exitCode: number): string {
  if (exitCode === 0) return JSON.stringify({ metadata: {}, status: 'Success' });
  return JSON.stringify({
    metadata: {},
    status: 'Failure',
    message: `command terminated with non-zero exit code: exit status ${exitCode}`,
    reason: 'NonZeroExitCode',
    details: { causes: [{ reason: 'ExitCode', message: String(exitCode) }] },
  });
}

/** The v4 status for a failure to run the command at all. */
export function errorStatusV4(message: string): string {
  return JSON.stringify({ metadata: {}, status: 'Failure', message, reason: 'InternalError', code: 500 });
}

/**
 * What the error channel carries at the end, for SPDY and WebSocket alike: a Status
 * (`structured`, v4 and later), else a failure's text only ('' for success).
 */
export function exitReport(structured: boolean, exitCode: number): string {
  if (structured) return statusV4(exitCode);
  return exitCode === 0 ? '' : `command terminated with non-zero exit code: exit status ${exitCode}`;
}

/** What the error channel carries when the command could not be started. */
export function startFailureReport(structured: boolean, message: string): string {
  return structured ? errorStatusV4(message) : message;
}

/** Reads {"Width":W,"Height":H} objects from the resize channel. */
function followResize(stream: Readable, apply: (w: number, h: number) => void): void {
  let buf = '';
  stream.on('data', (d: Buffer) => {
    buf += d.toString('utf8');
    if (buf.length > 64 * 1024) buf = buf.slice(-1024); // garbage: keep the tail only
    let m: RegExpExecArray | null;
    const re = /\{[^{}]*\}/g;
    let last = 0;
    while ((m = re.exec(buf)) !== null) {
      last = re.lastIndex;
      try {
        const j = JSON.parse(m[0]) as { Width?: unknown; Height?: unknown };
        if (typeof j.Width === 'number' && typeof j.Height === 'number') apply(j.Width, j.Height);
      } catch {
        // not JSON: skipped
      }
    }
    buf = buf.slice(last);
  });
  stream.on('error', () => undefined);
}

/** Resolves when `r` has ended (or errored, or closed). */
function finished(r: Readable): Promise<void> {
  return new Promise((resolve) => {
    if (r.readableEnded || r.destroyed) return resolve();
    r.once('end', () => resolve());
    r.once('close', () => resolve());
    r.once('error', () => resolve());
  });
}

/** How long output may go on after the command exited (a background child holding it open). */
const OUTPUT_GRACE_MS = 1000;

/**
 * Runs one exec over an upgraded SPDY session: waits for the channels, starts the
 * command, copies the streams both ways, reports the exit, and closes. The command is
 * killed if the client goes away first.
 */
export async function serveRemoteCommand(
  session: SpdySession,
  protocol: SpdyProtocol,
  o: ChannelOptions,
  timeoutMs: number,
  start: () => Promise<RemoteProcess>,
  log: Logger,
): Promise<void> {
  let ch: Channels;
  try {
    ch = await acceptChannels(session, protocol, o, timeoutMs);
  } catch (err) {
    log.debug('exec stream setup failed', { error: messageOf(err) });
    session.destroy();
    return;
  }
  const finish = async (status: string | undefined): Promise<void> => {
    if (status !== undefined && status !== '') ch.error.write(status);
    // Each stream's FIN goes out before the GOAWAY (bounded: a client that reads nothing may hold writes back).
    const ends = [ch.error, ch.stdout, ch.stderr].filter((s) => s !== undefined).map((s) => new Promise<void>((r) => s.end(() => r())));
    for (const s of [ch.stdin, ch.resize]) s?.resume();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(ends), new Promise<void>((r) => (timer = setTimeout(r, OUTPUT_GRACE_MS)))]);
    clearTimeout(timer);
    session.close();
  };

  let proc: RemoteProcess;
  try {
    proc = await start();
  } catch (err) {
    await finish(startFailureReport(protocol === 'v4.channel.k8s.io', messageOf(err)));
    return;
  }
  let clientGone = false;
  const onClose = (): void => {
    clientGone = true;
    proc.kill();
  };
  session.once('close', onClose);

  if (ch.stdin && proc.stdin) {
    // With a terminal, the client's end of input must not close the terminal itself.
    ch.stdin.pipe(proc.stdin, { end: !o.tty });
    proc.stdin.on('error', () => undefined);
  } else {
    ch.stdin?.resume();
  }
  if (ch.resize) followResize(ch.resize, (w, h) => proc.resize(w, h));
  const outputs: Array<Promise<void>> = [];
  const copy = (from: Readable | undefined, to: SpdyStream | undefined): void => {
    if (!from) return;
    if (to) from.pipe(to, { end: false });
    else from.resume();
    outputs.push(finished(from));
  };
  copy(proc.stdout, ch.stdout);
  copy(proc.stderr, ch.stderr);

  const code = await proc.exited;
  await Promise.race([Promise.all(outputs), new Promise((r) => setTimeout(r, OUTPUT_GRACE_MS).unref())]);
  session.off('close', onClose);
  if (clientGone) return;
  await finish(exitReport(protocol === 'v4.channel.k8s.io', code));
}
