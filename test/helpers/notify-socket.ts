/**
 * The receiving end of systemd's notify protocol, for tests: a unix datagram socket
 * bound at a path (or an abstract '@name'), made by berthd's own addon (Node has no unix
 * datagram sockets), read without blocking. Each datagram is one message of
 * `KEY=VALUE` lines, as systemd would receive it.
 */
import { closeSync, readSync, rmSync } from 'node:fs';
import { native } from '../../src/common/native.js';

export class NotifyListener {
  private readonly buf = Buffer.alloc(64 * 1024);
  /** Every message received so far, in order. */
  readonly messages: string[] = [];
  /** Where the next waitFor starts looking (set by the first one). */
  private cursor: number | undefined;

  private constructor(
    readonly path: string,
    private fd: number,
  ) {}

  static open(path: string): NotifyListener {
    return new NotifyListener(path, native().datagramBind(path));
  }

  /** Reads what has arrived; returns the new messages. */
  poll(): string[] {
    const fresh: string[] = [];
    for (;;) {
      let n: number;
      try {
        n = readSync(this.fd, this.buf);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EAGAIN') break;
        throw err;
      }
      fresh.push(this.buf.subarray(0, n).toString('utf8'));
    }
    this.messages.push(...fresh);
    return fresh;
  }

  /**
   * Polls until a message after the last one a waitFor returned (or after those received
   * before the first waitFor) matches, or fails after `ms`. Messages that arrive in one
   * poll together are each still there for the next waitFor.
   */
  async waitFor(match: RegExp, ms = 15_000): Promise<string> {
    const end = Date.now() + ms;
    this.cursor ??= this.messages.length;
    for (;;) {
      this.poll();
      const i = this.messages.findIndex((m, k) => k >= this.cursor! && match.test(m));
      if (i >= 0) {
        this.cursor = i + 1;
        return this.messages[i]!;
      }
      if (Date.now() > end) throw new Error(`no notify message matching ${match} within ${ms} ms; got ${JSON.stringify(this.messages)}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  close(): void {
    if (this.fd < 0) return;
    closeSync(this.fd);
    this.fd = -1;
    if (!this.path.startsWith('@')) rmSync(this.path, { force: true });
  }
}

/** The assignments of one message. */
export function fields(message: string): Record<string, string> {
  return Object.fromEntries(message.split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}
