/**
 * The extended attributes an unpack has yet to apply. They are set in batches, one
 * `setfattr` run per batch, and after the owner is set (chown clears capabilities).
 */
import { setfattr } from './host-tools.js';
import type { Xattrs } from './tar-entry.js';

/** Paths with pending xattrs before they are applied in one setfattr run. */
const XATTR_BATCH = 1024;

/** Pending xattrs by path relative to the snapshot root. */
export class XattrBatch {
  private readonly pending = new Map<string, Xattrs>();

  /** `abs` turns a relative path into the absolute one; `layer` names the layer in errors. */
  constructor(
    private readonly abs: (rel: string) => string,
    private readonly layer: string,
  ) {}

  /** Whether enough paths are pending to apply them. */
  get full(): boolean {
    return this.pending.size >= XATTR_BATCH;
  }

  queue(rel: string, xattrs: Xattrs): void {
    if (xattrs.length > 0) this.pending.set(rel, xattrs);
  }

  /** Whether any pending path satisfies `test`. */
  has(test: (rel: string) => boolean): boolean {
    return [...this.pending.keys()].some(test);
  }

  async flush(): Promise<void> {
    if (this.pending.size === 0) return;
    const batch = [...this.pending].map(([rel, list]) => [this.abs(rel), list] as const);
    this.pending.clear();
    // Layers may carry xattrs this filesystem cannot hold (user.* on a symlink, say);
    // like other runtimes we skip those rather than refuse the image.
    await setfattr(batch, true, this.layer);
  }
}
