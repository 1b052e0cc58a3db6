/**
 * The `berthd doctor` command line: the daemon's own --config, --root and --state, plus
 * --repair, --json and --cgroup-parent. Exit 0: nothing leaked; 1: something is leaked
 * (or the database is damaged); 2: bad usage, or a root it cannot read.
 */
import { accessSync, constants, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BerthError, messageOf } from '../common/errors.js';
import { ConfigError, loadConfig } from '../config/load.js';
import type { BerthConfig } from '../config/schema.js';
import type { Db } from '../store/database.js';
import { DirectoryLock } from '../store/lock.js';
import { openDoctorDb } from './db-view.js';
import { diagnose, repair, type RepairOutcome } from './doctor.js';
import type { Finding } from './findings.js';

export const DOCTOR_USAGE = `Usage: berthd doctor [flags]

Compares berth's database with what exists on the node (mounts, namespace pins, cgroups,
conmon and container processes, bundle/snapshot/content dirs, exit files, CNI IPAM
reservations, blobs) and reports each as known to berth or leaked. Works with berthd
running (the database is only read) or stopped.

Flags:
  --config FILE         berthd's config file (default /etc/berth/config.toml)
  --root DIR            berthd's root (default from the config, /var/lib/berth)
  --state DIR           berthd's state dir (default from the config, /run/berth)
  --repair              remove what is leaked (never what the database knows)
  --json                print the findings as JSON
  --cgroup-parent P     also look for berth's cgroups under P (repeatable; "/" for the root cgroup)
  -h, --help            show this help

Exit status: 0 nothing leaked, 1 something leaked or the database damaged, 2 usage error or unreadable root.
`;

export async function doctorMain(argv: string[], out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        config: { type: 'string' },
        root: { type: 'string' },
        state: { type: 'string' },
        repair: { type: 'boolean' },
        json: { type: 'boolean' },
        'cgroup-parent': { type: 'string', multiple: true },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (e) {
    err.write(`berthd doctor: ${messageOf(e)}\n\n${DOCTOR_USAGE}`);
    return 2;
  }
  if (values.help) {
    out.write(DOCTOR_USAGE);
    return 0;
  }
  let config: BerthConfig;
  try {
    ({ config } = loadConfig({ ...(values.config !== undefined ? { file: values.config } : {}), overrides: { root: values.root, state: values.state } }));
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    err.write(`berthd doctor: invalid configuration: ${e.message}\n`);
    return 2;
  }
  const problem = unreadable(config);
  if (problem !== undefined) {
    err.write(`berthd doctor: ${problem}\n`);
    return 2;
  }

  // Holding the root and state locks tells that berthd is stopped, and keeps it from
  // starting while doctor looks (and repairs).
  const locks: DirectoryLock[] = [];
  let db: Db | undefined;
  try {
    let running = false;
    try {
      locks.push(DirectoryLock.acquire(config.root, 'root directory'));
      locks.push(DirectoryLock.acquire(config.state, 'state directory'));
    } catch (e) {
      if (!(e instanceof BerthError && e.kind === 'FailedPrecondition')) throw e;
      running = true;
    }
    const dbFile = join(config.root, 'berth.db');
    // Stopped: opened read-write (nothing is written unless --repair removes an orphaned
    // blob's row), so that closing it checkpoints and leaves no -wal/-shm behind.
    db = openDoctorDb(dbFile, !running);
    const ctx = { config, running, db, cgroupParents: values['cgroup-parent'] ?? [] };
    const findings = await diagnose(ctx);
    let outcomes: RepairOutcome[] | undefined;
    let remaining: Finding[] | undefined;
    if (values.repair && findings.some((f) => f.status === 'leaked')) {
      outcomes = await repair(ctx, running ? undefined : db);
      remaining = (await diagnose(ctx)).filter((f) => f.status !== 'known');
    }
    const bad = (remaining ?? findings).filter((f) => f.status !== 'known').length;
    if (values.json) {
      out.write(`${JSON.stringify(jsonReport(config, running, findings, outcomes, remaining), null, 2)}\n`);
    } else {
      out.write(textReport(config, running, findings, outcomes, remaining));
    }
    return bad > 0 ? 1 : 0;
  } catch (e) {
    err.write(`berthd doctor: ${messageOf(e)}\n`);
    return e instanceof BerthError && e.kind === 'FailedPrecondition' ? 2 : 1;
  } finally {
    db?.close();
    for (const l of locks.reverse()) l.release();
  }
}

