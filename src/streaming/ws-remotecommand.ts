/**
 * Kubernetes' remote command protocol (exec and attach) over WebSocket, server side, as
 * kubelet serves it:
 * - channels 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize (JSON {"Width","Height"},
 *   with a terminal), framed as in ws-session.ts;
 * - once the session is open the server sends an empty message on its lowest output
 *   channel (stdout, else stderr, else error), so the client knows it is connected;
 * - at the end the error channel carries the exit: a metav1.Status for v4 and v5, a
 *   failure's text for the older versions (the same report as over SPDY); then the
 *   WebSocket is closed;
 * - v5 adds the close signal: the client's close of channel 0 ends the command's stdin.
 */
import { Writable, type Readable } from 'node:stream';
import { messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { exitReport, startFailureReport, type ChannelOptions, type RemoteProcess } from './remotecommand.js';
import type { WsChannels } from './ws-session.js';

/** The subprotocols berth speaks for exec and attach, best first. */
export const WS_REMOTECOMMAND_PROTOCOLS = [
  'v5.channel.k8s.io',
  'v4.channel.k8s.io',
  'v4.base64.channel.k8s.io',
  'v3.channel.k8s.io',
  'v2.channel.k8s.io',
  'channel.k8s.io',
  'base64.channel.k8s.io',
] as const;
export type WsRemoteCommandProtocol = (typeof WS_REMOTECOMMAND_PROTOCOLS)[number];

/** How a subprotocol frames its channels and reports the exit. */
export interface WsProtocolTraits {
  base64: boolean;
  /** The exit as a metav1.Status (v4 and later). */
  structured: boolean;
  /** The v5 close signal. */
  closeSignal: boolean;
}

export function wsTraits(protocol: WsRemoteCommandProtocol): WsProtocolTraits {
  return {
    base64: protocol.includes('base64'),
    structured: protocol.startsWith('v4.') || protocol.startsWith('v5.'),
    closeSignal: protocol.startsWith('v5.'),
  };
}

/**
 * The first subprotocol of the client's list (its order of preference) that is in
 * `supported`. A client that offers none gets `channel.k8s.io`, as from kubelet.
 */
export function negotiateWs<T extends string>(offered: string[], supported: readonly T[], fallback: T): T | undefined {
  if (offered.length === 0) return fallback;
  return offered.find((p): p is T => (supported as readonly string[]).includes(p));
}

const STDIN = 0;
const STDOUT = 1;
const STDERR = 2;
const ERROR = 3;
const RESIZE = 4;

/** Number of channels of a remote command session. */
export const REMOTECOMMAND_CHANNELS = 5;

/** How long output may go on after the command exited (a background child holding it open). */
const OUTPUT_GRACE_MS = 1000;

/** Largest resize message read. */
const MAX_RESIZE_BYTES = 4096;

/**
 * Runs one exec or attach over an open WebSocket: starts the process, copies the
 * channels both ways with backpressure, reports the exit and closes. The process is
 * killed if the client goes away first.
 */
export async function serveWsRemoteCommand(
  ch: WsChannels,
  traits: WsProtocolTraits,
  o: ChannelOptions,
  start: () => Promise<RemoteProcess>,
  log: Logger,
): Promise<void> {
  ch.send(o.stdout ? STDOUT : o.stderr ? STDERR : ERROR, Buffer.alloc(0));
  // Input that arrives before the process is there waits: what was already read (at
  // most one read's worth, the client is held) here, the rest in the socket.
  const early: Array<[number, Buffer]> = [];
  const keep = (channel: number, data: Buffer): number => early.push([channel, data]);
  const ended: number[] = [];
  const keepEnd = (channel: number): number => ended.push(channel);
  ch.on('data', keep);
  ch.on('end', keepEnd);
  ch.hold();
  let proc: RemoteProcess;
  try {
    proc = await start();
  } catch (err) {
    log.debug('remote command failed to start', { error: messageOf(err) });
    ch.send(ERROR, startFailureReport(traits.structured, messageOf(err)), () => ch.close());
    return;
  } finally {
    ch.off('data', keep);
    ch.off('end', keepEnd);
  }
  let clientGone = ch.isClosed;
  const onClose = (): void => {
    clientGone = true;
    proc.kill();
  };
  if (clientGone) proc.kill();
  else ch.once('close', onClose);

  const stdin = o.stdin ? proc.stdin : undefined;
  stdin?.on('error', () => undefined);
  const onData = (channel: number, data: Buffer): void => {
    if (channel === STDIN && stdin) ch.deliver(stdin, data);
    else if (channel === RESIZE && o.tty) applyResize(data, proc);
  };
  // With a terminal, the client's end of input must not close the terminal itself.
  const onEnd = (channel: number): void => {
    if (channel === STDIN && stdin && !o.tty) stdin.end();
  };
  for (const [channel, data] of early) onData(channel, data);
  for (const channel of ended) onEnd(channel);
  ch.on('data', onData);
  ch.on('end', onEnd);
  ch.release();

  const outputs = [copy(proc.stdout, o.stdout || o.tty ? ch.output(STDOUT) : undefined), copy(proc.stderr, o.stderr ? ch.output(STDERR) : undefined)];
  const code = await proc.exited;
  await Promise.race([Promise.all(outputs), new Promise((r) => setTimeout(r, OUTPUT_GRACE_MS).unref())]);
  ch.off('close', onClose);
  if (clientGone) return;
  const report = exitReport(traits.structured, code);
  if (report === '') ch.close();
  else ch.send(ERROR, report, () => ch.close());
}

/** Copies `from` to `to` (or drops it); resolves once all of it reached the socket or `from` failed. */
function copy(from: Readable | undefined, to: Writable | undefined): Promise<void> {
  if (!from) return Promise.resolve();
  const sink = to ?? new Writable({ write: (_c, _e, cb) => cb() });
  return new Promise((resolve) => {
    sink.once('finish', () => resolve());
    from.once('error', () => resolve());
    from.pipe(sink);
  });
}

function applyResize(data: Buffer, proc: RemoteProcess): void {
  if (data.length > MAX_RESIZE_BYTES) return;
  try {
    const j = JSON.parse(data.toString('utf8')) as { Width?: unknown; Height?: unknown };
    if (isDimension(j.Width) && isDimension(j.Height)) proc.resize(j.Width, j.Height);
  } catch {
    // not JSON: skipped, as kubelet does
  }
}

/** A terminal dimension the kernel's winsize holds. */
function isDimension(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffff;
}
