/**
 * berthd: the composition root. Parses the command line, loads the configuration,
 * takes the locks, opens the database, builds every module, serves CRI on the unix
 * socket, runs start-up recovery, and on SIGTERM/SIGINT drains and exits 0.
 *
 * Start-up order matters: nothing touches the system before the config is known to be
 * good and the locks are held, so a bad config or a second instance changes nothing.
 */
// First: V8 heap settings that must hold before anything else loads.
import './common/heap-flags.js';
import type * as grpc from '@grpc/grpc-js';
import { rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BerthError, errnoOf, messageOf } from './common/errors.js';
import { createLogger, type Logger } from './common/logger.js';
import { cleanProbeScratch } from './common/mount-probes.js';
import { limitMallocArenas, startMallocTrimmer } from './common/malloc-trim.js';
import { loadNative } from './common/native.js';
import { traced } from './common/trace-points.js';
import { BERTH_VERSION } from './common/version.js';
import { SystemdNotifier } from './common/sd-notify.js';
import { configInForce } from './cli/config.js';
import { reloadCommand } from './cli/reload.js';
import { LiveConfig } from './config/live.js';
import { ConfigError, formatConfig, loadConfig, type LoadedConfig } from './config/load.js';
import { ConfigReloader } from './config/reload.js';
import { defaultConfig, type BerthConfig } from './config/schema.js';
import type { LiveCounts } from './cri/deps.js';
import { createCriServer, serviceOfMethod } from './cri/server.js';
import { bindSocket, claimSocketPath } from './cri/socket.js';
import { ServingState } from './cri/serving-state.js';
import { ContainerRepository } from './containers/container-repository.js';
import { ContainerService } from './containers/container-service.js';
import { BlobRepository } from './images/content/blob-repository.js';
import { ContentStore } from './images/content/content-store.js';
import { ImageRepository } from './images/image-repository.js';
import { pinnedNames } from './images/image-lookup.js';
import { ImageService } from './images/image-service.js';
import { closeAgents } from './images/registry/http.js';
import { OverlaySnapshotter } from './images/snapshots/overlay.js';
import { SnapshotRepository } from './images/snapshots/snapshot-repository.js';
import { SandboxRepository } from './sandbox/sandbox-repository.js';
import { systemPodHost } from './sandbox/pod-host.js';
import { SandboxService } from './sandbox/sandbox-service.js';
import { CadvisorCollector } from './stats/cadvisor-samples.js';
import { StatsService } from './stats/stats-service.js';
import { StreamingServer } from './streaming/server.js';
import { CgroupJoinWarmup } from './oci/cgroup-warmup.js';
import { OciRuntime, OciRuntimes, runtimeStateRoot } from './oci/oci-runtime.js';
import { ConmonShim } from './shim/conmon.js';
import { shimDirs } from './shim/shim.js';
import { openDatabase, type Db } from './store/database.js';
import { WalSync } from './store/wal-sync.js';
import { DirectoryLock } from './store/lock.js';
import { RuntimeSettingsRepository } from './store/runtime-settings.js';
import { startTracing } from './telemetry/tracing.js';
import { BerthMetrics } from './telemetry/metrics.js';
import { MetricsServer } from './telemetry/metrics-server.js';

const USAGE = `Usage: berthd [command] [flags]

berth: a Kubernetes CRI v1 container runtime.

Commands:
  (none)            run the daemon
  config            print the configuration in force in the berthd running on --state; with
                    --config, --root, --socket or --log-level (or no berthd), what they give
  reload            make the running berthd re-read its config files (SIGHUP) and print the
                    outcome; keys that need a restart keep their running value
  doctor            report (and with --repair remove) what the node holds that the database does not know; see berthd doctor --help
  explain pod|container ID   print a pod's or container's startup timeline (asks the running berthd)

Flags:
  --config FILE     config file (default /etc/berth/config.toml; drop-ins from its config.d/)
  --socket PATH     CRI gRPC socket (default /run/berth/berth.sock)
  --root DIR        persistent state (default /var/lib/berth)
  --state DIR       runtime state (default /run/berth)
  --log-level LVL   debug, info, warn or error (default info)
  -h, --help        show this help
  -v, --version     show the version
`;

/** How often freed malloc memory goes back to the kernel (see common/malloc-trim.ts). */
const MALLOC_TRIM_EVERY_MS = 30_000;
/** glibc malloc arenas berthd allows itself (unless MALLOC_ARENA_MAX is set): see malloc-trim.ts. */
const MALLOC_ARENA_MAX = 2;

/** How long the spans still queued at shutdown may take to reach the collector. */
const TRACING_FLUSH_MS = 2000;

