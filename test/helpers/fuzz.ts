/**
 * A small seeded fuzzer for protobuf APIs, with no dependency beyond protobufjs (which
 * grpc-js's proto-loader brings): a PRNG, a generator of random messages driven by the
 * message descriptors (field types, maps, repeated fields, enums, nesting), mutation of
 * a valid message, and raw wire-level garbage. Everything comes from one seed, so a run
 * is reproduced by its seed.
 */
import protobuf from 'protobufjs';

/** sfc32: a small, fast PRNG with a 128-bit state; plenty for fuzzing. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(readonly seed: number) {
    this.a = 0x9e3779b9;
    this.b = 0x243f6a88;
    this.c = 0xb7e15162;
    this.d = seed >>> 0;
    for (let i = 0; i < 15; i++) this.next();
  }

  /** A uniform 32-bit unsigned integer. */
  next(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** A float in [0, 1). */
  float(): number {
    return this.next() / 2 ** 32;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.float() * n);
  }

  chance(p: number): boolean {
    return this.float() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)] as T;
  }

  /** A weighted choice: [weight, value] pairs. */
  weighted<T>(choices: ReadonlyArray<readonly [number, T]>): T {
    const total = choices.reduce((n, [w]) => n + w, 0);
    let r = this.float() * total;
    for (const [w, v] of choices) {
      if ((r -= w) < 0) return v;
    }
    return choices[choices.length - 1]![1];
  }

  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.next() & 0xff;
    return b;
  }
}

/** The seed of the suite's own run (a run of 60 s with it passes). */
export const DEFAULT_FUZZ_SEED = 4189954668;

/** A seed from BERTH_FUZZ_SEED (decimal or 0x hex; "random" for a new one), else {@link DEFAULT_FUZZ_SEED}. */
export function fuzzSeed(env: NodeJS.ProcessEnv = process.env): number {
  const s = env['BERTH_FUZZ_SEED'];
  // The suite's run (CI) is reproducible: a fixed seed unless one is asked for;
  // BERTH_FUZZ_SEED=random explores a new one.
  if (s === undefined || s === '') return DEFAULT_FUZZ_SEED;
  if (s !== 'random') {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new Error(`BERTH_FUZZ_SEED "${s}" is not an integer in [0, 2^32)`);
    return n;
  }
  return Math.floor(Math.random() * 2 ** 32) >>> 0;
}

/** Strings that have broken parsers, paths and logs before. */
const ODD_STRINGS = [
  '',
  ' ',
  '.',
  '..',
  '/',
  '//',
  '../../../../etc/passwd',
  'a/../../b',
  '/proc/self/root',
  '-',
  '--help',
  '*',
  '%s%n%x',
  '${HOME}',
  '$(id)',
  '`id`',
  'a\nb',
  '\r\n',
  '\t',
  '\0',
  'a\0b',
  '\ud800',
  'x\udfffy',
  '\u202eevil\u202c',
  '\u200f\u200e',
  '\ufeff',
  '\u0000\u0001\u001f\u007f',
  'e\u0301\u0301\u0301',
  '\u{1f600}\u{1f4a9}',
  'ＡＢＣ',
  'İı',
  'null',
  'undefined',
  'true',
  '0',
  '-1',
  '1e309',
  'NaN',
  '9223372036854775808',
  '-9223372036854775809',
  '0x10',
  'sha256:',
  'sha256:0',
  'sha256:' + 'a'.repeat(64),
  'sha512:' + 'b'.repeat(128),
  'docker.io/library/busybox:latest',
  'busybox',
  'localhost:5000/a/b:c@sha256:' + 'c'.repeat(64),
  'a:b:c',
  '@',
  ':',
  'A'.repeat(64),
  '__proto__',
  'constructor',
  'hasOwnProperty',
  '{"a":1}',
  '<script>',
  "'; DROP TABLE containers; --",
];

const LONG_LENGTHS = [64, 253, 254, 1024, 4096, 4097, 65_536, 1 << 20];

