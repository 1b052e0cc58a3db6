/**
 * Starts a real berthd process for a test, in fresh temp dirs (root, state, a temp
 * socket, its own config dir), and hands the test typed CRI clients. `dispose()` stops
 * it with SIGTERM and fails when it left anything behind: a process mentioning its
 * dirs, a mount under them, or a file other than the expected ones.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { status } from '@grpc/grpc-js';
import { criClients, type CriClients } from './cri-client.js';

export const BERTHD_BIN = fileURLToPath(new URL('../../../bin/berthd.js', import.meta.url));
/** What the harness runs: the daemon of this very build (see berthd-main.ts). */
const BERTHD_MAIN = fileURLToPath(new URL('./berthd-main.js', import.meta.url));

export interface StartOptions {
  /** TOML written to <dir>/etc/config.toml and passed with --config. */
  config?: string;
  /** Drop-ins, by file name, written to <dir>/etc/config.d/. */
  dropIns?: Record<string, string>;
  /** Extra command-line arguments. */
  args?: string[];
  /** Reuse the dirs of an earlier instance (restart tests). */
  reuse?: { dir: string };
  /** The --log-level flag (default debug); null passes none, so the config files decide. */
  logLevel?: string | null;
  /** Extra node flags for the berthd process (e.g. --cpu-prof for the benchmark). */
  nodeArgs?: string[];
  /** Environment variables added to the test's own for berthd. */
  env?: Record<string, string>;
  /** How long to wait for berthd to answer (default 15 s; a loaded machine may need more). */
  readyTimeoutMs?: number;
  /**
   * A command that runs berthd in the end, by exec (so the pid stays berthd's): the node
   * binary and its arguments are appended. {@link IN_NEW_NETNS} runs it in a network
   * namespace of its own.
   */
  wrap?: string[];
}

/**
 * Runs berthd in a new network namespace with only its loopback up: nothing it (or a
 * host-network pod of it) sends can leave the machine, and no name resolves.
 */
export const IN_NEW_NETNS = ['unshare', '--net', '--', 'sh', '-c', 'ip link set lo up && exec "$0" "$@"'];

export class Berthd implements AsyncDisposable {
  readonly root: string;
  readonly state: string;
  readonly socket: string;
  readonly configFile: string;
  private output = '';
  private exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  clients!: CriClients;

  private constructor(
    readonly dir: string,
    readonly proc: ChildProcess,
  ) {
    this.root = join(dir, 'root');
    this.state = join(dir, 'state');
    this.socket = join(dir, 'state', 'berth.sock');
    this.configFile = join(dir, 'etc', 'config.toml');
    proc.stdout!.on('data', (d: Buffer) => (this.output += d.toString()));
    proc.stderr!.on('data', (d: Buffer) => (this.output += d.toString()));
    this.exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  }

  get runtime(): CriClients['runtime'] {
    return this.clients.runtime;
  }

  get image(): CriClients['image'] {
    return this.clients.image;
  }

  /** Everything berthd wrote to stdout and stderr so far. */
  logs(): string {
    return this.output;
  }

