/**
 * The streaming server's syscalls, from berthd's native addon: {@link openPty} (a
 * terminal pair for `runc exec -t`), {@link connectInNetns} (port forwarding from inside
 * a pod's network namespace) and {@link attachConmon} (conmon's SOCK_SEQPACKET attach
 * socket as a stream).
 */
import { Socket } from 'node:net';
import { native } from './native.js';

/** A new terminal pair: [master, slave], both close-on-exec. */
export function openPty(): [number, number] {
  return native().openPty();
}

/**
 * A TCP connection to `port` on the loopback of the network namespace pinned at
 * `nsPath` (127.0.0.1, then ::1). Each socket is made inside the namespace by a short
 * helper thread; the connect itself is non-blocking on the event loop, so a port that
 * never answers holds no thread. `timeoutMs` bounds both attempts together (ETIMEDOUT);
 * `signal` abandons the connect, and a socket made for it is destroyed.
 */
export async function connectInNetns(nsPath: string, port: number, timeoutMs: number, signal?: AbortSignal): Promise<Socket> {
  const deadline = Date.now() + timeoutMs;
  let first: unknown;
  for (const [family, host] of [
    [4, '127.0.0.1'],
    [6, '::1'],
  ] as const) {
    const fd = native().socketInNetns(nsPath, family);
    try {
      return await connectSocket(new Socket({ fd, readable: true, writable: true }), host, port, deadline, signal);
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'ETIMEDOUT' || code === 'ABORT_ERR') throw err;
      first ??= err; // the IPv4 error is the one people expect (ECONNREFUSED)
    }
  }
  throw first;
}

/** Connects `s` before `deadline`; on failure it is destroyed. */
function connectSocket(s: Socket, host: string, port: number, deadline: number, signal?: AbortSignal): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const finish = (err?: Error): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      s.off('connect', onConnect);
      s.off('error', finish);
      if (!err) return resolve(s);
      s.destroy();
      reject(err);
    };
    const onConnect = (): void => finish();
    const onAbort = (): void => finish(Object.assign(new Error(`connect to ${host}:${port} abandoned`), { code: 'ABORT_ERR' }));
    const timer = setTimeout(
      () => finish(Object.assign(new Error(`connect to port ${port} timed out`), { code: 'ETIMEDOUT', syscall: 'connect' })),
      Math.max(0, deadline - Date.now()),
    );
    if (signal?.aborted) return onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    s.once('connect', onConnect);
    s.once('error', finish);
    s.connect({ host, port });
  });
}

/**
 * A connection to conmon's attach socket `<dir>/attach` (SOCK_SEQPACKET), bridged to a
 * stream: reads give frames [pipe u8][length u16 BE][data]; writes are the container's
 * stdin; end() closes its stdin; destroy() detaches.
 */
export function attachConmon(dir: string): Socket {
  return new Socket({ fd: native().attachConmon(dir), readable: true, writable: true });
}

/** Sets a terminal's size (TIOCSWINSZ on its master). */
export function setWinsize(fd: number, rows: number, cols: number): void {
  native().setWinsize(fd, rows, cols);
}