/** Exit codes: 0 ok, 1 runtime failure, 2 bad usage or configuration. */
export async function main(argv: string[]): Promise<number> {
  // The subcommands' modules are loaded only when used: the daemon keeps none of them.
  if (argv[0] === 'doctor') return (await import('./doctor/command.js')).doctorMain(argv.slice(1));
  if (argv[0] === 'explain') return (await import('./cli/explain.js')).explain(argv.slice(1));
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        config: { type: 'string' },
        socket: { type: 'string' },
        root: { type: 'string' },
        state: { type: 'string' },
        'log-level': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean', short: 'v' },
      },
    });
  } catch (err) {
    process.stderr.write(`berthd: ${messageOf(err)}\n\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (values.version) {
    process.stdout.write(`berthd ${BERTH_VERSION} (CRI runtime.v1)\n`);
    return 0;
  }
  const command = positionals[0] ?? 'run';
  if (positionals.length > 1 || !['run', 'config', 'reload'].includes(command)) {
    process.stderr.write(`berthd: unknown command "${positionals.join(' ')}"\n\n${USAGE}`);
    return 2;
  }

  // The daemon reads its files again with the same flags on top at each reload.
  const load = (): LoadedConfig =>
    loadConfig({
      ...(values.config !== undefined ? { file: values.config } : {}),
      overrides: { socket: values.socket, root: values.root, state: values.state, log_level: values['log-level'] },
    });
  let loaded: LoadedConfig;
  try {
    loaded = load();
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    // A broken file is for the running daemon to refuse (and say so): reload still asks it.
    if (command === 'reload') return reloadCommand({ state: values.state ?? defaultConfig().state });
    process.stderr.write(`berthd: invalid configuration: ${err.message}\n`);
    return 2;
  }
  if (command === 'reload') return reloadCommand({ state: loaded.config.state });
  if (command === 'config') {
    const describesFiles = [values.config, values.root, values.socket, values['log-level']].some((v) => v !== undefined);
    process.stdout.write((!describesFiles && configInForce(loaded.config.state)) || formatConfig(loaded.config));
    return 0;
  }
  return runDaemon(loaded, load);
}

async function runDaemon(loaded: LoadedConfig, load: () => LoadedConfig): Promise<number> {
  // The config in force: what a reload may change is read from it at each use (config/live.ts).
  const live = new LiveConfig(loaded.config, loaded.sources);
  const config = live.view;
  const sources = loaded.sources;
  const log = createLogger(() => live.current.log_level);
  const notifier = SystemdNotifier.fromEnvironment(log.child({ component: 'systemd' }));
  // What start-up took, undone in reverse order on shutdown or a failed start.
  const held: Array<() => void | Promise<void>> = [];
  const releaseAll = async (): Promise<void> => {
    for (const r of held.reverse()) {
      try {
        await r();
      } catch (err) {
        log.warn('cleanup step failed', { error: messageOf(err) });
      }
    }
    held.length = 0;
  };

  try {
    loadNative();
  } catch (err) {
    log.error('cannot start', { error: messageOf(err) });
    return 1;
  }
  let db: Db;
  let server: grpc.Server;
  let images: ImageService;
  let sandboxes: SandboxService;
  let containersRef: ContainerService;
  const podsByState = (): Record<string, number> => countBy(sandboxes.list().map((s) => s.state));
  const containersByState = (): Record<string, number> => countBy(containersRef.list().map((c) => c.state));
  const liveShims = (): number => containersRef.list().filter((c) => c.shimPid !== null && alive(c.shimPid)).length;
  const state = new ServingState();
  // Built first, so that the trace points of start-up and recovery are counted.
  let metrics: BerthMetrics | undefined;
  let metricsEndpoint: { serving: boolean; address?: string; error?: string } = { serving: false, error: 'metrics.address is ""' };
  const reloader = new ConfigReloader({
    live,
    load,
    check: (next) => void pinnedNames(next.images.pinned),
    stateDir: config.state,
    log: log.child({ component: 'config' }),
    // systemd hears of a reload only once berthd is serving: READY=1 then means serving again.
    onBegin: () => {
      if (state.phase === 'ready') notifier.reloading();
    },
    onEnd: () => {
      if (state.phase === 'ready') notifier.ready(`serving on ${config.socket}; configuration generation ${live.generation}`);
    },
  });
  // Installed before anything else: Node's default for SIGHUP is to exit.
  process.on('SIGHUP', () => {
    if (state.phase !== 'draining') void reloader.reload();
  });
  try {
    // Before the pool threads and the unpack workers make their arenas (see malloc-trim.ts).
    limitMallocArenas(MALLOC_ARENA_MAX);
    const rootLock = DirectoryLock.acquire(config.root, 'root directory');
    held.push(() => rootLock.release());
    const stateLock = DirectoryLock.acquire(config.state, 'state directory');
    held.push(() => stateLock.release());
    reloader.publish();
    held.push(() => reloader.unpublish());
    await claimSocketPath(config.socket);
    // Tracing is not worth refusing to serve for: a failure to start it is logged and it stays off.
    const tracing = await startTracing(config.tracing, log.child({ component: 'tracing' })).catch(
      (err: unknown) => void log.error('tracing failed to start; it stays off', { error: messageOf(err) }),
    );
    if (tracing) held.push(() => tracing.shutdown(TRACING_FLUSH_MS));

    held.push(startMallocTrimmer(MALLOC_TRIM_EVERY_MS));

    db = openDatabase(join(config.root, 'berth.db'));
    const openDb = db;
    held.push(() => {
      openDb.close();
    });
    const walSync = new WalSync(db, join(config.root, 'berth.db-wal'));
    held.push(() => walSync.close());
    const dbFile = join(config.root, 'berth.db');
    if (config.metrics.address !== '') {
      const m = (metrics = new BerthMetrics({
        serviceOf: serviceOfMethod(),
        podsByState: () => podsByState(),
        containersByState: () => containersByState(),
        liveShims: () => liveShims(),
        databaseBytes: () => [dbFile, `${dbFile}-wal`].reduce((n, f) => n + (statSync(f, { throwIfNoEntry: false })?.size ?? 0), 0),
      }));
      held.push(() => m.close());
    }

    const snapshots = new OverlaySnapshotter(config.root, new SnapshotRepository(db), log.child({ component: 'snapshots' }));
    images = new ImageService({
      images: live.section('images'),
      registries: () => live.current.registries,
      content: new ContentStore(config.root, new BlobRepository(db), log.child({ component: 'content' })),
      snapshots,
      repo: new ImageRepository(db),
      log: log.child({ component: 'images' }),
    });
    held.push(() => closeAgents());
    const imgs = images;
    held.push(() => imgs.close());
    const runtimes = ociRuntimes(config, log.child({ component: 'runtime' }));
    const shim = new ConmonShim({ dirs: shimDirs(config.state), log: log.child({ component: 'shim' }) });
    // The pod services need each other: ContainerService is built on SandboxService, which
    // stops and removes a pod's containers through hooks bound to it once it exists (none
    // is called before recovery, which runs after both are built).
    const late: { containers?: ContainerService } = {};
    const boundContainers = (): ContainerService => {
      if (!late.containers) throw new Error('containers are not set up yet');
      return late.containers;
    };
    sandboxes = new SandboxService({
      config,
      repo: new SandboxRepository(db),
      runtimes,
      shim,
      host: systemPodHost,
      containers: { stopAll: (id) => boundContainers().stopAll(id), removeAll: (id) => boundContainers().removeAll(id) },
      log: log.child({ component: 'sandbox' }),
    });
    const sb = sandboxes;
    held.push(() => sb.close());
    const containers = new ContainerService({
      config,
      repo: new ContainerRepository(db),
      sandboxes,
      images,
      runtimes,
      shim,
      log: log.child({ component: 'containers' }),
    });
    late.containers = containers;
    containersRef = containers;
    held.push(() => containers.close());
    const stats = new StatsService({ containers, sandboxes, images, cgroupDriver: config.cgroup_driver, log: log.child({ component: 'stats' }) });
    const streaming = new StreamingServer({ config: live.section('streaming'), containers, sandboxes, log: log.child({ component: 'streaming' }) });
    await streaming.start();
    held.push(() => streaming.close());
    const cadvisor = new CadvisorCollector({ stats, sandboxes });
    if (metrics) {
      const m = metrics;
      const ms = new MetricsServer({ address: config.metrics.address, metrics: () => m.render(), cadvisor: () => cadvisor.collect(), log });
      // A taken port costs the metrics, not the node: logged and reported in verbose Status.
      await ms.start().then(
        () => (metricsEndpoint = { serving: true, address: ms.address! }),
        (err: unknown) => {
          metricsEndpoint = { serving: false, error: `${config.metrics.address}: ${messageOf(err)}` };
          log.error('metrics endpoint not serving', { address: config.metrics.address, error: messageOf(err) });
        },
      );
      held.push(() => ms.close());
    }
    const metricsState = (): typeof metricsEndpoint => metricsEndpoint;
    const liveCounts = (): LiveCounts => ({
      podsByState: podsByState(),
      containersByState: containersByState(),
      liveShims: liveShims(),
      pullsInProgress: imgs.pullsInProgress,
      eventSubscribers: containers.events.subscriberCount,
      streamingSessions: streaming.sessions.open,
      streamingUrlsPending: streaming.sessions.pendingUrls,
    });
    const deps = {
      config,
      settings: new RuntimeSettingsRepository(db),
      log,
      images,
      sandboxes,
      containers,
      stats,
      streaming,
      tracing,
      cadvisor,
      metricsEndpoint: metricsState,
      liveCounts,
    };
    server = createCriServer(
      { state, log, durable: () => walSync.sync(), observers: [...(tracing ? [tracing.rpc] : []), ...(metrics ? [metrics] : [])] },
      deps,
    );
    await bindSocket(server, config.socket);
    held.push(() => rmSync(config.socket, { force: true }));
  } catch (err) {
    await releaseAll();
    const msg = err instanceof BerthError ? err.message : messageOf(err);
    log.error('berthd failed to start', { error: msg });
    process.stderr.write(`berthd: ${msg}\n`);
    return 1;
  }
  log.info('berthd serving', {
    version: BERTH_VERSION,
    socket: config.socket,
    root: config.root,
    state: config.state,
    config_files: sources,
    metrics: metricsEndpoint,
  });

  let stopping: Promise<number> | undefined;
  const stop = (signal: string): Promise<number> => {
    if (!stopping) notifier.stopping(`stopping on ${signal}`);
    return (stopping ??= shutdown(server, state, config, log, signal).then(async (code) => {
      await releaseAll();
      log.info('berthd stopped', { signal });
      return code;
    }));
  };

  const exit = new Promise<number>((resolve) => {
    for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => void stop(sig).then(resolve));
  });

  await traced('berth:recovery', {}, () =>
    recover(log, [
      { name: 'mount probes', run: () => cleanProbeScratch(join(config.state, 'probe')) },
      { name: 'images', run: () => images.recover() },
      { name: 'sandboxes', run: () => sandboxes.recover() },
      { name: 'containers', run: () => containersRef.recover() },
    ]),
  );
  if (state.phase === 'recovering') {
    state.ready();
    log.info('recovery finished; berthd is ready');
    notifier.ready(`serving on ${config.socket}`);
  }
  return exit;
}

/** One OCI runtime per configured handler, each with its state root under berth's state dir. */
function ociRuntimes(config: BerthConfig, log: Logger): OciRuntimes {
  // One for all handlers: the kernel lock it warms is global.
  const cgroupWarmup = new CgroupJoinWarmup(log);
  const runtimes = Object.entries(config.runtimes).map(
    ([handler, rt]) =>
      new OciRuntime({
        handler,
        path: rt.path,
        root: runtimeStateRoot(config.state, handler),
        log,
        sealedCopy: true,
        cgroupWarmup,
        fifoStart: rt.fifo_start ?? true,
      }),
  );
  return new OciRuntimes(runtimes, config.default_runtime);
}

/** How many times each value occurs. */
function countBy(values: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const v of values) out[v] = (out[v] ?? 0) + 1;
  return out;
}

/** Whether a process exists (signal 0 checks without sending). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errnoOf(err) === 'EPERM';
  }
}

/**
 * Start-up recovery: reconciles the database with what exists on the system. Calls are
 * answered UNAVAILABLE until it finishes. The modules that own processes, mounts and
 * namespaces add their reconciliation steps here as they arrive.
 */
async function recover(log: Logger, steps: Array<{ name: string; run(): Promise<void> }>): Promise<void> {
  for (const step of steps) {
    try {
      await step.run();
    } catch (err) {
      // One bad item must not keep the node down: log it and go on.
      log.error('recovery step failed', { step: step.name, error: messageOf(err) });
    }
  }
}

/** Stops taking calls, lets in-flight ones finish within the timeout, then closes. */
async function shutdown(server: grpc.Server, state: ServingState, config: BerthConfig, log: Logger, signal: string): Promise<number> {
  log.info('berthd shutting down', { signal, inflight: state.inflight });
  state.drain();
  const timeoutMs = config.shutdown_timeout_seconds * 1000;
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), timeoutMs);
  });
  const graceful = Promise.all([state.drained(), new Promise<void>((resolve) => server.tryShutdown(() => resolve()))]).then(() => 'done' as const);
  const outcome = await Promise.race([graceful, timedOut]);
  clearTimeout(timer);
  if (outcome === 'timeout') {
    log.warn('in-flight calls did not finish in time; cutting them off', { inflight: state.inflight, timeout_seconds: config.shutdown_timeout_seconds });
    server.forceShutdown();
  }
  return 0;
}
