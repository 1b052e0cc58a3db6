/**
 * User namespaces through berthd's native addon: {@link pinUserns} makes a user namespace
 * with given id maps (and, owned by it, a pod's network, IPC and UTS namespaces) and pins
 * it by bind mount, in one clone, with no process left in it.
 */
import { native } from './native.js';

/** One line of a uid_map or gid_map: container ids [containerId, containerId+size) are host ids from hostId. */
export interface IdMap {
  containerId: number;
  hostId: number;
  size: number;
}

/** Namespaces to make together with a user namespace, owned by it, each pinned on an existing empty file. */
export interface OwnedNamespaces {
  net?: string;
  ipc?: string;
  uts?: string;
  /** Set inside the new UTS namespace (needs `uts`). */
  hostname?: string;
}

/**
 * A new user namespace with these uid and gid maps, pinned by a bind mount of its nsfs
 * file on `pinPath` (an existing empty file), with the network, IPC and UTS namespaces
 * asked for created in it (owned by it) and pinned too. No process is left in them. On
 * failure, pins already made stay for the caller to remove.
 */
export function pinUserns(pinPath: string, uids: readonly IdMap[], gids: readonly IdMap[], owned: OwnedNamespaces = {}): Promise<void> {
  const text = (m: readonly IdMap[]): string => m.map((e) => `${e.containerId} ${e.hostId} ${e.size}\n`).join('');
  return native().pinUserns(pinPath, text(uids), text(gids), owned.net ?? null, owned.ipc ?? null, owned.uts ?? null, owned.hostname ?? null);
}
