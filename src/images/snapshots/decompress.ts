/**
 * The decompressor of a layer blob: gzip through zlib's raw inflate (gunzip.ts reads the
 * gzip framing), zstd through the host's `zstd` tool (Node 20 has none), plain tar as it is. Its errors name the layer and say whose
 * fault they are: Unavailable when reading the blob failed, DataLoss for corrupt data,
 * FailedPrecondition when the host lacks zstd.
 */
import { pipeline, Readable } from 'node:stream';
import { BerthError, messageOf } from '../../common/errors.js';
import { BoundedOutput, spawnProcess, type ChildProcess } from '../../common/process.js';
import { GzipDecoder } from './gunzip.js';

/** How a layer blob is compressed (from its media type). */
export type LayerCompression = 'gzip' | 'zstd' | 'none';

/** A stream of uncompressed tar bytes over the blob. */
export interface Decompressor {
  readonly output: AsyncIterable<Buffer>;
  /** Called at the end of `output`: throws if the decompressor reported an error. */
  finish(): Promise<void>;
  /** The BerthError for an error thrown while reading `output`. */
  explain(err: unknown): unknown;
  /** Stops reading the blob and kills any child process. */
  destroy(): void;
  /** Settles once no child process is left. */
  readonly closed: Promise<void>;
}

/** Opens the decompressor of `source`; `layer` (the blob digest) names it in errors. */
export function openDecompressor(source: Readable, compression: LayerCompression, layer: string): Decompressor {
  let sourceError: unknown;
  source.on('error', (err) => (sourceError ??= err));
  // errored is set at once by destroy(err), its 'error' event comes a tick later.
  const sourceFailed = (): boolean => (sourceError ??= source.errored ?? undefined) !== undefined;
  const fromSource = (): unknown =>
    sourceError instanceof BerthError
      ? sourceError
      : new BerthError('Unavailable', `layer ${layer}: reading the blob failed: ${messageOf(sourceError)}`, {
          cause: sourceError,
        });

  if (compression === 'none') {
    return {
      output: source,
      finish: async () => {
        if (sourceFailed()) throw fromSource();
      },
      explain: (err) => (err instanceof BerthError ? err : sourceFailed() ? fromSource() : err),
      destroy: () => source.destroy(),
      closed: Promise.resolve(),
    };
  }

  if (compression === 'gzip') {
    // The source's errors surface through the decoder's iteration of it.
    const gunzip = new GzipDecoder(source);
    return {
      output: gunzip,
      finish: async () => {
        if (sourceFailed()) throw fromSource();
      },
      explain: (err) => {
        if (err instanceof BerthError) return err;
        if (sourceFailed()) return fromSource();
        return new BerthError('DataLoss', `layer ${layer}: corrupt gzip data: ${messageOf(err)}`);
      },
      destroy: () => {
        source.destroy();
        gunzip.destroy();
      },
      closed: Promise.resolve(),
    };
  }

  // Node 20 has no zstd: the host's zstd decompresses, fed from the blob.
  let child: ChildProcess | undefined;
  let spawnError: unknown;
  try {
    child = spawnProcess('zstd', ['-d', '-c', '-q'], { stdio: ['in', 'out', 'out'], env: { ...process.env, LC_ALL: 'C' } });
  } catch (err) {
    spawnError = err;
  }
  const stderr = new BoundedOutput(child?.stderr, 4096);
  const closed = child ? Promise.all([child.exited, stderr.closed]).then(([status]) => status.code) : Promise.resolve(null);
  if (child?.stdin) {
    pipeline(source, child.stdin, () => {
      // EPIPE when zstd stops early on bad data: its exit status says why
    });
  }
  const failed = (): BerthError => {
    if (spawnError !== undefined) {
      return new BerthError('FailedPrecondition', `layer ${layer}: zstd layers need the zstd tool on the host (Debian package zstd): ${messageOf(spawnError)}`);
    }
    return new BerthError('DataLoss', `layer ${layer}: corrupt zstd data: ${stderr.text().trim() || 'zstd failed'}`);
  };
  return {
    output: child?.stdout ?? Readable.from([]),
    finish: async () => {
      const code = await closed;
      if (sourceFailed()) throw fromSource();
      if (code !== 0 || spawnError !== undefined) throw failed();
    },
    explain: (err) => (err instanceof BerthError ? err : sourceFailed() ? fromSource() : failed()),
    destroy: () => {
      source.destroy();
      child?.closeStdio();
      child?.kill('SIGKILL');
    },
    closed: closed.then(() => undefined),
  };
}
