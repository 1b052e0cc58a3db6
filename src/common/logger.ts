/**
 * Structured logging: one JSON object per line on stderr, so journald, kubectl-style
 * tooling and tests can parse it. Fields whose names look like credentials are
 * replaced before anything is written: berth never logs a password or token.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];
const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

const SECRET_KEY = /pass(word)?|secret|token|auth$|^auth|credential|identity/i;

export type LogFields = Record<string, unknown>;

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  enabled(level: LogLevel): boolean;
  /** A logger that adds `fields` to every line. */
  child(fields: LogFields): Logger;
}

/** Replaces credential-looking values, recursively, in plain objects and arrays. */
export function redact(value: unknown, depth = 0): unknown {
  if (depth > 8 || value === null || typeof value !== 'object') return value;
  if (value instanceof Error) return { message: value.message, ...(value.stack ? { stack: value.stack } : {}) };
  if (Array.isArray(value)) return value.map((v) => redact(v, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    out[k] = SECRET_KEY.test(k) && v !== '' && v !== undefined ? '[redacted]' : redact(v, depth + 1);
  }
  return out;
}

class JsonLogger implements Logger {
  constructor(
    /** The lowest rank written, read on every line so that a config reload can change it. */
    private readonly min: () => number,
    private readonly base: LogFields,
    private readonly write: (line: string) => void,
  ) {}

  enabled(level: LogLevel): boolean {
    return RANK[level] >= this.min();
  }

  private log(level: LogLevel, msg: string, fields?: LogFields): void {
    if (RANK[level] < this.min()) return;
    const rec = redact({ time: new Date().toISOString(), level, msg, ...this.base, ...fields });
    let line: string;
    try {
      line = JSON.stringify(rec);
    } catch {
      line = JSON.stringify({ time: new Date().toISOString(), level, msg, note: 'fields not serialisable' });
    }
    this.write(line + '\n');
  }

  debug(msg: string, fields?: LogFields): void {
    this.log('debug', msg, fields);
  }
  info(msg: string, fields?: LogFields): void {
    this.log('info', msg, fields);
  }
  warn(msg: string, fields?: LogFields): void {
    this.log('warn', msg, fields);
  }
  error(msg: string, fields?: LogFields): void {
    this.log('error', msg, fields);
  }

  child(fields: LogFields): Logger {
    return new JsonLogger(this.min, { ...this.base, ...fields }, this.write);
  }
}

/**
 * A logger writing lines at `level` and above. Given a function, the level is read from
 * it on every line (the config in force, which `berthd reload` may change), for this
 * logger and every child of it.
 */
export function createLogger(level: LogLevel | (() => LogLevel), write: (line: string) => void = (l) => process.stderr.write(l)): Logger {
  const min =
    typeof level === 'function'
      ? (): number => RANK[level()]
      : (
          (rank) => (): number =>
            rank
        )(RANK[level]);
  return new JsonLogger(min, {}, write);
}
