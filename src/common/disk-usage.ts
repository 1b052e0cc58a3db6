import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Disk use of a directory tree as du counts it: allocated blocks (512-byte units) and
 * inodes, each hard-linked inode once. Never follows symlinks or leaves the filesystem.
 */
export async function measure(dir: string): Promise<{ bytes: bigint; inodes: bigint }> {
  const root = await lstat(dir, { bigint: true });
  const seen = new Set<bigint>();
  let bytes = 0n;
  let inodes = 0n;
  const stack = [dir];
  const count = (st: { ino: bigint; nlink: bigint; blocks: bigint }): void => {
    if (st.nlink > 1n) {
      if (seen.has(st.ino)) return;
      seen.add(st.ino);
    }
    bytes += st.blocks * 512n;
    inodes += 1n;
  };
  count(root);
  while (stack.length > 0) {
    const d = stack.pop()!;
    let names: string[];
    try {
      names = await readdir(d);
    } catch {
      continue; // removed meanwhile
    }
    const stats = await Promise.all(
      names.map((n) =>
        lstat(join(d, n), { bigint: true }).then(
          (st) => [n, st] as const,
          () => undefined,
        ),
      ),
    );
    for (const e of stats) {
      if (!e) continue;
      const [n, st] = e;
      if (st.dev !== root.dev) continue;
      count(st);
      if (st.isDirectory()) stack.push(join(d, n));
    }
  }
  return { bytes, inodes };
}
