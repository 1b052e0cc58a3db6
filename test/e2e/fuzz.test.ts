/**
 * A fuzz test of the gRPC surface. Every RPC of RuntimeService and ImageService, listed
 * from the proto's own descriptors (a new RPC is covered without a change here), gets
 * randomised requests from a seeded generator (test/helpers/fuzz.ts): entirely random
 * messages, valid requests mutated in a few places, and raw bytes that are no valid
 * protobuf (sent through a grpc-js client with identity serializers).
 *
 * The seed is printed; BERTH_FUZZ_SEED=<seed> replays a run, BERTH_FUZZ_SEED=random picks a
 * new one (the suite's own run uses a fixed seed, DEFAULT_FUZZ_SEED). BERTH_FUZZ_SECONDS (default
 * 60) and BERTH_FUZZ_ITERATIONS (default unbounded) bound it.
 *
 * Asserted: berthd never crashes (same pid, answers Version at the end); every answer is
 * a proper status (never UNKNOWN or INTERNAL); after the objects the fuzz made are removed
 * through the API, nothing is left: no process, mount, netns pin, cgroup or file beyond the
 * known layout, and no uncaught exception in berthd's log.
 *
 * Safety: berthd runs in a network namespace of its own (nothing leaves it; see
 * IN_NEW_NETNS), after a first berthd on the same dirs pulled the one test image from the
 * suite's registry on 127.0.0.1. Host paths the requests name (mounts, the log directory,
 * the cgroup parent) are moved under dirs this test owns; commands are harmless ones;
 * sysctls that exist on the host get the host's own value.
 */
