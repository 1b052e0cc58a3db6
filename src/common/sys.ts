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
 * `nsPath` (127.0.0.1, then ::1), made by a thread that entered it; berthd stays in its own.
 */
export async function connectInNetns(nsPath: string, port: number, timeoutMs: number): Promise<Socket> {
  const fd = await native().connectInNetns(nsPath, port, timeoutMs);
  return new Socket({ fd, readable: true, writable: true });
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
