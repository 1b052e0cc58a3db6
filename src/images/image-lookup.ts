/**
 * Finding images the way CRI names them: by ID (full, without "sha256:", or a unique
 * prefix of at least 12 digits as crictl shows it), by tag or by digest reference, with
 * the images configured in images.pinned marked as pinned.
 */
import { BerthError, messageOf } from '../common/errors.js';
import type { ImageRecord, ImageRepository } from './image-repository.js';
import { digestedName, isImageId, parseReference, taggedName, type ImageReference } from './reference.js';

/**
 * The normalised names of images.pinned; throws InvalidArgument naming the key when a
 * reference does not parse (a config reload runs it before putting a config in force).
 */
export function pinnedNames(pinned: readonly string[]): Set<string> {
  return new Set(
    pinned.map((text) => {
      let ref: ImageReference;
      try {
        ref = parseReference(text);
      } catch (err) {
        throw new BerthError('InvalidArgument', `config key 'images.pinned': ${messageOf(err)}`);
      }
      return ref.digest ? digestedName(ref, ref.digest) : taggedName(ref)!;
    }),
  );
}

/** Lookups over the image repository, with pins from the configuration. */
export class ImageLookup {
  /** Names (tags and digests, normalised) of images configured as pinned, for the list they came from. */
  private pins: { from: readonly string[]; names: Set<string> };

  /**
   * `pinned` gives images.pinned in force, asked at each lookup (a config reload may
   * change it); a reference that does not parse is InvalidArgument, here at once.
   */
  constructor(
    private readonly repo: ImageRepository,
    private readonly pinned: () => readonly string[],
  ) {
    const from = pinned();
    this.pins = { from, names: pinnedNames(from) };
  }

  private get pinnedNames(): Set<string> {
    const from = this.pinned();
    if (from !== this.pins.from) this.pins = { from, names: pinnedNames(from) };
    return this.pins.names;
  }

  /** Finds an image by ID (full, "sha256:"-less, or a unique prefix), tag or digest reference. */
  find(spec: string): ImageRecord | undefined {
    return this.withPin(this.lookup(spec));
  }

  list(): ImageRecord[] {
    return this.repo.list().map((i) => this.withPin(i)!);
  }

  /** Marks an image pinned when one of its names is in images.pinned. */
  private withPin(img: ImageRecord | undefined): ImageRecord | undefined {
    if (!img) return undefined;
    return { ...img, pinned: img.pinned || [...img.tags, ...img.digests].some((n) => this.pinnedNames.has(n)) };
  }

  private lookup(spec: string): ImageRecord | undefined {
    const s = spec.trim();
    if (s === '') return undefined;
    if (isImageId(s)) return this.repo.get(s.startsWith('sha256:') ? s : `sha256:${s}`);
    let ref: ImageReference | undefined;
    try {
      ref = parseReference(s);
    } catch {
      ref = undefined;
    }
    if (ref) {
      const byName = ref.digest ? this.repo.byName(digestedName(ref, ref.digest)) : this.repo.byName(taggedName(ref) ?? '');
      if (byName) return byName;
    }
    // A short ID as crictl shows it. At least 12 hex digits, so that a short image name
    // that happens to be hex ("cafe") never resolves to an unrelated image.
    const hex = s.replace(/^sha256:/, '');
    if (/^[a-f0-9]{12,63}$/.test(hex)) {
      const ids = this.repo.idsWithPrefix(`sha256:${hex}`);
      if (ids.length === 1) return this.repo.get(ids[0]!);
    }
    return undefined;
  }
}
