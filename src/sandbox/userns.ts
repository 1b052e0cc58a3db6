/**
 * Pod user namespaces (KEP-127, `hostUsers: false`): namespace_options.userns_options
 * with mode POD gives the pod a user namespace of its own, with the uid and gid maps
 * kubelet chose (one range of 65536 ids from container id 0 to a host range, usually).
 *
 * The user namespace is pinned at `<nsDir>/user` beside the pod's other pins, and the
 * pod's network, IPC and UTS namespaces are created in the same clone(2), so that they
 * are owned by it: root of the pod then holds CAP_NET_ADMIN over its own network
 * namespace (sysfs mounts, sysctls), and nothing on the host. CNI plugins run in the host
 * user namespace and configure the network namespace as they would any other. Removal is
 * the one for every pin (namespaces.ts: unmount and unlink each pin, `user` included).
 */
import { constants } from 'node:fs';
import { chmod, lstat, mkdir, open } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { DisposableStack } from '../common/disposable.js';
import { BerthError, errnoOf, invalidArgument, messageOf } from '../common/errors.js';
import { pinUserns, type IdMap } from '../common/userns.js';
import { removePinnedNamespaces, type PinnedNamespaces, type PodNamespace } from './namespaces.js';

/** The id maps of a pod's user namespace. */
export interface PodUserns {
  uids: IdMap[];
  gids: IdMap[];
}

/** As CRI sends an IDMapping. */
export interface CriIdMapping {
  host_id: number;
  container_id: number;
  length: number;
}

/** As CRI sends namespace_options.userns_options. */
export interface CriUsernsOptions {
  mode?: string;
  uids?: CriIdMapping[];
  gids?: CriIdMapping[];
}

/** Ids a pod's user namespace must map at least (kubelet's per-pod range). */
export const MIN_POD_IDS = 65536;
/** Lines the kernel takes in a uid_map or gid_map. */
const MAX_MAP_LINES = 340;
const MAX_ID = 2 ** 32 - 1;

/**
 * One list of mappings, checked as containerd does: every range non-empty and inside the
 * 32-bit id space, container ranges contiguous from 0 and host ranges not overlapping,
 * at least {@link MIN_POD_IDS} ids in all. Throws INVALID_ARGUMENT naming the field.
 */
export function checkIdMappings(list: CriIdMapping[] | undefined, field: string): IdMap[] {
  if (!list || list.length === 0) throw invalidArgument(`${field}: a user namespace of mode POD needs mappings; none given`);
  if (list.length > MAX_MAP_LINES) throw invalidArgument(`${field}: ${list.length} mappings; the kernel takes at most ${MAX_MAP_LINES}`);
  const maps = list.map((m, i) => {
    if (!(m.length > 0)) throw invalidArgument(`${field}[${i}].length is ${m.length}; a mapping needs at least one id`);
    if (m.container_id + m.length - 1 > MAX_ID || m.host_id + m.length - 1 > MAX_ID) {
      throw invalidArgument(`${field}[${i}]: ${m.container_id}/${m.host_id} + ${m.length} runs past the last id ${MAX_ID}`);
    }
    return { containerId: m.container_id, hostId: m.host_id, size: m.length, index: i };
  });
  const byHost = [...maps].sort((a, b) => a.hostId - b.hostId);
  for (let k = 1; k < byHost.length; k++) {
    const [a, b] = [byHost[k - 1]!, byHost[k]!];
    if (b.hostId < a.hostId + a.size) throw invalidArgument(`${field}[${a.index}] and ${field}[${b.index}]: the host ranges overlap`);
  }
  const byContainer = [...maps].sort((a, b) => a.containerId - b.containerId);
  if (byContainer[0]!.containerId !== 0)
    throw invalidArgument(`${field}: container id 0 is not mapped (the lowest mapped id is ${byContainer[0]!.containerId})`);
  for (let k = 1; k < byContainer.length; k++) {
    const [a, b] = [byContainer[k - 1]!, byContainer[k]!];
    if (b.containerId < a.containerId + a.size) throw invalidArgument(`${field}[${a.index}] and ${field}[${b.index}]: the container ranges overlap`);
    if (b.containerId > a.containerId + a.size) {
      throw invalidArgument(`${field}: the container ranges are not contiguous (ids ${a.containerId + a.size} to ${b.containerId - 1} are not mapped)`);
    }
  }
  const total = maps.reduce((n, m) => n + m.size, 0);
  if (total < MIN_POD_IDS) throw invalidArgument(`${field}: ${total} ids mapped; a pod's user namespace needs at least ${MIN_POD_IDS}`);
  return byContainer.map(({ containerId, hostId, size }) => ({ containerId, hostId, size }));
}

