/**
 * Stop signals: the CRI's ContainerConfig.stop_signal (an enum), or else the image's
 * STOPSIGNAL, as a Linux signal number.
 */
import { invalidArgument, messageOf } from '../common/errors.js';
import type { ImageConfig } from '../images/manifest.js';

/** Linux signal numbers (x86 and arm, which agree) by name without the SIG prefix. */
export const SIGNALS: Readonly<Record<string, number>> = {
  HUP: 1,
  INT: 2,
  QUIT: 3,
  ILL: 4,
  TRAP: 5,
  ABRT: 6,
  IOT: 6,
  BUS: 7,
  FPE: 8,
  KILL: 9,
  USR1: 10,
  SEGV: 11,
  USR2: 12,
  PIPE: 13,
  ALRM: 14,
  TERM: 15,
  STKFLT: 16,
  CHLD: 17,
  CLD: 17,
  CONT: 18,
  STOP: 19,
  TSTP: 20,
  TTIN: 21,
  TTOU: 22,
  URG: 23,
  XCPU: 24,
  XFSZ: 25,
  VTALRM: 26,
  PROF: 27,
  WINCH: 28,
  IO: 29,
  POLL: 29,
  PWR: 30,
  SYS: 31,
};

const SIGRTMIN = 34;
const SIGRTMAX = 64;

/** "SIGTERM", "term", "15", "SIGRTMIN+3" → a signal number; anything else → InvalidArgument. */
export function parseSignal(s: string): number {
  const t = s.trim().toUpperCase();
  if (/^\d+$/.test(t)) {
    const n = Number(t);
    if (n >= 1 && n <= SIGRTMAX) return n;
    throw invalidArgument(`stop signal "${s}" is out of range (1..${SIGRTMAX})`);
  }
  const name = t.startsWith('SIG') ? t.slice(3) : t;
  const known = SIGNALS[name];
  if (known !== undefined) return known;
  const rt = /^RT(MIN|MAX)(?:([+-])(\d+))?$/.exec(name);
  if (rt) {
    const off = rt[3] === undefined ? 0 : Number(rt[3]) * (rt[2] === '-' ? -1 : 1);
    const n = (rt[1] === 'MIN' ? SIGRTMIN : SIGRTMAX) + off;
    if (n >= SIGRTMIN && n <= SIGRTMAX) return n;
  }
  throw invalidArgument(`stop signal "${s}" is not a known signal`);
}

/** What a stop signal needs of an image's config (an ImageConfig has it). */
export interface ImageStopSignal {
  run: Pick<ImageConfig['run'], 'stopSignal'>;
}

/** The image's stop signal, SIGTERM (15) when it names none. */
export function stopSignal(image: ImageStopSignal): number {
  const s = image.run.stopSignal;
  return s.trim() === '' ? SIGNALS.TERM! : parseSignal(s);
}

/** The CRI Signal enum name ("SIGNAL_SIGUSR1", "SIGNAL_SIGRTMINPLUS3") → a signal number; undefined for SIGNAL_RUNTIME_DEFAULT or an unknown name. */
export function criSignalNumber(name: string): number | undefined {
  const m = /^SIGNAL_SIG([A-Z0-9]+?)(?:(PLUS|MINUS)(\d+))?$/.exec(name);
  if (!m) return undefined;
  const base = m[1]!;
  if (m[2] === undefined && SIGNALS[base] !== undefined) return SIGNALS[base];
  if (base !== 'RTMIN' && base !== 'RTMAX') return undefined;
  const off = m[3] === undefined ? 0 : Number(m[3]) * (m[2] === 'MINUS' ? -1 : 1);
  const n = (base === 'RTMIN' ? SIGRTMIN : SIGRTMAX) + off;
  return n >= SIGRTMIN && n <= SIGRTMAX ? n : undefined;
}

const CANONICAL: ReadonlyMap<number, string> = new Map(
  Object.entries(SIGNALS)
    .filter(([name]) => name !== 'IOT' && name !== 'CLD' && name !== 'POLL')
    .map(([name, n]) => [n, name]),
);

/** A signal number → its CRI Signal enum name; SIGNAL_RUNTIME_DEFAULT for a number the enum cannot name. */
export function criSignalName(n: number): string {
  const plain = CANONICAL.get(n);
  if (plain) return `SIGNAL_SIG${plain}`;
  if (n === SIGRTMIN) return 'SIGNAL_SIGRTMIN';
  if (n === SIGRTMAX) return 'SIGNAL_SIGRTMAX';
  if (n > SIGRTMIN && n <= SIGRTMIN + 15) return `SIGNAL_SIGRTMINPLUS${n - SIGRTMIN}`;
  if (n > SIGRTMIN + 15 && n < SIGRTMAX) return `SIGNAL_SIGRTMAXMINUS${SIGRTMAX - n}`;
  return 'SIGNAL_RUNTIME_DEFAULT';
}

/**
 * The signal StopContainer sends first: ContainerConfig.stop_signal when set, else the
 * image's STOPSIGNAL, else SIGTERM. An image STOPSIGNAL that does not parse must not
 * make a container unstoppable: SIGTERM then, with a warning for the caller to log.
 * An unknown CRI enum value is refused (InvalidArgument) at creation, so it never
 * reaches a stop.
 */
export function effectiveStopSignal(config: { stop_signal?: unknown }, image: ImageStopSignal | undefined): { signal: number; warning?: string } {
  const asked = config.stop_signal === undefined || config.stop_signal === null ? '' : String(config.stop_signal);
  if (asked !== '' && asked !== '0' && asked !== 'SIGNAL_RUNTIME_DEFAULT') {
    const n = criSignalNumber(asked);
    if (n === undefined) throw invalidArgument(`stop_signal "${asked}" is not a known signal`);
    return { signal: n };
  }
  if (!image) return { signal: SIGNALS.TERM! };
  try {
    return { signal: stopSignal(image) };
  } catch (err) {
    return { signal: SIGNALS.TERM!, warning: `the image's stop signal cannot be used (${messageOf(err)}); SIGTERM instead` };
  }
}
