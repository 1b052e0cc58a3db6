/**
 * The extended attributes an unpack has yet to apply. They are set in batches, one
 * `setfattr` run per batch, and after the owner is set (chown clears capabilities).
 * A batch is bounded by paths and by bytes: each value is at most 64 KiB and each entry
 * has at most 128 xattrs (pax-xattrs.ts refuses more), and the batch is applied once it
 * holds 1 MiB of paths, names and values, so memory stays near that whatever the layer.
 */
import { setfattr } from './host-tools.js';
import type { Xattrs } from './tar-entry.js';

/** Paths with pending xattrs before they are applied in one setfattr run. */
const XATTR_BATCH = 1024;
/** Bytes of pending paths, names and values before they are applied. */
export const XATTR_BATCH_BYTES = 1024 * 1024;

/** Pending xattrs by path relative to the snapshot root. */
export class XattrBatch {
  private readonly pending = new Map<string, Xattrs>();
  /** Bytes of the pending paths, names and values. */
  private pendingBytes = 0;

  /** `abs` turns a relative path into the absolute one; `layer` names the layer in errors. */
  constructor(
    private readonly abs: (rel: string) => string,
    private readonly layer: string,
  ) {}

  /** Whether enough paths or bytes are pending to apply them. */
  get full(): boolean {
    return this.pending.size >= XATTR_BATCH || this.pendingBytes >= XATTR_BATCH_BYTES;
  }

  queue(rel: string, xattrs: Xattrs): void {
    if (xattrs.length === 0) return;
    const old = this.pending.get(rel);
    if (old) this.pendingBytes -= bytesOf(rel, old);
    this.pending.set(rel, xattrs);
    this.pendingBytes += bytesOf(rel, xattrs);
  }

  /** Whether any pending path satisfies `test`. */
  has(test: (rel: string) => boolean): boolean {
    return [...this.pending.keys()].some(test);
  }

  async flush(): Promise<void> {
    if (this.pending.size === 0) return;
    const batch = [...this.pending].map(([rel, list]) => [this.abs(rel), list] as const);
    this.pending.clear();
    this.pendingBytes = 0;
    // Layers may carry xattrs this filesystem cannot hold (user.* on a symlink, say);
    // like other runtimes we skip those rather than refuse the image.
    await setfattr(batch, true, this.layer);
  }
}

function bytesOf(rel: string, xattrs: Xattrs): number {
  let n = rel.length;
  for (const [name, value] of xattrs) n += name.length + value.length;
  return n;
}
