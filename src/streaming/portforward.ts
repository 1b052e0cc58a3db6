/**
 * Kubernetes' port-forward protocol (portforward.k8s.io) over SPDY, server side. For each
 * forwarded connection the client opens two streams carrying the same `port` and
 * `requestid` headers: `streamtype: error`, then `streamtype: data`. Once both are there,
 * berth connects to that port on the pod's loopback (inside the pod's network
 * namespace) and copies bytes both ways; a failure is written, as text, on the error
 * stream. Clients that send no requestid pair the streams by id (data = error + 2), as
 * kubelet does. The session lives until the client closes it.
 */
import type { Socket } from 'node:net';
import { messageOf } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { SpdySession, SpdyStream } from './spdy-session.js';

export const PORT_FORWARD_PROTOCOL = 'portforward.k8s.io';

interface Pair {
  error?: SpdyStream;
  data?: SpdyStream;
  port: number;
  timer: NodeJS.Timeout;
}

/** Connects to a port of the pod (see pod-connector.ts); `signal` abandons the connect. */
export type PodDialer = (port: number, signal: AbortSignal) => Promise<Socket>;

export function servePortForward(session: SpdySession, podId: string, dial: PodDialer, pairTimeoutMs: number, log: Logger): void {
  const pairs = new Map<string, Pair>();
  const conns = new Set<Socket>();
  // Connects still under way when the session ends are abandoned, their sockets destroyed.
  const gone = new AbortController();
  session.on('close', () => {
    gone.abort(new Error('the port-forward session closed'));
    for (const c of conns) c.destroy();
    for (const p of pairs.values()) clearTimeout(p.timer);
    pairs.clear();
  });

  session.on('stream', (s: SpdyStream) => {
    const type = s.headers.get('streamtype')?.[0];
    const portText = s.headers.get('port')?.[0] ?? '';
    const port = /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
    if ((type !== 'error' && type !== 'data') || !(port >= 1 && port <= 65535)) {
      s.reset(1); // PROTOCOL_ERROR
      return;
    }
    const requestId = s.headers.get('requestid')?.[0] ?? String(type === 'data' ? s.id - 2 : s.id);
    s.reply({});
    let pair = pairs.get(requestId);
    if (!pair) {
      const timer = setTimeout(() => {
        const p = pairs.get(requestId);
        if (!p) return;
        pairs.delete(requestId);
        p.error?.end(`timed out waiting for the other stream of port-forward request ${requestId}`);
        p.data?.reset();
      }, pairTimeoutMs);
      pair = { port, timer };
      pairs.set(requestId, pair);
    }
    if (pair[type] || pair.port !== port) {
      s.reset(1);
      return;
    }
    pair[type] = s;
    if (!pair.error || !pair.data) return;
    clearTimeout(pair.timer);
    pairs.delete(requestId);
    void forward(pair.error, pair.data, port);
  });

  async function forward(error: SpdyStream, data: SpdyStream, port: number): Promise<void> {
    error.resume(); // the client sends nothing on it
    let conn: Socket;
    try {
      conn = await dial(port, gone.signal);
      if (session.closed) conn.destroy();
    } catch (err) {
      log.debug('port-forward connect failed', { pod: podId, port, error: messageOf(err) });
      error.end(`error forwarding port ${port} to pod ${podId}: ${messageOf(err)}`);
      data.end();
      return;
    }
    if (conn.destroyed) return;
    conns.add(conn);
    conn.on('error', (err) => {
      error.end(`error forwarding port ${port} to pod ${podId}: ${messageOf(err)}`);
      data.end();
    });
    conn.on('close', () => {
      conns.delete(conn);
      if (!error.writableEnded) error.end();
    });
    data.on('error', () => conn.destroy());
    // The client's end of data half-closes the connection; the pod's end ends the stream.
    data.pipe(conn);
    conn.pipe(data);
  }
}