const INT32 = [0, 1, -1, 2, 7, 255, 256, 65535, 65536, 2 ** 31 - 1, -(2 ** 31), 1000, 1 << 20];
const UINT32 = [0, 1, 2, 255, 65535, 65536, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1];
const INT64 = ['0', '1', '-1', '2', '100', '1000000', '9007199254740993', '9223372036854775807', '-9223372036854775808', '4294967296', '-4294967296'];
const UINT64 = ['0', '1', '2', '1000', '9007199254740993', '9223372036854775807', '9223372036854775808', '18446744073709551615', '4294967296'];
const DOUBLES = [0, -0, 1, -1, 0.5, 1e308, -1e308, 5e-324, Infinity, -Infinity, NaN];

/** Ids and other names the run has seen, for "an id of another kind" requests. */
export interface IdSource {
  /** Every id seen so far (pod, container, image ids, digests, references). */
  all(): string[];
}

export interface GenOptions {
  rng: Rng;
  ids: IdSource;
  /** Deepest message nesting generated; deeper message fields are left out. */
  maxDepth?: number;
  /** Most bytes one generated message may take (kept well under the 16 MiB limit). */
  budgetBytes?: number;
}

/**
 * Random messages of protobufjs types, as plain objects with the proto's field names.
 * Values cover every scalar type's edges, unknown enum numbers, missing and huge fields,
 * odd unicode, ids of other kinds, and big maps and repeated fields.
 */
export class MessageGenerator {
  private budget = 0;

  constructor(private readonly opts: GenOptions) {}

  private get rng(): Rng {
    return this.opts.rng;
  }

  /** A random message of `type`. */
  message(type: protobuf.Type): Record<string, unknown> {
    this.budget = this.opts.budgetBytes ?? 4 << 20;
    return this.gen(type, 0, undefined, 0);
  }

  /**
   * `template` with some of its fields replaced by random values, removed, or added:
   * a valid request made invalid in one or a few places, which reaches deeper into a
   * handler than an entirely random one. `rate` is the chance that a field changes.
   */
  mutate(type: protobuf.Type, template: Record<string, unknown>, rate = 0.08): Record<string, unknown> {
    this.budget = this.opts.budgetBytes ?? 4 << 20;
    return this.gen(type, 0, template, rate);
  }

