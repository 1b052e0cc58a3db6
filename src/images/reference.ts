/**
 * Image references: parsing and normalising the names users write in pod specs and
 * `crictl pull` (`busybox`, `quay.io/team/app:v1`, `repo@sha256:…`) into the fully
 * qualified form the image store keys on and the registry client resolves.
 *
 * The grammar is the one of github.com/distribution/reference, which Docker,
 * containerd and the kubelet all share:
 *
 *     reference  := name [ ":" tag ] [ "@" digest ]
 *     name       := [ domain "/" ] path
 *     domain     := host [ ":" port ]          host: DNS name, IPv4, or [IPv6]
 *     path       := component ( "/" component )*
 *     component  := [a-z0-9]+ ( ( [._] | "__" | "-"+ ) [a-z0-9]+ )*
 *     tag        := [\w][\w.-]{0,127}
 *     digest     := algorithm ":" hex
 *
 * Normalisation follows Docker's: the first component is a registry only if it looks
 * like a host (has a '.' or ':', or is `localhost`), otherwise the image lives on
 * Docker Hub, whose one-word repositories sit under `library/`. A reference with
 * neither tag nor digest gets the tag `latest`; one pinned by digest gets no tag.
 *
 * Where berth is stricter than the grammar, it is on purpose: a bare 64-hex string
 * or `sha256:<hex>` is an image ID (the CRI passes IDs where references are expected),
 * not a repository, and only the digest algorithms the image store can verify are
 * accepted. Pure: no I/O.
 */
import { invalidArgument } from '../common/errors.js';

/** A parsed, normalised image reference. */
export interface ImageReference {
  /**
   * Registry host[:port], normalised: "docker.io" for Docker Hub (never "index.docker.io" /
   * "registry-1.docker.io").
   */
  domain: string;
  /** Repository path, e.g. "library/busybox"; lowercase per the grammar. */
  path: string;
  /** Present when given, or defaulted to "latest" when neither tag nor digest was given. */
  tag?: string;
  /** "sha256:<64 hex>" (also sha512). */
  digest?: string;
}

const DOCKER_HUB = 'docker.io';
/** Other names of Docker Hub that users write; they all normalise to docker.io. */
const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);
/** Where Docker Hub's registry API actually answers. */
const DOCKER_HUB_API_HOST = 'registry-1.docker.io';
const OFFICIAL_PREFIX = 'library/';
const DEFAULT_TAG = 'latest';

const NAME_MAX_LENGTH = 255;
const TAG_MAX_LENGTH = 128;

