/**
 * berth's CNI client against recording fake plugins (protocol details, bounds): small
 * scripts in a temp dir, run as any user. The real plugins are in
 * test/integration/sandbox/cni/cni.test.ts.
 */
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKind } from '../../../../src/common/errors.js';
import { CniNetwork, type CniRuntimeConf } from '../../../../src/sandbox/cni/cni.js';
import type { CniNetworkList, CniPluginConf } from '../../../../src/sandbox/cni/conf-dir.js';
import { until } from '../../../helpers/berthd.js';

function list(name: string, plugins: CniPluginConf[], extra: Partial<CniNetworkList> = {}): CniNetworkList {
  return { cniVersion: '1.0.0', name, plugins, file: '(test)', ...extra };
}

async function rejectsWith(p: Promise<unknown>, re: RegExp): Promise<Error> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof Error);
    assert.match(err.message, re);
    return err;
  }
  assert.fail(`expected a rejection matching ${re}`);
}

/** True while `pid` is a live (non-zombie) process. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

describe('CniNetwork with recording fake plugins', () => {
  let dir: string;
  let bin: string;
  let logDir: string;
  const rt: CniRuntimeConf = {
    containerId: 'fake-sandbox-1',
    netns: '/proc/self/ns/net',
    ifName: 'eth0',
    args: [
      ['K8S_POD_NAMESPACE', 'ns1'],
      ['K8S_POD_NAME', 'pod1'],
    ],
    capabilityArgs: { portMappings: [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }], bandwidth: { ingressRate: 5 } },
  };
  const resultA = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: '/proc/self/ns/net' }], ips: [{ address: '10.5.0.2/24', interface: 0 }] };
  const resultB = { ...resultA, dns: { nameservers: ['10.5.0.1'] } };

  /**
   * A plugin that records its env and stdin and answers ADD with `result` (or fails with
   * `error`). As real plugins do (skel reads the whole configuration first), it acts only
   * once it has read its input: a chain starts its next plugin early and hands it its
   * input at its turn.
   */
  function fakePlugin(name: string, opts: { result?: unknown; error?: unknown; body?: string } = {}): void {
    const answer = opts.error
      ? `printf '%s' '${JSON.stringify(opts.error)}'; exit 1`
      : `[ "$CNI_COMMAND" = ADD ] && printf '%s' '${JSON.stringify(opts.result ?? resultA)}'; exit 0`;
    const script = [
      '#!/bin/sh',
      `cat > ${logDir}/${name}-$CNI_COMMAND.json`,
      `echo "${name} $CNI_COMMAND" >> ${logDir}/calls`,
      `env | grep '^CNI_' | sort > ${logDir}/${name}-$CNI_COMMAND.env`,
      opts.body ?? answer,
      '',
    ].join('\n');
    writeFileSync(join(bin, name), script);
    chmodSync(join(bin, name), 0o755);
  }
  const calls = (): string[] => (existsSync(join(logDir, 'calls')) ? readFileSync(join(logDir, 'calls'), 'utf8').trim().split('\n') : []);
  const stdinOf = (name: string, cmd: string): Record<string, unknown> =>
    JSON.parse(readFileSync(join(logDir, `${name}-${cmd}.json`), 'utf8')) as Record<string, unknown>;
  const envOf = (name: string, cmd: string): string => readFileSync(join(logDir, `${name}-${cmd}.env`), 'utf8');

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'berth-cni-fake-'));
    bin = join(dir, 'bin');
    logDir = join(dir, 'log');
    mkdirSync(bin);
    mkdirSync(logDir);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('threads prevResult on ADD, passes the protocol env and only declared capabilities', async () => {
    fakePlugin('fa', { result: resultA });
    fakePlugin('fb', { result: resultB });
    const emptyDir = join(dir, 'empty');
    mkdirSync(emptyDir);
    const net = new CniNetwork(
      list('fakenet', [
        { type: 'fa', foo: 1 },
        { type: 'fb', capabilities: { portMappings: true } },
      ]),
      [emptyDir, bin],
    );
    const result = await net.add(rt);
    assert.deepEqual(result, resultB);
    assert.deepEqual(calls(), ['fa ADD', 'fb ADD']);
    assert.deepEqual(stdinOf('fa', 'ADD'), { type: 'fa', foo: 1, name: 'fakenet', cniVersion: '1.0.0' });
    assert.deepEqual(stdinOf('fb', 'ADD'), {
      type: 'fb',
      capabilities: { portMappings: true },
      name: 'fakenet',
      cniVersion: '1.0.0',
      prevResult: resultA,
      runtimeConfig: { portMappings: rt.capabilityArgs!.portMappings },
    });
    assert.equal(
      envOf('fa', 'ADD'),
      [
        'CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=pod1',
        'CNI_COMMAND=ADD',
        'CNI_CONTAINERID=fake-sandbox-1',
        'CNI_IFNAME=eth0',
        'CNI_NETNS=/proc/self/ns/net',
        `CNI_PATH=${emptyDir}:${bin}`,
        '',
      ].join('\n'),
    );
  });

  it('runs CHECK in order and DEL in reverse with the cached result; CHECK skipped when disabled or pre-0.4.0', async () => {
    fakePlugin('fa');
    fakePlugin('fb');
    const net = new CniNetwork(list('fakenet', [{ type: 'fa' }, { type: 'fb' }]), [bin]);
    await net.check(rt, resultB);
    await net.del(rt, resultB);
    assert.deepEqual(calls(), ['fa CHECK', 'fb CHECK', 'fb DEL', 'fa DEL']);
    assert.deepEqual(stdinOf('fa', 'CHECK').prevResult, resultB);
    assert.deepEqual(stdinOf('fa', 'DEL').prevResult, resultB);
    assert.match(envOf('fa', 'DEL'), /^CNI_NETNS=\/proc\/self\/ns\/net$/m);

    rmSync(join(logDir, 'calls'));
    await new CniNetwork(list('fakenet', [{ type: 'fa' }], { disableCheck: true }), [bin]).check(rt, resultB);
    const old = new CniNetwork(list('fakenet', [{ type: 'fa' }], { cniVersion: '0.3.1' }), [bin]);
    await old.check(rt, resultB);
    assert.deepEqual(calls(), []);
    // Spec 0.3.x had no cached result on DEL.
    await old.del(rt, resultB);
    assert.equal(stdinOf('fa', 'DEL').prevResult, undefined);
    assert.equal(stdinOf('fa', 'DEL').cniVersion, '0.3.1');
  });

  it('DEL of a gone netns passes an empty CNI_NETNS; DEL without a result passes no prevResult', async () => {
    fakePlugin('fa');
    const net = new CniNetwork(list('fakenet', [{ type: 'fa' }]), [bin]);
    await net.del({ ...rt, netns: join(dir, 'no-such-netns') }, undefined);
    assert.match(envOf('fa', 'DEL'), /^CNI_NETNS=$/m);
    assert.equal(stdinOf('fa', 'DEL').prevResult, undefined);
    // A plain file (an unmounted pin) is no netns either.
    writeFileSync(join(dir, 'plain'), '');
    await net.del({ ...rt, netns: join(dir, 'plain') }, undefined);
    assert.match(envOf('fa', 'DEL'), /^CNI_NETNS=$/m);
  });

  it('reports the CNI error object of a failed ADD, naming network and plugin, and rolls the chain back', async () => {
    fakePlugin('fa');
    fakePlugin('fbad', { error: { cniVersion: '1.0.0', code: 11, msg: 'no luck', details: 'try later' } });
    const net = new CniNetwork(list('fakenet', [{ type: 'fa' }, { type: 'fbad' }]), [bin]);
    const err = await rejectsWith(
      net.add(rt),
      /^CNI network "fakenet": plugin "fbad" failed to ADD: no luck: try later \(rolling the chain back with DEL failed too: .*plugin "fbad" failed to DEL: no luck/,
    );
    assert.ok(isKind(err, 'Unavailable'));
    // DEL ran for the whole chain, in reverse, without a result.
    assert.deepEqual(calls(), ['fa ADD', 'fbad ADD', 'fbad DEL', 'fa DEL']);
    assert.equal(stdinOf('fa', 'DEL').prevResult, undefined);
  });

  it('DEL runs every plugin even when one fails, then names the failed one', async () => {
    fakePlugin('fa');
    fakePlugin('fbad', { error: { code: 999, msg: 'stuck' } });
    const net = new CniNetwork(list('fakenet', [{ type: 'fa' }, { type: 'fbad' }]), [bin]);
    await rejectsWith(net.del(rt, resultA), /^CNI network "fakenet": plugin "fbad" failed to DEL: stuck$/);
    assert.deepEqual(calls(), ['fbad DEL', 'fa DEL']);
  });

  it('starts the next plugin early, but it acts only once the one before it has exited, on its result', async () => {
    // Each plugin notes when it started (before reading its input), when it had its input, and when it exits.
    const timed = (name: string, result: unknown): void => {
      const script = [
        '#!/bin/sh',
        `date +%s%N > ${dir}/${name}-$CNI_COMMAND.started`,
        `cat > ${logDir}/${name}-$CNI_COMMAND.json`,
        `date +%s%N > ${dir}/${name}-$CNI_COMMAND.input`,
        `echo "${name} $CNI_COMMAND" >> ${logDir}/calls`,
        'sleep 0.3',
        `date +%s%N > ${dir}/${name}-$CNI_COMMAND.exit`,
        `[ "$CNI_COMMAND" = ADD ] && printf '%s' '${JSON.stringify(result)}'; exit 0`,
        '',
      ].join('\n');
      writeFileSync(join(bin, name), script);
      chmodSync(join(bin, name), 0o755);
    };
    timed('first', resultA);
    timed('second', resultB);
    const net = new CniNetwork(list('fakenet', [{ type: 'first' }, { type: 'second' }]), [bin]);
    const at = (f: string): bigint => BigInt(readFileSync(join(dir, f), 'utf8').trim());
    assert.deepEqual(await net.add(rt), resultB);
    assert.deepEqual(calls(), ['first ADD', 'second ADD']);
    assert.ok(at('second-ADD.started') < at('first-ADD.exit'), 'second was started while first worked');
    assert.ok(at('second-ADD.input') > at('first-ADD.exit'), 'second got its input after first exited');
    assert.deepEqual(stdinOf('second', 'ADD').prevResult, resultA);
    await net.del(rt, resultB);
    assert.deepEqual(calls().slice(2), ['second DEL', 'first DEL']);
    assert.ok(at('first-DEL.started') < at('second-DEL.exit'), 'DEL: first was started while second worked');
    assert.ok(at('first-DEL.input') > at('second-DEL.exit'), 'DEL: first got its input after second exited');
  });

  it('a failed ADD kills and reaps the plugin started for the next turn before rolling back', async () => {
    // `late` records its pid as soon as it runs (before its input): it is started, never run.
    writeFileSync(
      join(bin, 'late'),
      `#!/bin/sh\necho $$ >> ${dir}/late.pid\ncat > ${logDir}/late-$CNI_COMMAND.json\necho "late $CNI_COMMAND" >> ${logDir}/calls\nexit 0\n`,
    );
    chmodSync(join(bin, 'late'), 0o755);
    fakePlugin('fbad', { error: { cniVersion: '1.0.0', code: 11, msg: 'no luck' } });
    const net = new CniNetwork(list('fakenet', [{ type: 'fbad' }, { type: 'late' }]), [bin]);
    await rejectsWith(net.add(rt), /plugin "fbad" failed to ADD: no luck/);
    // late never got an ADD; the rollback ran DEL through the chain in reverse.
    assert.deepEqual(calls(), ['fbad ADD', 'late DEL', 'fbad DEL']);
    // Started twice (for the ADD it never got, and for the rollback's DEL): both gone.
    const pids = readFileSync(join(dir, 'late.pid'), 'utf8').trim().split('\n').map(Number);
    assert.equal(pids.length, 2);
    for (const pid of pids) assert.ok(!alive(pid), `pid ${pid} still alive`);
  });

  it('names the dirs searched for a missing plugin, and quotes stderr of a crash', async () => {
    const net = new CniNetwork(list('fakenet', [{ type: 'nope' }]), [bin, '/nonexistent']);
    await rejectsWith(net.add(rt), new RegExp(`plugin "nope" failed to ADD: no executable "nope" in the CNI plugin dirs ${bin}, /nonexistent`));
    fakePlugin('crash', { body: 'echo "panic: runtime error" >&2; exit 2' });
    await rejectsWith(
      new CniNetwork(list('fakenet', [{ type: 'crash' }]), [bin]).add(rt),
      /plugin "crash" failed to ADD: panic: runtime error \(exit code 2\)/,
    );
    fakePlugin('garbage', { body: 'echo not-json' });
    await rejectsWith(new CniNetwork(list('fakenet', [{ type: 'garbage' }]), [bin]).add(rt), /plugin "garbage" failed to ADD: the result is not JSON/);
    await rejectsWith(new CniNetwork(list('fakenet', [{ type: '../bin/sh' }]), [bin]).add(rt), /not a plain executable name/);
  });

  it('kills a plugin that outlives the timeout, with its children, in bounded time', async () => {
    fakePlugin('sleeper', { body: `echo $$ > ${dir}/pids; sleep 30 & echo $! >> ${dir}/pids; wait` });
    const net = new CniNetwork(list('fakenet', [{ type: 'sleeper' }]), [bin], { timeoutMs: 500 });
    const t0 = Date.now();
    const err = await rejectsWith(net.del(rt, undefined), /plugin "sleeper" failed to DEL: timed out after 500 ms; the plugin was killed/);
    const elapsed = Date.now() - t0;
    assert.ok(isKind(err, 'DeadlineExceeded'));
    assert.ok(elapsed >= 450 && elapsed < 2500, `took ${elapsed} ms`);
    const pids = readFileSync(join(dir, 'pids'), 'utf8').trim().split('\n').map(Number);
    assert.equal(pids.length, 2);
    // Killed, they are gone within a second (the plugin and its child).
    await until(async () => (pids.some(alive) ? undefined : true), 1000);
  });

  it('kills the plugin on abort, and a failed ADD still rolls back although the signal is aborted', async () => {
    fakePlugin('sleeper', { body: `[ "$CNI_COMMAND" = ADD ] && exec sleep 30; exit 0` });
    const net = new CniNetwork(list('fakenet', [{ type: 'sleeper' }]), [bin]);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 200);
    const t0 = Date.now();
    const err = await rejectsWith(net.add(rt, ac.signal), /plugin "sleeper" failed to ADD: cancelled; the plugin was killed$/);
    assert.ok(isKind(err, 'Cancelled'));
    assert.ok(Date.now() - t0 < 2000);
    assert.deepEqual(calls(), ['sleeper ADD', 'sleeper DEL']);
    await rejectsWith(net.del(rt, undefined, ac.signal), /cancelled before the plugin started/);
  });

  it('does not wait on what a finished plugin left holding its stdout', async () => {
    fakePlugin('leaver', { body: `sleep 30 & echo $! > ${dir}/pids; [ "$CNI_COMMAND" = ADD ] && printf '%s' '${JSON.stringify(resultA)}'; exit 0` });
    const t0 = Date.now();
    assert.deepEqual(await new CniNetwork(list('fakenet', [{ type: 'leaver' }]), [bin]).add(rt), resultA);
    assert.ok(Date.now() - t0 < 2500);
    const pid = Number(readFileSync(join(dir, 'pids'), 'utf8'));
    await until(async () => (alive(pid) ? undefined : true), 1000);
  });

  it('caps what a plugin prints', async () => {
    fakePlugin('chatty', { body: 'yes xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' });
    const net = new CniNetwork(list('fakenet', [{ type: 'chatty' }]), [bin]);
    await rejectsWith(net.del(rt, undefined), /plugin "chatty" failed to DEL: printed more than 1048576 bytes on stdout/);
  });
});
