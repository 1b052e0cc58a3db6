/**
 * systemd's service notification protocol (sd_notify(3)), for `Type=notify` units: one
 * datagram of newline-separated `KEY=VALUE` assignments sent to the unix socket named by
 * `$NOTIFY_SOCKET` (a path, or an abstract name written with a leading '@').
 *
 * berthd sends `READY=1` once start-up recovery has finished, `STOPPING=1` when it
 * starts shutting down, and `RELOADING=1` (with `MONOTONIC_USEC`, which systemd 253's
 * `Type=notify-reload` requires and older versions ignore) then `READY=1` around a
 * configuration reload. Without `$NOTIFY_SOCKET` (not under systemd) every call does
 * nothing. A failed send is logged once and never fails the daemon.
 */
import type { Logger } from './logger.js';
import { messageOf } from './errors.js';
import { native } from './native.js';

export class SystemdNotifier {
  private warned = false;

  private constructor(
    /** The socket, or undefined when berthd does not run under a notify-type unit. */
    readonly socket: string | undefined,
    private readonly log: Logger,
  ) {}

  /**
   * Reads `$NOTIFY_SOCKET` and removes it from the environment: the processes berthd
   * starts (conmon, runc, CNI plugins) must not inherit it, as runc acts on it (it would
   * hand the container a notify socket of its own and wait for the container's READY).
   */
  static fromEnvironment(log: Logger, env: NodeJS.ProcessEnv = process.env): SystemdNotifier {
    const socket = env['NOTIFY_SOCKET'];
    delete env['NOTIFY_SOCKET'];
    return new SystemdNotifier(socket === '' ? undefined : socket, log);
  }

  /** Serving: start-up (or a reload) has finished. */
  ready(status: string): void {
    this.send({ READY: '1', STATUS: status });
  }

  /** A configuration reload has begun; `ready()` ends it. */
  reloading(): void {
    this.send({ RELOADING: '1', MONOTONIC_USEC: monotonicMicroseconds(), STATUS: 'reloading the configuration' });
  }

  stopping(status: string): void {
    this.send({ STOPPING: '1', STATUS: status });
  }

  private send(fields: Record<string, string>): void {
    if (this.socket === undefined) return;
    // Values are single lines: a newline would start a new assignment.
    const text = Object.entries(fields)
      .map(([k, v]) => `${k}=${v.replace(/\n/g, ' ')}`)
      .join('\n');
    try {
      native().notifySocket(this.socket, text);
    } catch (err) {
      if (this.warned) return;
      this.warned = true;
      this.log.warn('cannot notify systemd; the unit may not see berthd as ready', { notify_socket: this.socket, error: messageOf(err) });
    }
  }
}

/** CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC with (libuv's hrtime reads it). */
function monotonicMicroseconds(): string {
  return (process.hrtime.bigint() / 1000n).toString();
}