/**
 * The pod's user namespace from its namespace options: undefined for NODE (the host's, as
 * before), the checked maps for POD. Host network, IPC or PID with a pod user namespace
 * are refused (kubelet refuses them too): the pod's namespaces must be owned by its own.
 */
export function podUsernsFrom(opts: CriUsernsOptions | undefined, modes: { network: string; pid: string; ipc: string }, field: string): PodUserns | undefined {
  const mode = opts?.mode ?? 'NODE';
  if (mode === 'NODE') {
    if ((opts?.uids?.length ?? 0) > 0 || (opts?.gids?.length ?? 0) > 0) {
      throw invalidArgument(`${field}: mappings are given but mode is NODE (the host's user namespace takes none)`);
    }
    return undefined;
  }
  if (mode !== 'POD') throw invalidArgument(`${field}.mode ${mode} is not supported for a pod (POD or NODE)`);
  for (const [kind, m] of Object.entries(modes)) {
    if (m === 'NODE') throw invalidArgument(`${field}: a pod user namespace cannot be combined with the host's ${kind} namespace`);
  }
  return { uids: checkIdMappings(opts?.uids, `${field}.uids`), gids: checkIdMappings(opts?.gids, `${field}.gids`) };
}

/** The host id of container id `id` under `maps`, or undefined when unmapped. */
export function hostIdOf(maps: readonly IdMap[], id: number): number | undefined {
  const m = maps.find((e) => id >= e.containerId && id < e.containerId + e.size);
  return m ? m.hostId + (id - m.containerId) : undefined;
}

/** The path of a pod's user namespace pin in its namespace directory. */
export const usernsPin = (nsDir: string): string => join(nsDir, 'user');

/**
 * Creates the pod's user namespace and, owned by it, the namespaces of `kinds`, all pinned
 * under `dir` (created mode 0700), with the hostname set in the UTS namespace. Undoes
 * everything on failure.
 */
export async function createPodUserns(dir: string, userns: PodUserns, kinds: PodNamespace[], hostname: string): Promise<PinnedNamespaces & { user: string }> {
  const stack = new DisposableStack();
  const pins: PinnedNamespaces & { user: string } = { user: usernsPin(dir) };
  for (const k of kinds) pins[k] = join(dir, k);
  try {
    await mkdir(dirname(resolve(dir)), { recursive: true });
    try {
      await mkdir(dir, { mode: 0o700 });
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST') throw err;
      if (!(await lstat(dir)).isDirectory()) throw new BerthError('FailedPrecondition', `pod namespaces: ${dir} exists and is not a directory`);
    }
    await chmod(dir, 0o700);
    stack.defer(() => removePinnedNamespaces(dir));
    for (const path of [pins.user, ...kinds.map((k) => join(dir, k))]) {
      // O_EXCL: a pin left in place is never stacked on; O_NOFOLLOW: no planted symlink is followed.
      const fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o444).catch((err: unknown) => {
        if (errnoOf(err) === 'EEXIST') throw new BerthError('AlreadyExists', `pod namespaces: ${path} already exists; remove the old pins first`);
        throw err;
      });
      await fh.close();
    }
    await pinUserns(pins.user, userns.uids, userns.gids, {
      ...(pins.net ? { net: pins.net } : {}),
      ...(pins.ipc ? { ipc: pins.ipc } : {}),
      ...(pins.uts ? { uts: pins.uts, hostname } : {}),
    });
    stack.move();
    return pins;
  } catch (err) {
    try {
      await stack.dispose();
    } catch (undoErr) {
      throw new BerthError('Internal', `${messageOf(err)}; and undoing it failed, leftovers in ${dir}: ${messageOf(undoErr)}`, { cause: err });
    }
    if (err instanceof BerthError) throw err;
    throw new BerthError('Internal', `pod user namespace in ${dir}: ${messageOf(err)}`, { cause: err });
  }
}
