import { BerthError } from '../../common/errors.js';
import type { ImageRecord } from '../../images/image-repository.js';
import { imageUser, type ImageService } from '../../images/image-service.js';
import { isImageId, parseReference, repositoryName } from '../../images/reference.js';
import type { Credentials } from '../../images/registry/auth.js';
import { decodeAuthField } from '../../images/registry/auth.js';
import type { AuthConfig__Output } from '../gen/runtime/v1/AuthConfig.js';
import type { Image } from '../gen/runtime/v1/Image.js';
import type { ImageFilter__Output } from '../gen/runtime/v1/ImageFilter.js';

/** An image record as CRI's Image message. */
export function toCriImage(img: ImageRecord): Image {
  const { uid, username } = imageUser(img.config);
  return {
    id: img.id,
    repo_tags: img.tags,
    repo_digests: img.digests,
    size: String(img.size),
    ...(uid !== undefined ? { uid: { value: String(uid) } } : {}),
    username,
    spec: { image: img.id, annotations: {} },
    pinned: img.pinned,
  };
}

/** CRI AuthConfig → credentials; `auth` (base64 user:password) fills missing username/password. */
export function credentialsFrom(auth: AuthConfig__Output | null | undefined): Credentials | undefined {
  if (!auth) return undefined;
  let { username, password } = auth;
  if (auth.auth && !username && !password) ({ username, password } = decodeAuthField(auth.auth));
  const c: Credentials = {};
  if (username) c.username = username;
  if (password) c.password = password;
  if (auth.identity_token) c.identityToken = auth.identity_token;
  if (auth.registry_token) {
    // Sent as `Authorization: Bearer <token>`: a header value, visible ASCII only.
    if (!/^[\x21-\x7e]+$/.test(auth.registry_token)) throw new BerthError('InvalidArgument', 'auth.registry_token holds characters a bearer token cannot have');
    c.registryToken = auth.registry_token;
  }
  return Object.keys(c).length > 0 ? c : undefined;
}

/** ListImages / StreamImages filtering: by image ID or reference when the filter names one. */
export function filteredImages(images: ImageService, filter: ImageFilter__Output | null): Image[] {
  const wanted = filter?.image?.image ?? '';
  if (wanted !== '') {
    // A repository without tag or digest (`crictl images busybox`): every image of it.
    if (!wanted.includes('@') && !/:[^/]*$/.test(wanted) && !isImageId(wanted)) {
      try {
        const repo = repositoryName(parseReference(wanted)) + ':';
        return images
          .list()
          .filter((i) => i.tags.some((t) => t.startsWith(repo)))
          .map(toCriImage);
      } catch {
        // not a reference: fall through to the exact lookup
      }
    }
    const img = images.find(wanted);
    return img ? [toCriImage(img)] : [];
  }
  return images.list().map(toCriImage);
}

export function requireImageName(spec: { image: string } | null | undefined, field: string): string {
  const name = spec?.image ?? '';
  if (name === '') throw new BerthError('InvalidArgument', `${field} is required`);
  return name;
}