const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const DOMAIN_LABEL = /^[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?$/;
const IPV6_HOST = /^\[[a-fA-F0-9:]+\]$/;
const PORT = /^[0-9]+$/;
/** The tag grammar without its length limit, which is checked apart for a clearer message. */
const TAG = /^\w[\w.-]*$/;
const LOWER_HEX = /^[a-f0-9]+$/;
const IMAGE_ID = /^(?:sha256:)?[a-f0-9]{64}$/;
const URL_SCHEME = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\//;

/** Hex length of each digest algorithm the content store can verify. */
const DIGEST_HEX_LENGTH = new Map([
  ['sha256', 64],
  ['sha512', 128],
]);

const quote = (s: string): string => JSON.stringify(s);

/**
 * Parses and normalises an image reference: `busybox` → docker.io/library/busybox:latest;
 * `user/app` → docker.io/user/app:latest; `localhost:5000/x` and `host.tld/x` name their
 * registry; `repo@sha256:…` keeps the digest and gets no default tag; `repo:tag@sha256:…`
 * keeps both.
 *
 * @throws BerthError InvalidArgument, naming the input and what is wrong with it. Image
 * IDs (see {@link isImageId}) are rejected too: callers that accept either check first.
 */
export function parseReference(input: string): ImageReference {
  const fail = (what: string) => invalidArgument(`invalid image reference ${quote(input)}: ${what}`);

  if (input === '') throw fail('it is empty');
  if (input.trim() !== input) throw fail('it has leading or trailing whitespace');
  if (isImageId(input)) {
    throw fail('it looks like an image ID, not a reference; look the image up by ID instead');
  }
  if (URL_SCHEME.test(input)) throw fail('a URL scheme such as "https://" is not part of an image reference');

  // Neither the name nor the tag may hold an '@', and the tag is what follows the last
  // ':' of the last path component (a ':' before a '/' is a registry port).
  let rest = input;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (digest.includes('@')) throw fail("it has more than one '@'");
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
  }
  if (rest === '') throw fail('the repository name is empty');

  let domain = DOCKER_HUB;
  let path = rest;
  const slash = rest.indexOf('/');
  if (slash >= 0 && looksLikeDomain(rest.slice(0, slash))) {
    domain = rest.slice(0, slash);
    path = rest.slice(slash + 1);
    const problem = domainProblem(domain);
    if (problem !== undefined) throw fail(problem);
    // Host names are case-insensitive; any spelling of Docker Hub is Docker Hub.
    if (DOCKER_HUB_ALIASES.has(domain.toLowerCase())) domain = DOCKER_HUB;
  }

  const pathProblem = repositoryPathProblem(path);
  if (pathProblem !== undefined) throw fail(pathProblem);
  if (domain === DOCKER_HUB && !path.includes('/')) path = OFFICIAL_PREFIX + path;

  // Docker measures the limit on the normalised name, so `busybox` counts as
  // `docker.io/library/busybox`.
  const name = `${domain}/${path}`;
  if (name.length > NAME_MAX_LENGTH) {
    throw fail(`the repository name is ${name.length} characters long (${quote(name)}); the maximum is ${NAME_MAX_LENGTH}`);
  }

  if (tag !== undefined) {
    if (tag === '') throw fail("the tag after ':' is empty");
    if (tag.length > TAG_MAX_LENGTH) {
      throw fail(`the tag is ${tag.length} characters long; the maximum is ${TAG_MAX_LENGTH}`);
    }
    if (!TAG.test(tag)) {
      throw fail(`tag ${quote(tag)} must start with a letter, digit or '_' and hold only letters, digits, '_', '.' and '-'`);
    }
  }

  if (digest !== undefined) {
    if (digest === '') throw fail("the digest after '@' is empty");
    const problem = digestProblem(digest);
    if (problem !== undefined) throw fail(`digest ${quote(digest)} ${problem}`);
  }

  const ref: ImageReference = { domain, path };
  if (tag !== undefined) ref.tag = tag;
  if (digest !== undefined) ref.digest = digest;
  if (tag === undefined && digest === undefined) ref.tag = DEFAULT_TAG;
  return ref;
}

/** The repository's fully qualified name, e.g. "docker.io/library/busybox". */
export function repositoryName(ref: ImageReference): string {
  return `${ref.domain}/${ref.path}`;
}

/** Fully qualified: "docker.io/library/busybox:latest", "h:5000/x@sha256:…", "h/x:t@sha256:…". */
export function formatReference(ref: ImageReference): string {
  let s = repositoryName(ref);
  if (ref.tag !== undefined) s += `:${ref.tag}`;
  if (ref.digest !== undefined) s += `@${ref.digest}`;
  return s;
}

/** The name for an image's repo_tags, e.g. "docker.io/library/busybox:latest"; undefined without a tag. */
export function taggedName(ref: ImageReference): string | undefined {
  return ref.tag === undefined ? undefined : `${repositoryName(ref)}:${ref.tag}`;
}

/**
 * The name for an image's repo_digests, e.g. "docker.io/library/busybox@sha256:…". It
 * takes the manifest digest as pulled, not the reference's: a tag-only reference has none.
 *
 * @throws BerthError InvalidArgument if `manifestDigest` is not a valid digest.
 */
