import { readFileSync } from 'node:fs';

/** berth's version, read once from package.json at the repository root. */
export const BERTH_VERSION: string = (() => {
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
})();
