/**
 * CDI, the Container Device Interface (github.com/cncf-tags/container-device-interface,
 * SPEC.md): device vendors describe their devices in spec files under `/etc/cdi` and
 * `/var/run/cdi`, and a container asks for them by fully qualified name,
 * `vendor.com/class=name`, through `ContainerConfig.CDI_devices` (kubelet's device
 * manager and DRA) or, in the older convention, through annotations `cdi.k8s.io/<key>`
 * whose value is a comma-separated list of names.
 *
 * A spec file holds `cdiVersion`, `kind` (`vendor.com/class`), `devices[]` with a `name`
 * and `containerEdits` each, and spec-wide `containerEdits` applied once when any of its
 * devices is asked for. Edits are environment variables, device nodes, mounts, OCI hooks
 * and additional group ids. Files in a later directory win over files in an earlier one
 * for the same device (`/var/run/cdi` is for generated, more current specs); two files
 * of one directory that define one device make that device unresolvable, as the spec's
 * error-handling section asks.
 *
 * Reading the files is {@link CdiRegistry}'s job (impure, cached by modification time);
 * turning the resolved edits into OCI spec changes is {@link applyCdiEdits}'s (pure).
 * Device nodes go through the ordinary `devices` path (stat of the host node, cgroup
 * rule), so a CDI device node behaves exactly like a device kubelet names itself.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { extname, join, posix } from 'node:path';
import type { parse as ParseYaml } from 'yaml';
import { BerthError, invalidArgument, messageOf } from '../common/errors.js';
import type { OciHook, OciMount, OciSpec } from '../oci/spec.js';

/** The annotation prefix of the older way to ask for CDI devices. */
export const CDI_ANNOTATION_PREFIX = 'cdi.k8s.io/';

/** The largest spec file read, and the most devices one container may ask for. */
const MAX_SPEC_BYTES = 1 << 20;
const MAX_DEVICES = 256;

/** The OCI hooks a CDI spec may name (runtime-spec config.md, "POSIX-platform Hooks"). */
const HOOK_NAMES = ['prestart', 'createRuntime', 'createContainer', 'startContainer', 'poststart', 'poststop'] as const;
type HookName = (typeof HOOK_NAMES)[number];

/** A device node as the ordinary `devices` path takes it. */
export interface CdiDeviceNode {
  host_path: string;
  container_path: string;
  permissions: string;
}

/** What the devices a container asked for change in its spec, merged. */
export interface CdiEdits {
  env: string[];
  deviceNodes: CdiDeviceNode[];
  mounts: OciMount[];
  hooks: Partial<Record<HookName, OciHook[]>>;
  additionalGids: number[];
}

interface ContainerEdits {
  env?: string[];
  deviceNodes?: Array<{ path: string; hostPath?: string; permissions?: string }>;
  mounts?: Array<{ hostPath: string; containerPath: string; type?: string; options?: string[] }>;
  hooks?: Array<{ hookName: string; path: string; args?: string[]; env?: string[]; timeout?: number }>;
  additionalGids?: number[];
}

interface Spec {
  file: string;
  kind: string;
  edits: ContainerEdits | undefined;
  devices: Map<string, ContainerEdits>;
}

