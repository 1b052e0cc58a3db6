/**
 * berth's own CNI runtime side (spec 1.0): running a network's chain of plugins for a
 * pod sandbox.
 *
 * The life of a pod's network attachment:
 *  1. `add`: each plugin of the list, in order, gets ADD with the previous plugin's
 *     result as `prevResult` (bridge creates the veth and asks host-local for an IP;
 *     portmap reads the pod IP from prevResult and installs its DNAT rules). The last
 *     result is the attachment's result, which the caller stores with the sandbox. If a
 *     plugin fails, the whole chain gets DEL (best effort) before the error is thrown,
 *     so a failed ADD leaves no IP allocated.
 *  2. `check` (optional): CHECK through the chain with the stored result.
 *  3. `del`: DEL through the chain in reverse, with the stored result. DEL may come any
 *     number of times, after a crash, with no stored result, or after the netns is gone;
 *     plugins are told to clean up what they can, and it succeeds.
 *
 * DEL needs the same runtime conf as ADD, `capabilityArgs` included: portmap only removes
 * its rules when it is given the port mappings again. Run DEL before the netns is
 * deleted: with no netns, the bridge plugin cannot find the pod's addresses and leaves
 * its `ipMasq` rules behind.
 */
import { statfs } from 'node:fs/promises';
import { BerthError, isKind, messageOf, type ErrorKind } from '../../common/errors.js';
import { traced } from '../../common/trace-points.js';
import type { CniNetworkList, CniPluginConf } from './conf-dir.js';
import { findPlugin, startPlugin, type StartedPlugin } from './exec.js';
import { cniEnv, pluginStdin, pluginTypeProblem, runtimeConfProblem, supportsCheck, type CniCommand, type CniRuntimeConf } from './protocol.js';
import { parseResult, podIps, type CniResult } from './result.js';

export type { CniRuntimeConf, PortMapping } from './protocol.js';
export type { CniInterface, CniIpConfig, CniResult } from './result.js';
export { podIps };

export interface CniNetworkOptions {
  /** Longest one plugin invocation may run (default 60 s). */
  timeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 60_000;
/** statfs(2) f_type of nsfs, what a pinned namespace file is. */
const NSFS_MAGIC = 0x6e736673;

/** One network list (bridge → portmap …) and the dirs its plugin binaries live in. */
export class CniNetwork {
  readonly name: string;
  private readonly timeoutMs: number;

