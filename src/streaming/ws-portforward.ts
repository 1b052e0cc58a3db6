/**
 * Kubernetes' port-forward protocol over WebSocket, server side, as kubelet serves it:
 * the ports come in the URL's query (`?port=80&port=443`), and each gets two channels,
 * data (2k) and error (2k+1). The server's first message on each of them is the port
 * number, two bytes little-endian. berth then connects to each port on the pod's
 * loopback and copies bytes both ways on the data channel; a failure is written, as
 * text, on the error channel. One connection per port: the session closes once every
 * connection has ended, and closing the session closes them.
 */
import type { Socket } from 'node:net';
import { messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { PodDialer } from './portforward.js';
import type { WsChannels } from './ws-session.js';

/** The subprotocols berth speaks for port-forward over WebSocket, best first. */
export const WS_PORT_FORWARD_PROTOCOLS = ['v4.channel.k8s.io', 'v4.base64.channel.k8s.io', 'portforward.k8s.io'] as const;
export type WsPortForwardProtocol = (typeof WS_PORT_FORWARD_PROTOCOLS)[number];

/** Most ports one WebSocket port-forward may name. */
export const MAX_WS_PORTS = 32;

/**
 * The ports of a port-forward URL's query, or the reason they are refused: at least
 * one, each 1–65535, at most {@link MAX_WS_PORTS}.
 */
export function portsOfQuery(url: string): number[] | string {
  const q = new URL(url, 'http://localhost').searchParams.getAll('port');
  if (q.length === 0) return 'the query parameter "port" is required (?port=80&port=443)';
  if (q.length > MAX_WS_PORTS) return `at most ${MAX_WS_PORTS} ports per port-forward, not ${q.length}`;
  const ports: number[] = [];
  for (const p of q) {
    const n = /^\d{1,5}$/.test(p) ? Number(p) : NaN;
    if (!(n >= 1 && n <= 65535)) return `port "${p}" is not a port number (1-65535)`;
    ports.push(n);
  }
  return ports;
}

export function serveWsPortForward(ch: WsChannels, podId: string, ports: number[], dial: PodDialer, log: Logger): void {
  const conns = new Map<number, Socket>();
  let open = ports.length;
  let closing = false;
  // Connects still under way when the session goes are abandoned.
  const abandon = new AbortController();
  const ended = (): void => {
    if (--open === 0) ch.close();
  };
  ch.once('close', () => {
    closing = true;
    abandon.abort();
    for (const c of conns.values()) c.destroy();
  });
  // What the client sends before its connection is up waits in the socket, not here.
  ch.hold();
  ports.forEach((port, i) => {
    const le = Buffer.alloc(2);
    le.writeUInt16LE(port);
    ch.send(2 * i, le);
    ch.send(2 * i + 1, le);
  });
  ch.on('data', (channel: number, data: Buffer) => {
    const conn = channel % 2 === 0 ? conns.get(channel / 2) : undefined;
    if (conn) ch.deliver(conn, data);
  });
  // The v5 close signal on a data channel half-closes its connection.
  ch.on('end', (channel: number) => {
    if (channel % 2 === 0) conns.get(channel / 2)?.end();
  });
  void Promise.all(
    ports.map(async (port, i) => {
      let conn: Socket;
      try {
        conn = await dial(port, abandon.signal);
      } catch (err) {
        if (closing) return;
        log.debug('port-forward connect failed', { pod: podId, port, error: messageOf(err) });
        ch.send(2 * i + 1, `error forwarding port ${port} to pod ${podId}: ${messageOf(err)}`);
        ended();
        return;
      }
      if (closing) {
        conn.destroy();
        return;
      }
      conns.set(i, conn);
      conn.on('error', (err) => ch.send(2 * i + 1, `error forwarding port ${port} to pod ${podId}: ${messageOf(err)}`));
      // The session may close once what the pod sent has reached the socket.
      const out = ch.output(2 * i);
      out.once('finish', ended);
      conn.once('close', () => {
        conns.delete(i);
        if (!out.writableEnded) out.end();
      });
      conn.pipe(out);
    }),
  ).then(() => {
    if (!closing) ch.release();
  });
}