  private gen(type: protobuf.Type, depth: number, template: Record<string, unknown> | undefined, rate: number): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    const maxDepth = this.opts.maxDepth ?? 8;
    // Of a oneof, at most one member is set.
    const oneofTaken = new Set<string>();
    for (const f of type.fieldsArray) {
      if (f.partOf && oneofTaken.has(f.partOf.name)) continue;
      const has = template !== undefined && template[f.name] !== undefined;
      let v: unknown;
      if (template !== undefined && !this.rng.chance(rate)) {
        // Keep the template's value (its messages mutated further down).
        if (!has) continue;
        v = this.keep(f, template[f.name], depth, rate);
      } else if (template === undefined && this.rng.chance(depth === 0 ? 0.2 : 0.45 + depth * 0.05)) {
        continue; // missing
      } else if (has && this.rng.chance(0.3)) {
        continue; // removed from the template
      } else {
        if (f.resolvedType instanceof protobuf.Type && !f.map && depth >= maxDepth) continue;
        v = this.field(f, depth);
      }
      if (v === undefined) continue;
      out[f.name] = v;
      if (f.partOf) oneofTaken.add(f.partOf.name);
    }
    return out;
  }

  private keep(f: protobuf.Field, v: unknown, depth: number, rate: number): unknown {
    const t = f.resolvedType;
    if (!(t instanceof protobuf.Type) || f.map) return v;
    const one = (x: unknown): unknown => (x !== null && typeof x === 'object' ? this.gen(t, depth + 1, x as Record<string, unknown>, rate) : x);
    return f.repeated && Array.isArray(v) ? v.map(one) : one(v);
  }

  /** How many entries a repeated or map field gets: mostly few, sometimes very many. */
  private count(): number {
    return this.rng.weighted([
      [30, 0],
      [40, 1 + this.rng.int(3)],
      [15, 4 + this.rng.int(12)],
      [8, 100 + this.rng.int(400)],
      [4, 1000 + this.rng.int(4000)],
      [1, 20_000],
    ] as const);
  }

  private field(f: protobuf.Field, depth: number): unknown {
    if (f.map) {
      const n = this.count();
      const m: Record<string, unknown> = {};
      for (let i = 0; i < n && this.budget > 0; i++) {
        // Many keys repeat: a map's later value wins, and that must be fine too.
        const k = i > 0 && this.rng.chance(0.05) ? Object.keys(m)[0]! : this.string(`${f.name}.key`, 256);
        m[k] = this.value(f, depth);
      }
      return m;
    }
    if (f.repeated) {
      const n = this.count();
      const a: unknown[] = [];
      for (let i = 0; i < n && this.budget > 0; i++) a.push(this.value(f, depth));
      return a;
    }
    return this.value(f, depth);
  }

  private value(f: protobuf.Field, depth: number): unknown {
    const t = f.resolvedType;
    if (t instanceof protobuf.Type) return this.gen(t, depth + 1, undefined, 0);
    if (t instanceof protobuf.Enum) {
      const values = Object.values(t.values);
      // Unknown numbers too: an enum field on the wire may hold any int32.
      return this.rng.chance(0.8) ? this.rng.pick(values) : this.rng.pick([-1, values.length, 99, 2 ** 31 - 1, -(2 ** 31)]);
    }
    switch (f.type) {
      case 'string':
        return this.string(f.name);
      case 'bytes': {
        const s = this.string(f.name);
        return this.rng.chance(0.5) ? Buffer.from(s) : this.rng.bytes(this.rng.int(64));
      }
      case 'bool':
        return this.rng.chance(0.5);
      case 'int32':
      case 'sint32':
      case 'sfixed32':
        return this.rng.chance(0.7) ? this.rng.pick(INT32) : this.rng.next() | 0;
      case 'uint32':
      case 'fixed32':
        return this.rng.chance(0.7) ? this.rng.pick(UINT32) : this.rng.next();
      case 'int64':
      case 'sint64':
      case 'sfixed64':
        return this.rng.chance(0.7) ? this.rng.pick(INT64) : String(this.rng.next() - 2 ** 31);
      case 'uint64':
      case 'fixed64':
        return this.rng.chance(0.7) ? this.rng.pick(UINT64) : String(this.rng.next());
      case 'double':
      case 'float':
        return this.rng.chance(0.7) ? this.rng.pick(DOUBLES) : (this.rng.float() - 0.5) * 2 ** this.rng.int(80);
      default:
        return undefined;
    }
  }

  /** A string for a field: an id of any kind for id-like fields, else odd, long or plain text. */
  string(field: string, max = Infinity): string {
    const idLike = /(^|_)(id|image|ref|digest)$/.test(field) || field === 'image';
    const ids = this.opts.ids.all();
    const kind = this.rng.weighted([
      [idLike && ids.length > 0 ? 50 : 0, 'id'],
      [25, 'odd'],
      [20, 'plain'],
      [10, 'unicode'],
      [6, 'long'],
    ] as const);
    let s: string;
    switch (kind) {
      case 'id': {
        const id = this.rng.pick(ids);
        s = this.rng.weighted([
          [5, id],
          [2, id.slice(0, 1 + this.rng.int(Math.max(1, id.length - 1)))], // a prefix
          [1, id + this.rng.pick(['x', '/', '\0', ' ', ':', '\ud800'])],
          [1, id.toUpperCase()],
          [1, ` ${id}`],
        ] as const);
        break;
      }
      case 'odd':
        s = this.rng.pick(ODD_STRINGS);
        break;
      case 'plain':
        s = this.plain(1 + this.rng.int(24));
        break;
      case 'unicode':
        s = this.unicode(1 + this.rng.int(40));
        break;
      default: {
        const n = this.rng.pick(LONG_LENGTHS);
        s = n > this.budget ? this.plain(64) : this.rng.pick(['a', '/', '\u{1f600}', 'é', '\ud800', 'ab/']).repeat(n);
      }
    }
    if (s.length > max) s = s.slice(0, max);
    this.budget -= s.length * 3;
    return s;
  }

  private plain(n: number): string {
    const chars = 'abcdefghijklmnopqrstuvwxyz0123456789-._/:@';
    let s = '';
    for (let i = 0; i < n; i++) s += chars[this.rng.int(chars.length)];
    return s;
  }

  private unicode(n: number): string {
    let s = '';
    for (let i = 0; i < n; i++) {
      s += this.rng.weighted([
        [4, () => String.fromCharCode(0x20 + this.rng.int(0x5f))],
        [2, () => String.fromCharCode(this.rng.int(0x20))], // controls, NUL
        [2, () => String.fromCharCode(0xd800 + this.rng.int(0x800))], // lone surrogates
        [2, () => String.fromCodePoint(0x10000 + this.rng.int(0x10ffff - 0x10000))],
        [2, () => this.rng.pick(['\u202e', '\u202d', '\u200f', '\u200b', '\u2028', '\u2029', '\ufeff', '\ufffd', '\uffff'])],
        [2, () => String.fromCharCode(0x80 + this.rng.int(0xd800 - 0x80))],
      ] as const)();
    }
    return s;
  }
}