const KIND = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\/[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/;
const NAME = /^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$/;

/** Splits `vendor.com/class=name`; InvalidArgument for anything else. */
export function parseQualifiedName(text: string, field: string): { kind: string; name: string } {
  const eq = text.indexOf('=');
  const kind = eq < 0 ? '' : text.slice(0, eq);
  const name = eq < 0 ? '' : text.slice(eq + 1);
  if (!KIND.test(kind) || !NAME.test(name)) {
    throw invalidArgument(`${field}: "${text}" is not a fully qualified CDI device name like "vendor.com/class=name"`);
  }
  return { kind, name };
}

/**
 * The CDI devices a container asks for: `CDI_devices` first, then the `cdi.k8s.io/*`
 * annotations (sorted by key), each name once.
 */
export function requestedCdiDevices(cdiDevices: ReadonlyArray<{ name: string }>, annotations: Readonly<Record<string, string>>): string[] {
  const names: string[] = [];
  const add = (raw: string, field: string): void => {
    const n = raw.trim();
    if (n === '') return;
    parseQualifiedName(n, field);
    if (!names.includes(n)) names.push(n);
  };
  cdiDevices.forEach((d, i) => add(d.name, `CDI_devices[${i}].name`));
  for (const key of Object.keys(annotations).sort()) {
    if (key.startsWith(CDI_ANNOTATION_PREFIX)) for (const n of annotations[key]!.split(',')) add(n, `annotations["${key}"]`);
  }
  if (names.length > MAX_DEVICES) throw invalidArgument(`CDI_devices: ${names.length} devices asked for; at most ${MAX_DEVICES}`);
  return names;
}

/** Reads the CDI spec directories; a file is parsed again only when it changed. */
export class CdiRegistry {
  private readonly cache = new Map<string, { mtimeMs: number; size: number; spec: Spec | Error }>();

  /** @param dirs spec directories, lowest priority first (`/etc/cdi`, then `/var/run/cdi`). */
  constructor(readonly dirs: readonly string[]) {}

  /**
   * The merged edits of the named devices. NotFound names every device no spec file
   * defines; a spec file that is broken or conflicts makes its devices unresolvable with
   * the file and the reason in the message.
   */
  resolve(names: readonly string[]): CdiEdits {
    const edits: CdiEdits = { env: [], deviceNodes: [], mounts: [], hooks: {}, additionalGids: [] };
    if (names.length === 0) return edits;
    const { devices, broken } = this.load();
    const missing: string[] = [];
    const specsUsed = new Set<Spec>();
    for (const n of names) {
      const found = devices.get(n);
      if (!found) {
        missing.push(n);
        continue;
      }
      if (found instanceof Error) throw new BerthError('FailedPrecondition', `CDI device "${n}": ${found.message}`);
      if (!specsUsed.has(found.spec)) {
        specsUsed.add(found.spec);
        if (found.spec.edits) mergeEdits(edits, found.spec.edits);
      }
      mergeEdits(edits, found.edits);
    }
    if (missing.length > 0) {
      const hint = broken.length > 0 ? `; unreadable spec files: ${broken.join('; ')}` : '';
      throw new BerthError(
        'NotFound',
        `CDI device${missing.length > 1 ? 's' : ''} ${missing.map((m) => `"${m}"`).join(', ')} not found in ${this.dirs.join(', ')}${hint}`,
      );
    }
    return edits;
  }

  /** Every device by qualified name, later directories overriding earlier ones. */
  private load(): { devices: Map<string, { spec: Spec; edits: ContainerEdits } | Error>; broken: string[] } {
    const devices = new Map<string, { spec: Spec; edits: ContainerEdits } | Error>();
    const broken: string[] = [];
    const seen = new Set<string>();
    for (const dir of this.dirs) {
      const inDir = new Map<string, { spec: Spec; edits: ContainerEdits } | Error>();
      for (const file of specFiles(dir)) {
        seen.add(file);
        const spec = this.read(file);
        if (spec === undefined) continue;
        if (spec instanceof Error) {
          broken.push(`${file}: ${spec.message}`);
          continue;
        }
        for (const [name, edits] of spec.devices) {
          const qualified = `${spec.kind}=${name}`;
          const prior = inDir.get(qualified);
          inDir.set(
            qualified,
            prior === undefined
              ? { spec, edits }
              : new Error(`defined twice in ${dir} (${prior instanceof Error ? 'more files' : prior.spec.file} and ${file})`),
          );
        }
      }
      for (const [k, v] of inDir) devices.set(k, v);
    }
    for (const file of this.cache.keys()) if (!seen.has(file)) this.cache.delete(file);
    return { devices, broken };
  }

  private read(file: string): Spec | Error | undefined {
    let st;
    try {
      st = statSync(file);
    } catch {
      return undefined;
    }
    if (!st.isFile()) return undefined;
    const hit = this.cache.get(file);
    if (hit && hit.mtimeMs === st.mtimeMs && hit.size === st.size) return hit.spec;
    let spec: Spec | Error;
    try {
      if (st.size > MAX_SPEC_BYTES) throw new Error(`larger than ${MAX_SPEC_BYTES} bytes`);
      spec = parseSpec(file, readFileSync(file, 'utf8'));
    } catch (err) {
      spec = new Error(messageOf(err));
    }
    this.cache.set(file, { mtimeMs: st.mtimeMs, size: st.size, spec });
    return spec;
  }
}

function specFiles(dir: string): string[] {
  try {
    return readdirSync(dir)
      .filter((f) => ['.json', '.yaml', '.yml'].includes(extname(f)))
      .sort()
      .map((f) => join(dir, f));
  } catch {
    return [];
  }
}

/** Parses and checks one spec file (JSON or YAML); throws with the reason. */
/**
 * The YAML parser, loaded on the first YAML spec: its ~150 modules cost an idle berthd
 * about 1 MiB, and most hosts have no CDI specs (or JSON ones).
 */
function parseYaml(text: string, opts: { maxAliasCount: number }): unknown {
  yamlParse ??= (createRequire(import.meta.url)('yaml') as { parse: typeof ParseYaml }).parse;
  return yamlParse(text, opts);
}
let yamlParse: typeof ParseYaml | undefined;

export function parseSpec(file: string, text: string): Spec {
  const doc: unknown = extname(file) === '.json' ? JSON.parse(text) : parseYaml(text, { maxAliasCount: 16 });
  const o = object(doc, 'the file');
  const version = string(o.cdiVersion, 'cdiVersion');
  if (!/^\d+\.\d+\.\d+$/.test(version)) throw new Error(`cdiVersion "${version}" is not a version like "0.6.0"`);
  const kind = string(o.kind, 'kind');
  if (!KIND.test(kind)) throw new Error(`kind "${kind}" is not like "vendor.com/class"`);
  if (!Array.isArray(o.devices) || o.devices.length === 0) throw new Error('devices: expected a non-empty list');
  const devices = new Map<string, ContainerEdits>();
  o.devices.forEach((d: unknown, i: number) => {
    const dev = object(d, `devices[${i}]`);
    const name = string(dev.name, `devices[${i}].name`);
    if (!NAME.test(name)) throw new Error(`devices[${i}].name "${name}" is not a valid device name`);
    if (devices.has(name)) throw new Error(`devices[${i}].name "${name}" appears twice`);
    devices.set(name, containerEdits(dev.containerEdits, `devices[${i}].containerEdits`));
  });
  return { file, kind, devices, edits: o.containerEdits === undefined ? undefined : containerEdits(o.containerEdits, 'containerEdits') };
}

function containerEdits(v: unknown, at: string): ContainerEdits {
  const o = object(v, at);
  const out: ContainerEdits = {};
  if (o.env !== undefined) {
    out.env = stringList(o.env, `${at}.env`);
    for (const e of out.env) if (!/^[^=]+=/.test(e)) throw new Error(`${at}.env: "${e}" is not NAME=value`);
  }
  if (o.deviceNodes !== undefined) {
    out.deviceNodes = list(o.deviceNodes, `${at}.deviceNodes`).map((d, i) => {
      const n = object(d, `${at}.deviceNodes[${i}]`);
      const path = absolute(n.path, `${at}.deviceNodes[${i}].path`);
      return {
        path,
        ...(n.hostPath !== undefined ? { hostPath: absolute(n.hostPath, `${at}.deviceNodes[${i}].hostPath`) } : {}),
        ...(n.permissions !== undefined ? { permissions: string(n.permissions, `${at}.deviceNodes[${i}].permissions`) } : {}),
      };
    });
  }
  if (o.mounts !== undefined) {
    out.mounts = list(o.mounts, `${at}.mounts`).map((m, i) => {
      const x = object(m, `${at}.mounts[${i}]`);
      return {
        hostPath: string(x.hostPath, `${at}.mounts[${i}].hostPath`),
        containerPath: absolute(x.containerPath, `${at}.mounts[${i}].containerPath`),
        ...(x.type !== undefined ? { type: string(x.type, `${at}.mounts[${i}].type`) } : {}),
        ...(x.options !== undefined ? { options: stringList(x.options, `${at}.mounts[${i}].options`) } : {}),
      };
    });
  }
  if (o.hooks !== undefined) {
    out.hooks = list(o.hooks, `${at}.hooks`).map((h, i) => {
      const x = object(h, `${at}.hooks[${i}]`);
      const hookName = string(x.hookName, `${at}.hooks[${i}].hookName`);
      if (!(HOOK_NAMES as readonly string[]).includes(hookName))
        throw new Error(`${at}.hooks[${i}].hookName "${hookName}" is not an OCI hook (${HOOK_NAMES.join(', ')})`);
      const timeout = x.timeout;
      if (timeout !== undefined && (typeof timeout !== 'number' || !Number.isInteger(timeout) || timeout <= 0)) {
        throw new Error(`${at}.hooks[${i}].timeout must be a positive number of seconds`);
      }
      return {
        hookName,
        path: absolute(x.path, `${at}.hooks[${i}].path`),
        ...(x.args !== undefined ? { args: stringList(x.args, `${at}.hooks[${i}].args`) } : {}),
        ...(x.env !== undefined ? { env: stringList(x.env, `${at}.hooks[${i}].env`) } : {}),
        ...(timeout !== undefined ? { timeout } : {}),
      };
    });
  }
  if (o.additionalGids !== undefined) {
    out.additionalGids = list(o.additionalGids, `${at}.additionalGids`).map((g, i) => {
      if (typeof g !== 'number' || !Number.isInteger(g) || g < 0 || g > 0xffffffff) throw new Error(`${at}.additionalGids[${i}] is not a group id`);
      return g;
    });
  }
  return out;
}

function mergeEdits(into: CdiEdits, e: ContainerEdits): void {
  into.env.push(...(e.env ?? []));
  for (const d of e.deviceNodes ?? []) {
    const node = { host_path: d.hostPath ?? d.path, container_path: d.path, permissions: d.permissions ?? 'rwm' };
    const same = into.deviceNodes.findIndex((x) => x.container_path === node.container_path);
    if (same >= 0) into.deviceNodes[same] = node;
    else into.deviceNodes.push(node);
  }
  for (const m of e.mounts ?? []) {
    const type = m.type ?? 'bind';
    const options = m.options ?? (type === 'bind' ? ['rbind', 'rprivate'] : []);
    const mount: OciMount = { destination: posix.normalize(m.containerPath), type, source: m.hostPath, options };
    const same = into.mounts.findIndex((x) => x.destination === mount.destination);
    if (same >= 0) into.mounts[same] = mount;
    else into.mounts.push(mount);
  }
  for (const h of e.hooks ?? []) {
    const name = h.hookName as HookName;
    const { hookName: _n, ...hook } = h;
    (into.hooks[name] ??= []).push(hook);
  }
  for (const g of e.additionalGids ?? []) if (!into.additionalGids.includes(g)) into.additionalGids.push(g);
}

/**
 * Applies the non-device edits to a generated spec: environment variables (a CDI value
 * replaces one of the same name), mounts (replacing one at the same destination, kept
 * in the order that puts parents before children), hooks and group ids. Pure.
 */
export function applyCdiEdits(spec: OciSpec, edits: CdiEdits): OciSpec {
  if (edits.env.length + edits.mounts.length + edits.additionalGids.length === 0 && Object.keys(edits.hooks).length === 0) return spec;
  const env = [...spec.process.env];
  for (const e of edits.env) {
    const key = e.slice(0, e.indexOf('=') + 1);
    const at = env.findIndex((x) => x.startsWith(key));
    if (at >= 0) env[at] = e;
    else env.push(e);
  }
  const dests = new Set(edits.mounts.map((m) => m.destination));
  const mounts = [...spec.mounts.filter((m) => !dests.has(m.destination)), ...edits.mounts];
  const gids = [...(spec.process.user.additionalGids ?? [])];
  for (const g of edits.additionalGids) if (!gids.includes(g)) gids.push(g);
  const hooks: Partial<Record<HookName, OciHook[]>> = { ...(spec.hooks ?? {}) };
  for (const [name, list] of Object.entries(edits.hooks) as Array<[HookName, OciHook[]]>) hooks[name] = [...(hooks[name] ?? []), ...list];
  return {
    ...spec,
    process: { ...spec.process, env, user: { ...spec.process.user, ...(gids.length > 0 ? { additionalGids: gids } : {}) } },
    mounts,
    ...(Object.keys(hooks).length > 0 ? { hooks } : {}),
  };
}

function object(v: unknown, at: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`${at}: expected an object`);
  return v as Record<string, unknown>;
}

function list(v: unknown, at: string): unknown[] {
  if (!Array.isArray(v)) throw new Error(`${at}: expected a list`);
  return v;
}

function string(v: unknown, at: string): string {
  if (typeof v !== 'string' || v === '') throw new Error(`${at}: expected a non-empty string`);
  return v;
}

function stringList(v: unknown, at: string): string[] {
  return list(v, at).map((x, i) => {
    if (typeof x !== 'string') throw new Error(`${at}[${i}]: expected a string`);
    return x;
  });
}

function absolute(v: unknown, at: string): string {
  const s = string(v, at);
  if (!s.startsWith('/')) throw new Error(`${at}: "${s}" is not an absolute path`);
  return s;
}
