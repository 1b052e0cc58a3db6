/** Stop signals: the image's STOPSIGNAL as a Linux signal number. */
import { invalidArgument } from '../common/errors.js';
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

/** The image's stop signal, SIGTERM (15) when it names none. */
export function stopSignal(image: ImageConfig): number {
  const s = image.run.stopSignal;
  return s.trim() === '' ? SIGNALS.TERM! : parseSignal(s);
}