/** Encodes a generated object; undefined when protobufjs refuses it (then the raw path sends garbage instead). */
export function encode(type: protobuf.Type, obj: Record<string, unknown>): Buffer {
  return Buffer.from(type.encode(type.fromObject(obj)).finish());
}

/**
 * Bytes that are not a valid encoding of `type` (or are, by accident, which is fine):
 * random bytes, a valid encoding truncated or with bytes flipped, wrong wire types for
 * known field numbers, lengths past the end, deep group nesting, huge varints.
 */
export function garbage(rng: Rng, valid: Buffer, type: protobuf.Type): Buffer {
  const fieldNos = type.fieldsArray.map((f) => f.id);
  const tag = (no: number, wire: number): number[] => varint(no * 8 + wire);
  switch (rng.int(9)) {
    case 0:
      return rng.bytes(rng.int(256));
    case 1:
      return valid.subarray(0, valid.length > 0 ? rng.int(valid.length) : 0);
    case 2: {
      const b = Buffer.from(valid);
      for (let i = 0; i < 1 + rng.int(4) && b.length > 0; i++) b[rng.int(b.length)] = rng.next() & 0xff;
      return b;
    }
    case 3: {
      // A known field number with every wrong wire type (0 varint, 1 fixed64, 2 bytes, 5 fixed32).
      const no = fieldNos.length > 0 ? rng.pick(fieldNos) : 1;
      const wire = rng.pick([0, 1, 2, 5]);
      const body = wire === 0 ? varint(rng.next()) : wire === 1 ? [...rng.bytes(8)] : wire === 5 ? [...rng.bytes(4)] : [...varint(3), 1, 2, 3];
      return Buffer.concat([valid, Buffer.from([...tag(no, wire), ...body])]);
    }
    case 4: {
      // A length that runs past the end of the message.
      const no = fieldNos.length > 0 ? rng.pick(fieldNos) : 1;
      return Buffer.from([...tag(no, 2), ...varint(1 + rng.int(2 ** 31)), 1, 2]);
    }
    case 5: {
      // Groups (wire types 3/4, deprecated) nested very deep, or unbalanced.
      const depth = rng.pick([1, 100, 10_000, 100_000]);
      const start = tag(1 + rng.int(30), 3);
      const parts: number[] = [];
      for (let i = 0; i < depth; i++) parts.push(...start);
      if (rng.chance(0.5)) for (let i = 0; i < depth; i++) parts.push(...tag(1 + rng.int(30), 4));
      return Buffer.from(parts);
    }
    case 6:
      // An overlong varint (more than 10 bytes).
      return Buffer.from([...tag(fieldNos[0] ?? 1, 0), ...new Array<number>(11 + rng.int(20)).fill(0xff), 0x01]);
    case 7:
      // Field number 0 and the largest field number; wire types 6 and 7 do not exist.
      return Buffer.from([0x00, 0x01, ...tag(2 ** 29 - 1, 0), 0x01, ...tag(1, 6), ...tag(1, 7)]);
    default: {
      // Nested length-delimited messages, deep enough to trouble a recursive decoder.
      let inner: number[] = [];
      const msgFields = type.fieldsArray.filter((f) => f.resolvedType instanceof protobuf.Type);
      const no = msgFields.length > 0 ? rng.pick(msgFields).id : 1;
      for (let i = 0; i < rng.pick([10, 200, 2000]); i++) inner = [...tag(no, 2), ...varint(inner.length), ...inner];
      return Buffer.from(inner);
    }
  }
}

function varint(n: number): number[] {
  const out: number[] = [];
  let v = Math.floor(n);
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return out;
}
