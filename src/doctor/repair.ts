/**
 * `berthd doctor --repair`: removes one leak at a time, and only after checking again,
 * against a fresh read of the database, that nothing owns it now. The node is scanned
 * before the database is read, and berth records intent in the database before it
 * touches the node, so a pod or container being made while doctor runs is always known
 * by the time doctor would act on its files.
 */
import { readFileSync, readdirSync, rmdirSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join, sep } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BerthError, errnoOf, messageOf } from '../common/errors.js';
import { canonicalPath, isMountPoint, mountPoints, MNT, umount } from '../common/mount.js';
import type { BerthConfig } from '../config/schema.js';
import { OciRuntime } from '../oci/oci-runtime.js';
import { removePin, removePinnedNamespaces } from '../sandbox/namespaces.js';
import { killConmon } from '../shim/conmon-process.js';
import type { Db } from '../store/database.js';
import { deleteBlobRow } from './db-view.js';
import type { Repair } from './findings.js';

/** Stacked mounts a leak may hold; berth never stacks, a crash loop might. */
const MAX_UNMOUNTS = 8;
/** How long killed processes get to leave a cgroup before its rmdir. */
const CGROUP_EMPTY_MS = 5000;

export interface RepairContext {
  config: BerthConfig;
  /** Writable, and only given with berthd stopped (orphaned blob rows). */
  db?: Db;
}

/** Carries out one repair; throws with the reason when it cannot. */
export async function runRepair(r: Repair, ctx: RepairContext): Promise<string> {
  switch (r.kind) {
    case 'unmount': {
      let n = 0;
      while (isMountPoint(r.path) && n < MAX_UNMOUNTS) {
        await umount(r.path, MNT.DETACH | MNT.NOFOLLOW);
        n++;
      }
      if (isMountPoint(r.path)) throw new BerthError('Internal', `still mounted after ${MAX_UNMOUNTS} unmounts`);
      return n > 0 ? 'unmounted' : 'no longer mounted';
    }
    case 'remove-pins':
      if (r.dir) await removePinnedNamespaces(r.path);
      else await removePin(r.path);
      return 'pins unmounted and removed';
    case 'cgroup':
      return removeCgroups(r.paths);
    case 'kill-conmon': {
      const kids = childrenOf(r.pid);
      for (const pid of kids) signal(pid);
      await killConmon(r.pid, r.id);
      return kids.length > 0 ? `killed conmon and process(es) ${kids.join(' ')}` : 'killed conmon';
    }
    case 'runtime-delete': {
      const handler = ctx.config.runtimes[r.handler];
      if (handler) await new OciRuntime({ handler: r.handler, path: handler.path, root: r.root }).delete(r.id, true);
      await rm(r.path, { recursive: true, force: true });
      return handler ? `${r.handler} delete --force` : `removed (handler ${r.handler} is not configured: its processes were not looked for)`;
    }
    case 'remove':
      await removePath(r.path);
      return 'removed';
    case 'blob-row':
      if (!ctx.db) throw new BerthError('FailedPrecondition', 'an orphaned blob row is removed only with berthd stopped');
      deleteBlobRow(ctx.db, r.digest);
      await rm(r.path, { force: true });
      return 'row and file deleted';
  }
}

/**
 * `rm -r`, refused while anything is mounted below the path: removing through a mount
 * would delete what the mount shows (a container's rootfs, a volume's source).
 */
async function removePath(path: string): Promise<void> {
  const target = canonicalPath(path);
  const below = mountPoints().filter((m) => m === target || m.startsWith(target + sep));
  if (below.length > 0) throw new BerthError('FailedPrecondition', `still has mounts: ${below.join(' ')} (unmount them first)`);
  await rm(path, { recursive: true, force: true });
}

function signal(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch (err) {
    if (errnoOf(err) !== 'ESRCH') throw err;
  }
}

function childrenOf(ppid: number): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    try {
      const text = readFileSync(`/proc/${p}/stat`, 'utf8');
      if (Number(text.slice(text.lastIndexOf(')') + 2).split(' ')[1]) === ppid) out.push(Number(p));
    } catch {
      // gone
    }
  }
  return out;
}

function procsOf(path: string): number[] {
  try {
    return readFileSync(join(path, 'cgroup.procs'), 'utf8')
      .split('\n')
      .filter((l) => l !== '')
      .map(Number);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return [];
    throw err;
  }
}

/** Kills every process of the cgroups, waits for them to leave, and removes the cgroups (children first). */
async function removeCgroups(paths: string[]): Promise<string> {
  const all = (): string[] => paths.flatMap((p) => tree(p));
  const killed = new Set<number>();
  const until = Date.now() + CGROUP_EMPTY_MS;
  for (;;) {
    const procs = all().flatMap(procsOf);
    if (procs.length === 0) break;
    if (Date.now() > until) throw new BerthError('Internal', `processes ${procs.join(' ')} did not leave the cgroup`);
    for (const pid of procs) {
      signal(pid);
      killed.add(pid);
    }
    await sleep(50);
  }
  for (const dir of all().reverse()) {
    try {
      rmdirSync(dir);
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT') throw new BerthError('Internal', `rmdir ${dir}: ${messageOf(err)}`, { cause: err });
    }
  }
  return killed.size > 0 ? `killed ${[...killed].join(' ')}; removed` : 'removed';
}

/** A cgroup and its descendants, parents first. */
function tree(dir: string): string[] {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return [];
    throw err;
  }
  return [dir, ...entries.filter((e) => e.isDirectory()).flatMap((e) => tree(join(dir, e.name)))];
}