  /** The JSON log records berthd wrote so far. */
  records(): Array<Record<string, unknown>> {
    return this.output
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  static async start(opts: StartOptions = {}): Promise<Berthd> {
    const dir = opts.reuse?.dir ?? mkdtempSync(join(tmpdir(), 'berth-test-'));
    const etc = join(dir, 'etc');
    rmSync(etc, { recursive: true, force: true });
    mkdirp(join(etc, 'config.d'));
    writeFileSync(join(etc, 'config.toml'), opts.config ?? '');
    for (const [name, text] of Object.entries(opts.dropIns ?? {})) writeFileSync(join(etc, 'config.d', name), text);
    // Tests never depend on the host's CNI config: each gets an empty conf dir unless it says otherwise.
    // A killed berthd leaves its socket: a client that connects to it before the new one
    // binds is refused and backs off for seconds, which a loaded machine turns into a
    // start-up timeout.
    if (opts.reuse) rmSync(join(dir, 'state', 'berth.sock'), { force: true });
    const cniDir = join(dir, 'cni');
    mkdirp(cniDir);
    const args = [
      // As bin/berthd.js's shebang runs it (see src/common/heap-flags.ts).
      '--max-semi-space-size=1',
      ...(opts.nodeArgs ?? []),
      BERTHD_MAIN,
      '--config',
      join(etc, 'config.toml'),
      '--root',
      join(dir, 'root'),
      '--state',
      join(dir, 'state'),
      '--socket',
      join(dir, 'state', 'berth.sock'),
      ...(opts.logLevel === null ? [] : ['--log-level', opts.logLevel ?? 'debug']),
      ...(opts.args ?? []),
    ];
    if (!/conf_dir/.test(opts.config ?? '') && !Object.values(opts.dropIns ?? {}).some((t) => /conf_dir/.test(t))) {
      writeFileSync(join(etc, 'config.d', '00-test-cni.toml'), `[cni]\nconf_dir = "${cniDir}"\n`);
    }
    // Tests run side by side: each metrics endpoint on a free port (see metricsAddress()).
    if (!/\[metrics\]/.test(opts.config ?? '') && !Object.values(opts.dropIns ?? {}).some((t) => /\[metrics\]/.test(t))) {
      writeFileSync(join(etc, 'config.d', '00-test-metrics.toml'), `[metrics]\naddress = "127.0.0.1:0"\n`);
    }
    const [cmd, ...pre] = opts.wrap ?? [process.execPath];
    const proc = spawn(cmd!, opts.wrap ? [...pre, process.execPath, ...args] : args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...opts.env },
    });
    const b = new Berthd(dir, proc);
    await b.waitReady(opts.readyTimeoutMs);
    return b;
  }

  /** Waits until the socket answers Version (i.e. recovery has finished). */
  private async waitReady(timeoutMs = 15_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    let exit: { code: number | null } | undefined;
    void this.exited.then((e) => (exit = e));
    while (Date.now() < until) {
      if (exit) throw new Error(`berthd exited with ${exit.code} during start-up:\n${this.output}`);
      if (existsSync(this.socket)) {
        this.clients ??= criClients(this.socket);
        try {
          await this.clients.runtime.Version({}, { deadline: Date.now() + 1000 });
          return;
        } catch (err) {
          // Not up yet, or too slow for the probe's own deadline on a loaded machine.
          const code = (err as { code?: number }).code;
          if (code !== status.UNAVAILABLE && code !== status.DEADLINE_EXCEEDED) throw err;
        }
      }
      await sleep(20);
    }
    throw new Error(`berthd did not become ready in ${timeoutMs} ms:\n${this.output}`);
  }

  /** Where the metrics endpoint listens ("127.0.0.1:port"), from verbose Status; undefined when it does not serve. */
  async metricsAddress(): Promise<string | undefined> {
    const res = await this.runtime.Status({ verbose: true });
    const m = JSON.parse(res.info['metrics'] ?? '{}') as { serving?: boolean; address?: string };
    return m.serving ? m.address : undefined;
  }

  /** Sends `signal` and waits for the exit; returns the exit code and time taken. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 10_000): Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }> {
    this.clients?.close();
    const t0 = Date.now();
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill(signal);
    const res = await Promise.race([
      this.exited,
      sleep(timeoutMs).then(() => {
        this.proc.kill('SIGKILL');
        throw new Error(`berthd did not exit within ${timeoutMs} ms of ${signal}:\n${this.output}`);
      }),
    ]);
    return { ...res, ms: Date.now() - t0 };
  }

  /** Stops berthd (if running), checks for leftovers, removes the temp dir. */
  async dispose(opts: { keepDir?: boolean } = {}): Promise<void> {
    await this.stop();
    const problems = leftovers(this.dir, this.socket);
    if (!opts.keepDir) rmSync(this.dir, { recursive: true, force: true });
    if (problems.length > 0) throw new Error(`berthd left things behind:\n  ${problems.join('\n  ')}`);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}

/**
 * What berthd may leave in its dirs after a clean stop: its database and lock files,
 * and persistent image data (blobs, snapshots). Temp files of downloads never.
 */
function expectedFile(rel: string): boolean {
  if (['root/berth.db', 'root/berthd.lock', 'state/berthd.lock'].includes(rel)) return true;
  if (rel === 'root/content/ingest' || rel === 'state/ns' || rel === 'state/mounts') return true;
  // Directories of the container machinery may stay; anything in them is a leftover.
  if (/^state\/(exits|attach|conmon|runtime)$/.test(rel) || /^state\/runtime\/[a-z0-9.-]+$/.test(rel)) return true;
  if (rel.startsWith('root/content/ingest/')) return false;
  return /^root\/(content|snapshots|sandboxes)(\/|$)/.test(rel) || rel === 'root/containers';
}

/** Processes, mounts and files left under `dir` after berthd stopped. */
export function leftovers(dir: string, socket: string): string[] {
  const problems: string[] = [];
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    if (Number(pid) === process.pid) continue;
    let cmd: string;
    try {
      cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
    } catch {
      continue;
    }
    if (cmd.includes(dir)) problems.push(`process ${pid}: ${cmd.trim()}`);
  }
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mountPoint = line.split(' ')[4];
    if (mountPoint?.startsWith(dir)) problems.push(`mount ${mountPoint}`);
  }
  if (existsSync(socket)) problems.push(`socket ${socket}`);
  for (const sub of ['root', 'state']) {
    const d = join(dir, sub);
    if (!existsSync(d)) continue;
    for (const name of readdirSync(d, { recursive: true }) as string[]) {
      const rel = `${sub}/${name}`;
      if (!expectedFile(rel)) problems.push(`file ${rel}`);
    }
  }
  return problems;
}

function mkdirp(d: string): void {
  mkdirSync(d, { recursive: true });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `f` every `everyMs` until it returns a value, or fails after `ms`. */
export async function until<T>(f: () => Promise<T | undefined>, ms = 15_000, everyMs = 50): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`condition not met within ${ms} ms`);
    await sleep(everyMs);
  }
}