import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { type Dirent, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import protobuf from 'protobufjs';
import { buildImage, buildLayer, busyboxEntries, DEFAULT_PATH, RegistryPusher } from '../../hack/test-images/oci.js';
import { MAX_MESSAGE_BYTES } from '../../src/cri/server.js';
import { criRoot } from '../../src/cri/proto.js';
import { Berthd, IN_NEW_NETNS } from '../helpers/berthd.js';
import { grpcError } from '../helpers/cri-client.js';
import { encode, fuzzSeed, garbage, MessageGenerator, Rng } from '../helpers/fuzz.js';
import { startRegistry, type Registry } from '../helpers/registry.js';

const SECONDS = Number(process.env['BERTH_FUZZ_SECONDS'] ?? 60);
/** BERTH_FUZZ_VERBOSE=1 prints every answer. */
const VERBOSE = process.env['BERTH_FUZZ_VERBOSE'] === '1';
const ITERATIONS = Number(process.env['BERTH_FUZZ_ITERATIONS'] ?? Infinity);

/** Statuses a bad or unlucky request may get. UNKNOWN and INTERNAL never. */
const PROPER = new Set([
  grpc.status.OK,
  grpc.status.INVALID_ARGUMENT,
  grpc.status.NOT_FOUND,
  grpc.status.ALREADY_EXISTS,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.OUT_OF_RANGE,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.UNIMPLEMENTED,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.CANCELLED,
]);
/** A pull also meets registries that are unreachable (none is reachable here) or refuse it. */
const PROPER_FOR: Record<string, grpc.status[]> = {
  PullImage: [grpc.status.UNAVAILABLE, grpc.status.PERMISSION_DENIED, grpc.status.UNAUTHENTICATED],
};

/** The RPCs that make, change and remove objects: asked for more often, to have objects to name. */
const LIFECYCLE = [
  'RunPodSandbox',
  'CreateContainer',
  'CreateContainer',
  'CreateContainer',
  'StartContainer',
  'StopContainer',
  'RemoveContainer',
  'StopPodSandbox',
  'RemovePodSandbox',
  'ExecSync',
  'UpdateContainerResources',
  'ContainerStatus',
  'PodSandboxStatus',
];

interface Rpc {
  service: string;
  name: string;
  path: string;
  request: protobuf.Type;
  response: protobuf.Type;
  streaming: boolean;
}

/** Every RPC of both services, from the proto. */
function rpcs(root: protobuf.Root): Rpc[] {
  return ['RuntimeService', 'ImageService'].flatMap((service) =>
    root.lookupService(`runtime.v1.${service}`).methodsArray.map((m) => {
      m.resolve();
      return {
        service,
        name: m.name,
        path: `/runtime.v1.${service}/${m.name}`,
        request: m.resolvedRequestType!,
        response: m.resolvedResponseType!,
        streaming: Boolean(m.responseStream),
      };
    }),
  );
}

interface Answer {
  code: grpc.status;
  details: string;
  response?: Buffer;
}

const identity = (b: Buffer): Buffer => b;

function callUnary(client: grpc.Client, path: string, bytes: Buffer, deadlineMs: number): Promise<Answer> {
  return new Promise((resolve) => {
    client.makeUnaryRequest(path, identity, identity, bytes, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (err, res) => {
      if (err) resolve({ code: err.code, details: err.details });
      else resolve({ code: grpc.status.OK, details: '', response: res });
    });
  });
}

/** A server-streaming call: read for `ms`, then cancel; the status it ended with. */
function callStream(client: grpc.Client, path: string, bytes: Buffer, ms: number): Promise<Answer> {
  return new Promise((resolve) => {
    const call = client.makeServerStreamRequest(path, identity, identity, bytes, new grpc.Metadata(), { deadline: Date.now() + 10_000 });
    let first: Buffer | undefined;
    call.on('data', (d: Buffer) => (first ??= d));
    call.on('error', () => undefined);
    const timer = setTimeout(() => call.cancel(), ms);
    call.on('status', (s: grpc.StatusObject) => {
      clearTimeout(timer);
      resolve({ code: s.code, details: s.details, ...(first ? { response: first } : {}) });
    });
  });
}

/** A request for a failure message: long strings, arrays and buffers cut short. */
function describe_(obj: unknown): string {
  const text = JSON.stringify(obj, (_k, v: unknown) => {
    if (typeof v === 'string' && v.length > 120) return `${v.slice(0, 120)}…(${v.length} chars)`;
    if (Array.isArray(v) && v.length > 8) return [...v.slice(0, 8), `…(${v.length} items)`];
    if (v !== null && typeof v === 'object' && (v as { type?: string }).type === 'Buffer') {
      const data = (v as { data: number[] }).data;
      return `<bytes ${Buffer.from(data.slice(0, 64)).toString('hex')}${data.length > 64 ? `…(${data.length} bytes)` : ''}>`;
    }
    if (v !== null && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length > 32) {
      const e = Object.entries(v as Record<string, unknown>);
      return Object.fromEntries([...e.slice(0, 32), ['…', `(${e.length} keys)`]]);
    }
    return v;
  });
  return text.length > 4000 ? `${text.slice(0, 4000)}…` : text;
}

/** cgroup hierarchies of this host (v1 controllers and the v2 mount). */
function cgroupRoots(): string[] {
  const roots: string[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [pre, post] = line.split(' - ');
    if (post?.startsWith('cgroup')) roots.push(pre!.split(' ')[4]!);
  }
  return roots;
}

/** Removes every container and pod, and unless told otherwise every image, through the API (not fuzzed). */
async function removeAll(b: Berthd, opts: { images: boolean } = { images: true }): Promise<void> {
  for (const x of (await b.runtime.ListContainers({})).containers) {
    await b.runtime.StopContainer({ container_id: x.id, timeout: '0' });
    await b.runtime.RemoveContainer({ container_id: x.id });
  }
  for (const x of (await b.runtime.ListPodSandbox({})).items) {
    await b.runtime.StopPodSandbox({ pod_sandbox_id: x.id });
    await b.runtime.RemovePodSandbox({ pod_sandbox_id: x.id });
  }
  if (opts.images) for (const x of (await b.image.ListImages({})).images) await b.image.RemoveImage({ image: { image: x.id } });
}

describe('fuzz: every RPC of the gRPC surface', function () {
  this.timeout((SECONDS + 240) * 1000);
  const seed = fuzzSeed();
  const tag = `berth-fuzz-${seed.toString(16)}`;
  const root = criRoot();
  const all = rpcs(root);
  let registry: Registry | undefined;
  let b: Berthd | undefined;
  let work: string;
  let image: { ref: string; id: string; digestRef: string };

  before(async function () {
    this.timeout(180_000);
    console.log(`      fuzz seed ${seed} (replay: BERTH_FUZZ_SEED=${seed}), ${SECONDS} s, ${all.length} RPCs`);
    work = mkdtempSync(join(tmpdir(), 'berth-fuzz-'));
    registry = await startRegistry();
    const built = buildImage({ layers: [await buildLayer(busyboxEntries(), 'gzip')], config: { Env: [`PATH=${DEFAULT_PATH}`], Cmd: ['sh'] } });
    const pusher = new RegistryPusher(registry.host);
    await pusher.pushImage('fuzz/busybox', built, ['latest']);
    pusher.close();
    const ref = `${registry.host}/fuzz/busybox:latest`;
    // The one pull that needs the network happens before the fuzzed berthd, on the same dirs.
    const first = await Berthd.start();
    const pulled = await first.image.PullImage({ image: { image: ref } });
    const st = await first.image.ImageStatus({ image: { image: ref } });
    image = { ref, id: pulled.image_ref, digestRef: st.image?.repo_digests[0] ?? ref };
    await first.dispose({ keepDir: true });
    await registry.stop();
    registry = undefined;
    b = await Berthd.start({ reuse: { dir: first.dir }, wrap: IN_NEW_NETNS, logLevel: 'info' });
    // A real pod network inside berthd's own network namespace (it goes away with it).
    writeFileSync(
      join(b.dir, 'cni', '10-fuzz.conflist'),
      JSON.stringify({
        cniVersion: '1.0.0',
        name: 'fuzz',
        plugins: [
          {
            type: 'bridge',
            bridge: 'fuzz0',
            isGateway: true,
            ipam: { type: 'host-local', dataDir: join(work, 'ipam'), ranges: [[{ subnet: '10.77.0.0/24' }]] },
          },
        ],
      }),
    );
  });

  after(async () => {
    // After a failure: what the fuzz made goes, so that the dirs can.
    if (b && b.proc.exitCode === null) await removeAll(b).catch((e: unknown) => console.log(String(e)));
    await b?.dispose().catch((e: unknown) => console.log(String(e)));
    await registry?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it("regressions it found: a container's log file stays inside its pod's log directory (absolute and makeable); paths are bounded", async () => {
    const berthd = b!;
    const logs = join(work, 'regress');
    mkdirSync(logs, { recursive: true });
    writeFileSync(join(logs, 'a-file'), '');
    const pod = async (name: string, log_directory: string): Promise<string> =>
      (
        await berthd.runtime.RunPodSandbox({
          config: {
            metadata: { name, namespace: 'fuzz', uid: name, attempt: 0 },
            log_directory,
            linux: { security_context: { namespace_options: { network: 'NODE' } } },
          },
        })
      ).pod_sandbox_id;
    const create = (pod_sandbox_id: string, log_path: string): Promise<unknown> =>
      berthd.runtime.CreateContainer({
        pod_sandbox_id,
        config: { metadata: { name: 'c', attempt: 0 }, image: { image: image.ref }, command: ['true'], log_path },
      });
    try {
      let e = await grpcError(pod('rel', 'relative/logs'));
      assert.equal(e.code, grpc.status.INVALID_ARGUMENT, e.details);
      assert.match(e.details, /config\.log_directory "relative\/logs" is not an absolute path/);
      // A file where the log directory should be.
      const onFile = await pod('on-file', join(logs, 'a-file'));
      e = await grpcError(create(onFile, 'c.log'));
      assert.equal(e.code, grpc.status.FAILED_PRECONDITION, e.details);
      assert.match(e.details, /cannot make the directory of the log file/);
      const ok = await pod('ok', join(logs, 'pod'));
      for (const p of ['../escaped.log', 'a/../../escaped.log', '.']) {
        e = await grpcError(create(ok, p));
        assert.equal(e.code, grpc.status.INVALID_ARGUMENT, `${p}: ${e.details}`);
        assert.match(e.details, /config\.log_path .* inside the pod's log_directory/);
      }
      assert.ok(!existsSync(join(logs, 'escaped.log')));
      // A working dir of megabytes made runc 1.1's create hang (and the create end INTERNAL after a minute).
      const cases: Array<[string, Record<string, unknown>]> = [
        ['config.working_dir', { working_dir: '/' + '\u{1f600}'.repeat(1 << 20) }],
        ['config.mounts[0].container_path', { mounts: [{ container_path: '/' + 'a'.repeat(5000), host_path: logs }] }],
      ];
      for (const [field, over] of cases) {
        e = await grpcError(
          berthd.runtime.CreateContainer(
            { pod_sandbox_id: ok, config: { metadata: { name: 'w', attempt: 0 }, image: { image: image.ref }, command: ['true'], ...over } },
            { deadline: Date.now() + 20_000 },
          ),
        );
        assert.equal(e.code, grpc.status.INVALID_ARGUMENT, e.details);
        assert.match(e.details, new RegExp(`^${field.replace(/[[\].]/g, '\\$&')} is \\d+ characters long; the limit is 4095$`));
      }
      assert.deepEqual((await berthd.runtime.ListContainers({})).containers, []);
    } finally {
      await removeAll(berthd, { images: false });
    }
  });

  it('answers every request with a proper status, never crashes, and leaves nothing behind', async function () {
    const berthd = b!;
    const pid = berthd.proc.pid;
    const rng = new Rng(seed);
    const pods = new Set<string>();
    const containers = new Set<string>();
    /** Every pod and container id the fuzz ever made, for the cgroup check. */
    const made = new Set<string>();
    const ids = new Set<string>([image.ref, image.id, image.digestRef, 'fuzz/busybox']);
    const gen = new MessageGenerator({ rng, ids: { all: () => [...ids] } });
    const client = new grpc.Client(`unix://${berthd.socket}`, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
      'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
    });
    const logRoot = join(work, 'logs');
    const hostRoot = join(work, 'host');
    mkdirSync(logRoot, { recursive: true });
    mkdirSync(join(hostRoot, 'dir'), { recursive: true });
    writeFileSync(join(hostRoot, 'file'), 'fuzz\n');
    const byName = new Map(all.map((r) => [r.name, r]));
    const failures: string[] = [];
    const counts = new Map<string, Record<string, number>>();
    let n = 0;

    /** Pods that are ready, containers created and running, as last seen. */
    const ready = new Set<string>();
    const created = new Set<string>();
    const running = new Set<string>();
    // The same number of draws whatever the sets hold, so that a replay stays in step with
    // the run as far as it can (what exists at a moment depends on timing, too).
    const otherIds = new MessageGenerator({ rng: new Rng(seed ^ 0x5bd1e995), ids: { all: () => [...ids] } });
    const pickId = (...sets: Array<Set<string>>): string => {
      const set = sets.find((x) => x.size > 0);
      const known = rng.chance(0.85);
      const i = rng.next();
      return set && known ? [...set][i % set.size]! : otherIds.string('id');
    };

    /** Keeps a host path the request names inside this test's own dir, odd characters and all. */
    const confine = (p: unknown, base: string): string => {
      if (typeof p !== 'string' || p === '') return '';
      if (rng.chance(0.3)) return rng.pick([join(hostRoot, 'dir'), join(hostRoot, 'file'), join(hostRoot, 'missing')]);
      if (p === base || p.startsWith(`${base}/`)) return p;
      const inside = resolve(base, p.replace(/^\/+/, ''));
      return relative(base, inside).startsWith('..') ? base : inside;
    };
    const SAFE_COMMANDS = [['sleep', '3600'], ['true'], ['/nonexistent/bin'], ['sleep'], ['cat']];
    const safeCommand = (): string[] => (rng.chance(0.6) ? SAFE_COMMANDS[0]! : rng.pick(SAFE_COMMANDS));
    const isSafe = (cmd: unknown): boolean => SAFE_COMMANDS.some((c) => JSON.stringify(c) === JSON.stringify(cmd));
    const hostSysctl = (key: string): string | undefined => {
      if (key.includes('\0') || key.includes('..')) return undefined;
      const file = `/proc/sys/${key.replace(/\./g, '/')}`;
      try {
        return readFileSync(file, 'utf8').trim();
      } catch {
        return undefined;
      }
    };

    /** Makes a request harmless to the host, whatever else it holds (see the file's comment). */
    const sanitize = (type: protobuf.Type, obj: Record<string, unknown>): void => {
      switch (type.name) {
        case 'Mount':
          if ('host_path' in obj) obj['host_path'] = confine(obj['host_path'], hostRoot);
          break;
        case 'Device':
          if ('host_path' in obj)
            obj['host_path'] = rng.pick(['/dev/null', '/dev/zero', '/dev/fuse', '/dev/berth-fuzz-missing', join(hostRoot, 'file'), 'relative', '']);
          break;
        case 'PodSandboxConfig':
          if ('log_directory' in obj) obj['log_directory'] = confine(obj['log_directory'], logRoot);
          break;
        case 'LinuxPodSandboxConfig': {
          const cg = obj['cgroup_parent'];
          if (typeof cg === 'string' && cg.startsWith('/')) obj['cgroup_parent'] = `/${tag}/${cg.replace(/\.\./g, '_').replace(/^\/+/, '')}`;
          const sysctls = obj['sysctls'] as Record<string, string> | undefined;
          for (const k of Object.keys(sysctls ?? {})) {
            const v = hostSysctl(k);
            if (v !== undefined) sysctls![k] = v;
          }
          break;
        }
        case 'ContainerConfig': {
          if (!isSafe(obj['command'])) obj['command'] = safeCommand();
          // The log file stays under the pod's log directory, which is under this test's dir.
          if (typeof obj['log_path'] === 'string') obj['log_path'] = (obj['log_path'] as string).replace(/\.\./g, '_');
          break;
        }
        case 'ExecSyncRequest':
        case 'ExecRequest':
          obj['cmd'] = safeCommand().map((a) => (a === 'sleep' ? 'true' : a));
          break;
        case 'LinuxContainerResources': {
          const u = obj['unified'] as Record<string, string> | undefined;
          for (const k of Object.keys(u ?? {})) if (k.includes('/') || k.includes('..')) delete u![k];
          break;
        }
        case 'RemoveImageRequest': {
          // The one image stays until the end (nothing can pull it again in here).
          const spec = obj['image'] as Record<string, unknown> | undefined;
          const name = spec?.['image'];
          const protect = rng.chance(0.97);
          if (typeof name === 'string' && [image.ref, image.id, image.digestRef].some((s) => s.startsWith(name)) && protect) spec!['image'] = `${name}-not`;
          break;
        }
      }
      for (const f of type.fieldsArray) {
        const t = f.resolvedType;
        const v = obj[f.name];
        if (!(t instanceof protobuf.Type) || v === undefined || f.map) continue;
        for (const x of f.repeated && Array.isArray(v) ? v : [v]) if (x !== null && typeof x === 'object') sanitize(t, x as Record<string, unknown>);
      }
    };

    /** A valid request for the RPCs that make or name objects, the base for mutations. */
    const template = (name: string): Record<string, unknown> | undefined => {
      const pod = (): string => pickId(ready, pods);
      const ctr = (): string => pickId(name === 'StartContainer' ? created : /^(Exec|Attach|Update|Stop)/.test(name) ? running : containers, containers);
      switch (name) {
        case 'RunPodSandbox':
          return {
            config: {
              metadata: { name: `fz${n}`, namespace: 'fuzz', uid: `uid-${n}`, attempt: 0 },
              hostname: `fz${n}`,
              log_directory: join(logRoot, `pod${n}`),
              linux: { security_context: { namespace_options: { network: rng.pick(['NODE', 'POD']), pid: rng.pick(['POD', 'CONTAINER']) } } },
              labels: { fuzz: '1' },
            },
          };
        case 'CreateContainer':
          return {
            pod_sandbox_id: pod(),
            config: {
              metadata: { name: `c${n}`, attempt: 0 },
              image: { image: image.ref },
              command: ['sleep', '3600'],
              args: [],
              working_dir: '/tmp',
              envs: [{ key: 'A', value: Buffer.from('b') }],
              mounts: [{ container_path: '/mnt/host', host_path: join(hostRoot, 'dir'), readonly: true }],
              devices: [{ container_path: '/dev/fz', host_path: '/dev/null', permissions: 'rw' }],
              labels: { fuzz: '1' },
              annotations: { a: 'b' },
              log_path: `c${n}.log`,
              linux: {
                resources: { cpu_shares: '2', memory_limit_in_bytes: String(256 << 20), pids_limit: '64' },
                security_context: { run_as_user: { value: '1000' }, capabilities: { drop_capabilities: ['NET_RAW'] }, no_new_privs: true },
              },
            },
          };
        case 'StartContainer':
        case 'RemoveContainer':
        case 'ContainerStatus':
        case 'ContainerStats':
        case 'ReopenContainerLog':
        case 'Attach':
          return { container_id: ctr(), stdout: true };
        case 'StopContainer':
          return { container_id: ctr(), timeout: 0 };
        case 'ExecSync':
          return { container_id: ctr(), cmd: ['true'], timeout: 2 };
        case 'Exec':
          return { container_id: ctr(), cmd: ['true'], stdout: true };
        case 'UpdateContainerResources':
          return { container_id: ctr(), linux: { cpu_shares: 512, memory_limit_in_bytes: String(64 << 20) } };
        case 'StopPodSandbox':
        case 'RemovePodSandbox':
        case 'PodSandboxStatus':
        case 'PodSandboxStats':
          return { pod_sandbox_id: pod(), verbose: true };
        case 'PortForward':
          return { pod_sandbox_id: pod(), port: [80] };
        case 'UpdatePodSandboxResources':
          return { pod_sandbox_id: pod(), resources: { cpu_shares: 256 } };
        case 'ListContainers':
          return { filter: { pod_sandbox_id: pod() } };
        case 'PullImage':
          return { image: { image: rng.pick([image.digestRef, 'registry.invalid/x:y', '127.0.0.1:1/x:y']) } };
        case 'ImageStatus':
          return { image: { image: rng.pick([image.ref, image.id]) }, verbose: true };
        case 'RemoveImage':
          return { image: { image: gen.string('image') } };
        default:
          return undefined;
      }
    };

    const deadlineFor = (name: string): number =>
      /^(Stop|Remove|RunPodSandbox|CreateContainer|ExecSync)/.test(name) ? 8000 : name === 'PullImage' ? 2000 : 4000;

    /** Learns the ids of what exists from the list RPCs (not fuzzed). */
    const refresh = async (): Promise<void> => {
      const p = await berthd.runtime.ListPodSandbox({});
      const c = await berthd.runtime.ListContainers({});
      for (const s of [pods, containers, ready, created, running]) s.clear();
      for (const x of p.items) {
        pods.add(x.id);
        if (x.state === 'SANDBOX_READY') ready.add(x.id);
      }
      for (const x of c.containers) {
        containers.add(x.id);
        if (x.state === 'CONTAINER_CREATED') created.add(x.id);
        if (x.state === 'CONTAINER_RUNNING') running.add(x.id);
      }
      for (const id of [...pods, ...containers]) ids.add(id);
      while (ids.size > 400) ids.delete(ids.values().next().value!);
    };

    const end = Date.now() + SECONDS * 1000;
    let exited = false;
    berthd.proc.once('exit', () => (exited = true));
    while (Date.now() < end && n < ITERATIONS && !exited) {
      n++;
      if (n % 6 === 0) await refresh();
      let rpc = rng.chance(0.4) ? byName.get(rng.pick(LIFECYCLE))! : rng.pick(all);
      // Keep the number of live objects bounded: past a limit, creation turns into removal.
      if (rpc.name === 'RunPodSandbox' && pods.size >= 8) rpc = byName.get('RemovePodSandbox')!;
      if (rpc.name === 'CreateContainer' && containers.size >= 16) rpc = byName.get('RemoveContainer')!;
      const base = template(rpc.name);
      const mode = rng.weighted([
        [35, 'random'],
        [base ? 30 : 0, 'mutated'],
        [base ? 20 : 0, 'valid'],
        [15, 'garbage'],
      ] as const);
      let obj: Record<string, unknown> | undefined;
      let bytes: Buffer;
      if (mode === 'garbage') {
        let valid: Buffer;
        try {
          valid = encode(rpc.request, base ?? gen.message(rpc.request));
        } catch {
          valid = Buffer.alloc(0);
        }
        bytes = garbage(rng, valid, rpc.request);
      } else {
        obj = mode === 'random' ? gen.message(rpc.request) : mode === 'mutated' ? gen.mutate(rpc.request, base!) : base!;
        sanitize(rpc.request, obj);
        try {
          bytes = encode(rpc.request, obj);
        } catch {
          bytes = garbage(rng, Buffer.alloc(0), rpc.request);
          obj = undefined;
        }
      }
      if (VERBOSE && process.env['BERTH_FUZZ_DUMP'] === String(n)) console.log(`      #${n} request: ${obj ? describe_(obj) : bytes.toString('hex')}`);
      const t0 = Date.now();
      const answer = rpc.streaming ? await callStream(client, rpc.path, bytes, 300) : await callUnary(client, rpc.path, bytes, deadlineFor(rpc.name));
      const c = counts.get(rpc.name) ?? {};
      const codeName = grpc.status[answer.code] ?? String(answer.code);
      c[codeName] = (c[codeName] ?? 0) + 1;
      counts.set(rpc.name, c);
      if (VERBOSE) console.log(`      #${n} ${rpc.name} (${mode}) ${Date.now() - t0} ms ${codeName} ${answer.details.slice(0, 300)}`);
      if (!PROPER.has(answer.code) && !PROPER_FOR[rpc.name]?.includes(answer.code)) {
        failures.push(
          `#${n} ${rpc.name} (${mode}) answered ${codeName}: ${answer.details}\n    request: ${
            obj ? describe_(obj) : `<bytes ${bytes.subarray(0, 200).toString('hex')}${bytes.length > 200 ? `…(${bytes.length} bytes)` : ''}>`
          }`,
        );
      }
      // A request that outlived its deadline may have wedged berthd: it must still answer.
      if (answer.code === grpc.status.DEADLINE_EXCEEDED) {
        const alive = await callUnary(client, byName.get('Version')!.path, Buffer.alloc(0), 5000);
        if (alive.code !== grpc.status.OK) {
          failures.push(
            `#${n} ${rpc.name} (${mode}) left berthd unable to answer Version (${alive.details})\n    request: ${obj ? describe_(obj) : bytes.toString('hex')}`,
          );
          break;
        }
      }
      if (answer.code === grpc.status.OK && answer.response && !rpc.streaming) {
        const res = rpc.response.toObject(rpc.response.decode(answer.response)) as Record<string, unknown>;
        if (rpc.name === 'RunPodSandbox') for (const s of [pods, ready]) s.add(res['pod_sandbox_id'] as string);
        if (rpc.name === 'CreateContainer') for (const s of [containers, created]) s.add(res['container_id'] as string);
        for (const k of ['pod_sandbox_id', 'container_id']) if (typeof res[k] === 'string' && /^(Run|Create)/.test(rpc.name)) made.add(res[k] as string);
        for (const k of ['pod_sandbox_id', 'container_id', 'image_ref']) if (typeof res[k] === 'string') ids.add(res[k]);
      }
    }
    client.close();
    console.log(`      ${n} requests; by RPC and status:`);
    for (const r of all) console.log(`        ${r.name}: ${JSON.stringify(counts.get(r.name) ?? {})}`);
    const where = `seed ${seed} (BERTH_FUZZ_SEED=${seed})`;

    // berthd is the same process and still answers.
    assert.ok(!exited && berthd.proc.exitCode === null, `berthd exited after request #${n}, ${where}:\n${berthd.logs().slice(-4000)}`);
    assert.equal(berthd.proc.pid, pid);
    await berthd.runtime.Version({}, { deadline: Date.now() + 5000 }).catch((err: unknown) => {
      throw new Error(`berthd does not answer Version after request #${n}, ${where}: ${String(err)}\n${berthd.logs().slice(-3000)}`);
    });
    const unused = all.filter((r) => !counts.has(r.name)).map((r) => r.name);
    assert.ok(n < all.length * 4 || unused.length === 0, `RPCs never called: ${unused.join(', ')}`);
    assert.deepEqual(failures, [], `improper statuses, ${where}:\n${failures.join('\n')}`);

    // Remove what the fuzz made, through the API; then nothing may be left.
    await removeAll(berthd);
    assert.deepEqual((await berthd.runtime.ListContainers({})).containers, []);
    assert.deepEqual((await berthd.runtime.ListPodSandbox({})).items, []);

    const logs = berthd.logs();
    const bad = logs.split('\n').filter((l) => /uncaught|unhandled|rpc internal error|FATAL|^\s+at /i.test(l));
    assert.deepEqual(bad.slice(0, 20), [], `berthd logged uncaught errors, ${where}`);
    b = undefined;
    await berthd.dispose();

    // cgroups: none of the fuzz's containers or pods (berth-<id>, under the root or the
    // parents it named); the parents themselves are kubelet's to remove, so this test's.
    const left: string[] = [];
    const ours = (d: string): boolean => {
      const m = /(?:^|\/)berth-([0-9a-f]+)$/.exec(d);
      return m !== null && made.has(m[1]!);
    };
    for (const r of cgroupRoots()) {
      for (const d of readdirSync(r)) if (ours(d)) left.push(join(r, d));
      const parent = join(r, tag);
      if (!existsSync(parent)) continue;
      const dirs = (readdirSync(parent, { recursive: true, withFileTypes: true }) as Dirent[])
        .filter((d) => d.isDirectory())
        .map((d) => join(d.parentPath, d.name));
      left.push(...dirs.filter(ours));
      for (const d of [...dirs, parent].sort((x, y) => y.length - x.length)) {
        try {
          rmdirSync(d);
        } catch (err) {
          left.push(`${d}: ${String(err)}`);
        }
      }
    }
    assert.deepEqual(left, [], `cgroups left behind, ${where}`);
  });
});
