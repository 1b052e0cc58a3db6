/**
 * The overlayfs marks of one unpack: the whiteouts this layer made (a directory that
 * replaces one becomes opaque), the directories marked opaque, and the 0:0 character
 * devices the whiteouts are hardlinks of.
 */
import * as fs from 'node:fs';
import { mknod, setfattr } from './host-tools.js';
import { WHITEOUT_META_PREFIX } from './tar-entry.js';

export class OverlayMarks {
  /** Whiteout devices this layer created, by relative path. */
  private readonly whiteouts = new Set<string>();
  private readonly opaque = new Set<string>();
  /** Character devices 0:0 that whiteouts are hardlinks of. */
  private readonly devices: string[] = [];

  constructor(
    private readonly root: string,
    private readonly layer: string,
  ) {}

  isWhiteout(rel: string): boolean {
    return this.whiteouts.has(rel);
  }

  addWhiteout(rel: string): void {
    this.whiteouts.add(rel);
  }

  /** The whiteout at `rel` was removed and a directory made there. */
  whiteoutBecameDirectory(rel: string): void {
    this.whiteouts.delete(rel);
    this.opaque.add(rel);
  }

  markOpaque(rel: string): void {
    this.opaque.add(rel);
  }

  /** Forgets the marks of `rel` and of the paths `under` selects (a removed directory). */
  forget(rel: string, under?: (key: string) => boolean): void {
    for (const set of [this.whiteouts, this.opaque]) {
      if (under) for (const key of set) if (under(key)) set.delete(key);
      set.delete(rel);
    }
  }

  /** The whiteout device to link to, made if there is none yet. */
  async device(): Promise<string> {
    return this.devices[this.devices.length - 1] ?? (await this.newDevice());
  }

  /**
   * Makes a whiteout device, first or after the last reached the link limit. It has a
   * `.wh..wh.` name, which no layer entry can create or replace (they are skipped), and
   * is removed at the end. One mknod process per layer instead of one per deleted file,
   * as overlayfs itself shares whiteout inodes.
   */
  async newDevice(): Promise<string> {
    const path = `${this.root}/${WHITEOUT_META_PREFIX}berth-whiteout-${this.devices.length}`;
    await mknod([path, 'c', '0', '0'], this.layer);
    this.devices.push(path);
    return path;
  }

  removeDevices(): void {
    for (const path of this.devices) fs.unlinkSync(path);
  }

  /** Sets `trusted.overlay.opaque=y` on the opaque directories (`abs` makes their paths). */
  async applyOpaque(abs: (rel: string) => string): Promise<void> {
    if (this.opaque.size === 0) return;
    const opaque = Buffer.from('y');
    await setfattr(
      [...this.opaque].map((rel) => [abs(rel), [['trusted.overlay.opaque', opaque]]] as const),
      false,
      this.layer,
    );
  }
}