  constructor(
    readonly list: CniNetworkList,
    readonly binDirs: string[],
    opts: CniNetworkOptions = {},
  ) {
    this.name = list.name;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  /**
   * Runs ADD through the chain, threading each result into the next plugin as
   * `prevResult`; returns the last result. On failure, runs DEL for the whole chain
   * (best effort, not cut short by `signal`) and throws a BerthError naming the plugin:
   * Unavailable when a plugin failed, DeadlineExceeded / Cancelled when one was killed.
   */
  async add(rt: CniRuntimeConf, signal?: AbortSignal): Promise<CniResult> {
    this.validate(rt);
    let prev: CniResult | undefined;
    const plugins = this.list.plugins;
    let next = plugins.length > 0 ? this.start('ADD', plugins[0]!, rt, signal) : undefined;
    for (const [i, plugin] of plugins.entries()) {
      const started = next!;
      // The next plugin starts while this one works; it gets its input (this one's result) after.
      next = i + 1 < plugins.length ? this.start('ADD', plugins[i + 1]!, rt, signal) : undefined;
      try {
        const stdout = await this.invoke('ADD', plugin, rt, prev, started);
        const parsed = parseResult(stdout, this.list.cniVersion);
        if (typeof parsed === 'string') throw new BerthError('Unavailable', parsed);
        prev = parsed;
      } catch (err) {
        // The next plugin never gets its turn: killed (and reaped) before the rollback.
        await cancelStarted(next);
        const rollback = await this.delChain(rt, undefined, undefined).then(
          () => '',
          (e: unknown) => ` (rolling the chain back with DEL failed too: ${messageOf(e)})`,
        );
        throw this.wrap(err, plugin, 'ADD', rollback);
      }
    }
    if (!prev) throw new BerthError('Internal', `CNI network "${this.name}" has no plugins`);
    return prev;
  }

  /**
   * Runs CHECK through the chain with the result of the ADD. Skipped when the list sets
   * `disableCheck` or its cniVersion predates CHECK (0.4.0). Stops at the first failure.
   */
  async check(rt: CniRuntimeConf, prevResult: CniResult, signal?: AbortSignal): Promise<void> {
    if (this.list.disableCheck === true || !supportsCheck(this.list.cniVersion)) return;
    this.validate(rt);
    for (const plugin of this.list.plugins) {
      try {
        await this.invoke('CHECK', plugin, rt, prevResult, this.start('CHECK', plugin, rt, signal));
      } catch (err) {
        throw this.wrap(err, plugin, 'CHECK');
      }
    }
  }

  /**
   * Runs DEL through the chain in reverse with the cached result (none for lists older
   * than 0.4.0, as the spec has it). A netns path that is gone or no longer a namespace
   * is passed as '' so plugins clean up what they can without it. Every plugin gets its
   * DEL even when an earlier one fails; then the first failure is thrown, naming its plugin.
   */
  async del(rt: CniRuntimeConf, prevResult: CniResult | undefined, signal?: AbortSignal): Promise<void> {
    this.validate(rt);
    await this.delChain(rt, prevResult, signal);
  }

  private async delChain(rt: CniRuntimeConf, prevResult: CniResult | undefined, signal: AbortSignal | undefined): Promise<void> {
    const netns = rt.netns !== '' && (await isNetns(rt.netns)) ? rt.netns : '';
    const delRt = { ...rt, netns };
    const prev = supportsCheck(this.list.cniVersion) ? prevResult : undefined;
    const failures: BerthError[] = [];
    const plugins = [...this.list.plugins].reverse();
    let next = plugins.length > 0 ? this.start('DEL', plugins[0]!, delRt, signal) : undefined;
    for (const [i, plugin] of plugins.entries()) {
      const started = next!;
      // Every plugin gets its DEL: the next one starts while this one works, and acts after it.
      next = i + 1 < plugins.length ? this.start('DEL', plugins[i + 1]!, delRt, signal) : undefined;
      try {
        await this.invoke('DEL', plugin, delRt, prev, started);
      } catch (err) {
        failures.push(this.wrap(err, plugin, 'DEL'));
      }
    }
    const first = failures[0];
    if (!first) return;
    if (failures.length === 1) throw first;
    throw new BerthError(
      first.kind,
      `${first.message} (and ${failures.length - 1} more: ${failures
        .slice(1)
        .map((f) => f.message)
        .join('; ')})`,
      { cause: first },
    );
  }

  /**
   * Starts `plugin` for `command` (exec.ts startPlugin): it waits for its input, which
   * {@link invoke} gives it at its turn. Settles with the started plugin or the error its
   * turn will throw; never rejects.
   */
  private start(command: CniCommand, plugin: CniPluginConf, rt: CniRuntimeConf, signal: AbortSignal | undefined): Promise<StartedPlugin | { error: unknown }> {
    return (async () => {
      const problem = pluginTypeProblem(plugin.type);
      if (problem) throw new BerthError('InvalidArgument', problem);
      const file = await findPlugin(plugin.type, this.binDirs);
      return startPlugin({ file, env: cniEnv(command, rt, this.binDirs), timeoutMs: this.timeoutMs, ...(signal ? { signal } : {}) });
    })().catch((error: unknown) => ({ error }));
  }

  /** Runs a plugin {@link start} started: gives it its stdin and returns its stdout. */
  private async invoke(
    command: CniCommand,
    plugin: CniPluginConf,
    rt: CniRuntimeConf,
    prev: CniResult | undefined,
    starting: Promise<StartedPlugin | { error: unknown }>,
  ): Promise<string> {
    const stdin = JSON.stringify(pluginStdin(this.list, plugin, prev, rt.capabilityArgs));
    const podId = rt.containerId === LOOPBACK_ID ? undefined : rt.containerId;
    return traced('berth:cni', { plugin: plugin.type, command, ...(podId !== undefined ? { podId } : {}) }, async () => {
      const started = await starting;
      if ('error' in started) throw started.error;
      return started.run(stdin);
    });
  }

  private validate(rt: CniRuntimeConf): void {
    const problem = runtimeConfProblem(rt);
    if (problem) throw new BerthError('InvalidArgument', `CNI network "${this.name}": ${problem}`);
  }

  private wrap(err: unknown, plugin: CniPluginConf, command: CniCommand, suffix = ''): BerthError {
    const kind: ErrorKind = isKind(err) && ['DeadlineExceeded', 'Cancelled', 'InvalidArgument'].includes(err.kind) ? err.kind : 'Unavailable';
    return new BerthError(kind, `CNI network "${this.name}": plugin "${plugin.type}" failed to ${command}: ${messageOf(err)}${suffix}`, { cause: err });
  }
}

/** Kills and reaps a plugin started for a turn it will not get. */
async function cancelStarted(starting: Promise<StartedPlugin | { error: unknown }> | undefined): Promise<void> {
  const started = await starting;
  if (started && !('error' in started)) await started.cancel();
}

/** True when `path` is a namespace file (a bind-mounted pin or /proc/<pid>/ns/net). */
async function isNetns(path: string): Promise<boolean> {
  try {
    return (await statfs(path)).type === NSFS_MAGIC;
  } catch {
    return false;
  }
}

/** The CNI container id of the loopback attachment, which belongs to no one pod. */
const LOOPBACK_ID = 'berth-loopback';
const LOOPBACK: CniNetworkList = { cniVersion: '1.0.0', name: 'berth-loopback', plugins: [{ type: 'loopback' }], file: '(built in)' };

/**
 * Brings `lo` up inside the netns with the loopback plugin. Its DEL is a no-op (the
 * device dies with the netns), so there is nothing to undo.
 */
export async function loopbackUp(netns: string, binDirs: string[], signal?: AbortSignal, opts: CniNetworkOptions = {}): Promise<void> {
  const rt: CniRuntimeConf = { containerId: LOOPBACK_ID, netns, ifName: 'lo', args: [] };
  await new CniNetwork(LOOPBACK, binDirs, opts).add(rt, signal);
}