export function digestedName(ref: ImageReference, manifestDigest: string): string {
  const problem = digestProblem(manifestDigest);
  if (problem !== undefined) throw invalidArgument(`manifest digest ${quote(manifestDigest)} ${problem}`);
  return `${repositoryName(ref)}@${manifestDigest}`;
}

/**
 * True for a bare image ID or its digest form: 64 lowercase hex characters, or
 * "sha256:<64 hex>". The CRI passes image IDs where references are expected
 * (ImageStatus and RemoveImage by ID), so callers check this before {@link parseReference}.
 */
export function isImageId(input: string): boolean {
  return IMAGE_ID.test(input);
}

/** The host the registry API is reached at: docker.io → "registry-1.docker.io"; others unchanged. */
export function registryHost(domain: string): string {
  return domain === DOCKER_HUB ? DOCKER_HUB_API_HOST : domain;
}

/** Docker's rule: the first component names a registry iff it has a '.' or ':' or is `localhost`. */
function looksLikeDomain(component: string): boolean {
  return component.includes('.') || component.includes(':') || component === 'localhost';
}

/** What is wrong with a registry host[:port], or undefined if it is valid. */
function domainProblem(domain: string): string | undefined {
  let host: string;
  let port: string | undefined;
  if (domain.startsWith('[')) {
    const close = domain.indexOf(']');
    if (close < 0) return `registry host ${quote(domain)} opens '[' without closing it`;
    host = domain.slice(0, close + 1);
    const after = domain.slice(close + 1);
    if (after !== '') {
      if (!after.startsWith(':')) return `registry ${quote(domain)} has ${quote(after)} after its IPv6 address`;
      port = after.slice(1);
    }
    if (!IPV6_HOST.test(host)) return `registry host ${quote(host)} is not a valid IPv6 address`;
  } else {
    const colon = domain.indexOf(':');
    host = colon < 0 ? domain : domain.slice(0, colon);
    port = colon < 0 ? undefined : domain.slice(colon + 1);
    if (port?.includes(':')) {
      return `registry ${quote(domain)} is not host[:port]; ` + 'an IPv6 address must be written in brackets, as in [::1]:5000';
    }
    if (!host.split('.').every((label) => DOMAIN_LABEL.test(label))) {
      return `registry host ${quote(host)} is not a valid host name: ` + "dot-separated labels of letters, digits and '-', not starting or ending with '-'";
    }
  }
  if (port !== undefined && !PORT.test(port)) return `registry port ${quote(port)} must be a number`;
  return undefined;
}

/** What is wrong with a repository path as written (before `library/` is added), or undefined. */
function repositoryPathProblem(path: string): string | undefined {
  if (path === '') return 'the repository path is empty';
  if (path.toLowerCase() !== path) return `repository path ${quote(path)} must be lowercase`;
  for (const component of path.split('/')) {
    if (component === '') {
      return `repository path ${quote(path)} has an empty component (a leading, trailing or doubled '/')`;
    }
    if (!PATH_COMPONENT.test(component)) {
      return `repository path component ${quote(component)} must be lowercase letters and digits, ` + "optionally joined by '.', '_', '__' or '-'";
    }
  }
  return undefined;
}

/** What is wrong with a digest, as a clause that follows `digest "…"`, or undefined. */
function digestProblem(digest: string): string | undefined {
  const colon = digest.indexOf(':');
  if (colon < 0) return 'is not of the form <algorithm>:<hex>, e.g. sha256:<64 hex digits>';
  const algorithm = digest.slice(0, colon);
  const hex = digest.slice(colon + 1);
  const length = DIGEST_HEX_LENGTH.get(algorithm);
  if (length === undefined) {
    const supported = [...DIGEST_HEX_LENGTH.keys()].join(', ');
    return `uses the unsupported algorithm ${quote(algorithm)} (supported: ${supported})`;
  }
  if (hex.length !== length || !LOWER_HEX.test(hex)) {
    return `must have exactly ${length} lowercase hex digits after "${algorithm}:"`;
  }
  return undefined;
}