/** Why doctor cannot read berthd's dirs, if it cannot: the root must be a readable dir holding berth.db. */
function unreadable(config: BerthConfig): string | undefined {
  const root = config.root;
  try {
    if (!statSync(root).isDirectory()) return `cannot read root ${root}: not a directory`;
    accessSync(root, constants.R_OK | constants.X_OK);
    readdirSync(root);
    accessSync(join(root, 'berth.db'), constants.R_OK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return `cannot read root ${root}: ${messageOf(e)} (is it berthd's --root? it holds berth.db)`;
    return `cannot read root ${root}: ${messageOf(e)}`;
  }
  try {
    if (statSync(config.state, { throwIfNoEntry: false })) readdirSync(config.state);
  } catch (e) {
    return `cannot read state dir ${config.state}: ${messageOf(e)}`;
  }
  return undefined;
}

function publicFinding(f: Finding): Omit<Finding, 'repair'> & { repair?: string } {
  const { repair: r, ...rest } = f;
  return r ? { ...rest, repair: r.kind } : rest;
}

function jsonReport(config: BerthConfig, running: boolean, findings: Finding[], outcomes?: RepairOutcome[], remaining?: Finding[]): Record<string, unknown> {
  const count = (s: Finding['status']): number => findings.filter((f) => f.status === s).length;
  return {
    root: config.root,
    state: config.state,
    berthd_running: running,
    summary: { known: count('known'), leaked: count('leaked'), damaged: count('damaged') },
    findings: sorted(findings).map(publicFinding),
    ...(outcomes ? { repairs: outcomes, remaining: remaining!.map(publicFinding) } : {}),
  };
}

function sorted(findings: Finding[]): Finding[] {
  const rank = { damaged: 0, leaked: 1, known: 2 } as const;
  return [...findings].sort((a, b) => rank[a.status] - rank[b.status] || a.category.localeCompare(b.category) || a.subject.localeCompare(b.subject));
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return (
    rows
      .map((r) =>
        r
          .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

function textReport(config: BerthConfig, running: boolean, findings: Finding[], outcomes?: RepairOutcome[], remaining?: Finding[]): string {
  let s = `berthd doctor: root ${config.root}, state ${config.state} (berthd ${running ? 'running: database read-only' : 'stopped'})\n\n`;
  const label = (f: Finding): string => (f.status === 'known' ? 'known to berth' : f.status === 'leaked' ? 'unknown: leaked' : 'damaged');
  s += table([['STATUS', 'CATEGORY', 'SUBJECT', 'DETAIL', 'ACTION'], ...sorted(findings).map((f) => [label(f), f.category, f.subject, f.detail, f.action])]);
  const leaked = findings.filter((f) => f.status === 'leaked').length;
  const damaged = findings.filter((f) => f.status === 'damaged').length;
  s += `\n${findings.length} findings: ${findings.length - leaked - damaged} known, ${leaked} leaked${damaged > 0 ? `, ${damaged} damaged` : ''}\n`;
  if (outcomes) {
    s += `\nrepair:\n`;
    s += outcomes.length > 0 ? table(outcomes.map((o) => [o.ok ? 'done' : 'FAILED', o.category, o.subject, o.result])) : '  nothing to do\n';
    s +=
      remaining!.length === 0
        ? '\nafter repair: nothing leaked\n'
        : `\nafter repair, still ${remaining!.length}:\n${table(remaining!.map((f) => [label(f), f.category, f.subject, f.detail]))}`;
  } else if (leaked > 0) {
    s += 'run `berthd doctor --repair` to remove what is leaked\n';
  }
  return s;
}
