/**
 * Exec, Attach and PortForward over WebSocket against a running berthd, with a client
 * written here on the `ws` package (crictl 1.29 has no WebSocket transport): every
 * remote-command subprotocol (binary and base64, v5's close signal), a terminal and its
 * resize, stdin, stderr apart, exit codes, attach, and port-forward to a server on the
 * pod's own loopback.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { Berthd, until } from '../helpers/berthd.js';
import { runCleanup, type CleanupStep } from '../helpers/cleanup.js';
import { useFixtureRegistry } from '../helpers/fixtures.js';
import { testBridge } from '../helpers/network.js';

/** A client session: messages decoded per channel, as the subprotocol frames them. */
class Client {
  readonly ws: WebSocket;
  readonly messages: Array<{ channel: number; data: Buffer }> = [];
  readonly closed: Promise<number>;
  readonly opened: Promise<void>;
  private readonly base64: boolean;

  constructor(url: string, protocol: string | undefined) {
    this.base64 = protocol?.includes('base64') ?? false;
    this.ws = new WebSocket(url.replace(/^http/, 'ws'), protocol ? [protocol] : []);
    this.ws.on('message', (d: Buffer, isBinary: boolean) => {
      assert.equal(isBinary, !this.base64, 'base64 protocols send text, the others binary');
      if (this.base64) this.messages.push({ channel: d[0]! - 0x30, data: Buffer.from(d.subarray(1).toString(), 'base64') });
      else this.messages.push({ channel: d[0]!, data: d.subarray(1) });
    });
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', () => resolve());
      this.ws.once('error', reject);
    });
    this.closed = new Promise((resolve) => this.ws.once('close', (code: number) => resolve(code)));
  }

  send(channel: number, data: string | Buffer): void {
    const b = Buffer.from(data);
    this.ws.send(this.base64 ? String.fromCharCode(0x30 + channel) + b.toString('base64') : Buffer.concat([Buffer.of(channel), b]));
  }

  text(channel: number): string {
    return Buffer.concat(this.messages.filter((m) => m.channel === channel).map((m) => m.data)).toString();
  }

  async waitFor(channel: number, re: RegExp, ms = 15_000): Promise<string> {
    return until(async () => (re.test(this.text(channel)) ? this.text(channel) : undefined), ms);
  }
}

/** Resident memory of a process, in MiB. */
function rssMiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;
}

const PROTOCOLS = [
  'v5.channel.k8s.io',
  'v4.channel.k8s.io',
  'v4.base64.channel.k8s.io',
  'v3.channel.k8s.io',
  'v2.channel.k8s.io',
  'channel.k8s.io',
  'base64.channel.k8s.io',
];

/** An HTTP upgrade request answered without an upgrade: its status and body. */
function refused(url: string, headers: Record<string, string>): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, {
      headers: { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==', ...headers },
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      reject(new Error(`upgraded (${res.statusCode})`));
    });
    req.on('response', (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('streaming over WebSocket', function () {
  this.timeout(60_000);
  const reg = useFixtureRegistry();
  const cleanup: CleanupStep[] = [];
  let b: Berthd;
  let pod: string;
  let podCfg: Record<string, unknown>;
  let id: string;

  before(async () => {
    b = await Berthd.start({});
    cleanup.push(() => b.dispose());
    const net = testBridge(b, 'bw');
    cleanup.push(net.remove);
    const logDir = mkdtempSync(join(tmpdir(), 'berth-logs-'));
    cleanup.push(() => rmSync(logDir, { recursive: true, force: true }));
    await b.image.PullImage({ image: { image: reg.fx.busybox.ref } });
    podCfg = { metadata: { name: `w${net.tag}`, namespace: 'test', uid: `u${net.tag}`, attempt: 0 }, log_directory: logDir };
    ({ pod_sandbox_id: pod } = await b.runtime.RunPodSandbox({ config: podCfg }));
    cleanup.push(async () => {
      await b.runtime.RemovePodSandbox({ pod_sandbox_id: pod }).catch(() => undefined);
    });
    id = await container('c', ['sleep', '1000']);
  });
  after(() => runCleanup(cleanup));

  async function container(name: string, command: string[], extra: Record<string, unknown> = {}): Promise<string> {
    const { container_id } = await b.runtime.CreateContainer({
      pod_sandbox_id: pod,
      config: { metadata: { name, attempt: 0 }, image: { image: reg.fx.busybox.ref }, command, log_path: `${name}.log`, ...extra },
      sandbox_config: podCfg,
    });
    await b.runtime.StartContainer({ container_id });
    return container_id;
  }

  const exec = async (cmd: string[], o: { tty?: boolean; stdin?: boolean; stderr?: boolean } = {}): Promise<string> =>
    (await b.runtime.Exec({ container_id: id, cmd, stdout: true, stdin: o.stdin ?? false, stderr: o.stderr ?? !o.tty, tty: o.tty ?? false })).url;

  /** The exit code the error channel reports, in the protocol's own form. */
  function exitCodeOf(c: Client, protocol: string): number {
    const report = c.text(3);
    if (protocol.startsWith('v4.') || protocol.startsWith('v5.')) {
      const st = JSON.parse(report) as { status: string; reason?: string; details?: { causes?: Array<{ reason: string; message: string }> } };
      if (st.status === 'Success') return 0;
      assert.equal(st.reason, 'NonZeroExitCode');
      return Number(st.details!.causes!.find((x) => x.reason === 'ExitCode')!.message);
    }
    if (report === '') return 0;
    const m = /exit status (\d+)/.exec(report);
    assert.ok(m, `an exit report: ${report}`);
    return Number(m[1]);
  }

  for (const protocol of PROTOCOLS) {
    it(`exec over ${protocol}: stdin, stdout and stderr apart, the exit code`, async () => {
      const v5 = protocol.startsWith('v5.');
      // Before v5 a client cannot end stdin: the command reads one line.
      const script = v5 ? 'cat; echo err >&2; exit 3' : 'read x; echo "$x"; echo err >&2; exit 3';
      const c = new Client(await exec(['sh', '-c', script], { stdin: true }), protocol);
      await c.opened;
      assert.equal(c.ws.protocol, protocol);
      c.send(0, 'hello\n');
      if (v5) c.send(255, Buffer.of(0));
      assert.equal(await c.closed, 1000);
      // The first message, empty, on stdout: the session is up.
      assert.deepEqual(c.messages[0], { channel: 1, data: Buffer.alloc(0) });
      assert.equal(c.text(1), 'hello\n');
      assert.equal(c.text(2), 'err\n');
      assert.equal(exitCodeOf(c, protocol), 3);

      const ok = new Client(await exec(['sh', '-c', 'echo fine']), protocol);
      assert.equal(await ok.closed, 1000);
      assert.equal(ok.text(1), 'fine\n');
      assert.equal(exitCodeOf(ok, protocol), 0);
    });
  }

  for (const protocol of ['v5.channel.k8s.io', 'v4.base64.channel.k8s.io', 'channel.k8s.io']) {
    it(`exec with a terminal over ${protocol}: resize reaches it, typing too`, async () => {
      // runc -t sizes its own terminal just after the command starts (then follows the
      // client's resize): the command waits, up to 5 s, for the size to arrive.
      const wait = 'i=0; until [ "$(stty size 2>/dev/null)" = "45 123" ] || [ $i -ge 50 ]; do sleep 0.1; i=$((i+1)); done';
      const c = new Client(await exec(['sh', '-c', `${wait}; tty; stty size; read x; echo "typed:$x"; exit 5`], { tty: true, stdin: true }), protocol);
      await c.opened;
      c.send(4, JSON.stringify({ Width: 123, Height: 45 }));
      await c.waitFor(1, /45 123\r\n/);
      c.send(0, 'hello\r');
      assert.equal(await c.closed, 1000);
      assert.match(c.text(1), /\/dev\/pts\/\d+\r\n/);
      assert.match(c.text(1), /typed:hello\r\n/);
      assert.equal(c.text(2), '', 'nothing on stderr with a terminal');
      assert.equal(exitCodeOf(c, protocol), 5);
    });
  }

  it('exec of a command that does not exist: runc’s message and a failure', async () => {
    const c = new Client(await exec(['no-such-command']), 'v4.channel.k8s.io');
    assert.equal(await c.closed, 1000);
    assert.match(c.text(1) + c.text(2), /no-such-command/);
    assert.notEqual(exitCodeOf(c, 'v4.channel.k8s.io'), 0);
  });

  it('a client that goes away kills the command', async () => {
    const c = new Client(await exec(['sh', '-c', 'echo started; exec sleep 1001']), 'v4.channel.k8s.io');
    await c.waitFor(1, /started/);
    const sleepers = async (): Promise<number> =>
      Number((await b.runtime.ExecSync({ container_id: id, cmd: ['sh', '-c', 'ps -o args | grep -c "^sleep 1001$"'], timeout: 5 })).stdout.toString().trim());
    assert.equal(await sleepers(), 1);
    c.ws.terminate();
    await until(async () => ((await sleepers()) === 0 ? true : undefined), 10_000);
  });

  it('attach over v5: input reaches the main process, output comes back; the close signal ends its stdin', async () => {
    const att = await container('att', ['sh', '-c', 'echo ready; while read l; do echo "got:$l"; echo "err:$l" >&2; done; echo bye'], {
      stdin: true,
      stdin_once: true,
    });
    const { url } = await b.runtime.Attach({ container_id: att, stdin: true, stdout: true, stderr: true });
    const c = new Client(url, 'v5.channel.k8s.io');
    await c.opened;
    c.send(0, 'one\n');
    await c.waitFor(1, /got:one\n/);
    c.send(0, 'two\n');
    await c.waitFor(2, /err:two\n/);
    c.send(255, Buffer.of(0));
    assert.equal(await c.closed, 1000);
    assert.match(c.text(1), /got:one\ngot:two\nbye\n$/);
    assert.match(c.text(2), /err:one\nerr:two\n/);
    await until(async () => ((await b.runtime.ContainerStatus({ container_id: att })).status!.state === 'CONTAINER_EXITED' ? true : undefined), 10_000);
  });

  it('port-forward: the port announced on both channels, a server on the pod’s loopback reached, a closed port reported', async () => {
    await container('web', ['sh', '-c', 'mkdir -p /www && echo hello-from-the-pod > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www']);
    const le = (p: number): Buffer => Buffer.of(p & 0xff, p >> 8);
    const get = async (protocol: string): Promise<Client> => {
      const { url } = await b.runtime.PortForward({ pod_sandbox_id: pod, port: [8080] });
      const c = new Client(`${url}?port=8080`, protocol);
      await c.opened;
      c.send(0, 'GET /index.html HTTP/1.0\r\n\r\n');
      await c.closed;
      return c;
    };
    for (const protocol of ['v4.channel.k8s.io', 'v4.base64.channel.k8s.io', 'portforward.k8s.io']) {
      // httpd may still be starting: a refused connection is reported, then tried again.
      const c = await until(async () => {
        const r = await get(protocol);
        return /hello-from-the-pod/.test(r.text(0)) ? r : undefined;
      });
      assert.deepEqual(c.messages.filter((m) => m.channel === 0)[0]!.data, le(8080));
      assert.deepEqual(c.messages.filter((m) => m.channel === 1)[0]!.data, le(8080));
      assert.match(c.text(0).slice(2), /^HTTP\/1\.[01] 200/);
      assert.equal(c.text(1).slice(2), '', 'no error');
    }
    // Two ports in one session: 8080 answers, 9 has nothing listening.
    const { url } = await b.runtime.PortForward({ pod_sandbox_id: pod, port: [8080, 9] });
    const c = new Client(`${url}?port=8080&port=9`, 'v4.channel.k8s.io');
    await c.opened;
    c.send(0, 'GET /index.html HTTP/1.0\r\n\r\n');
    await c.closed;
    assert.match(c.text(0), /hello-from-the-pod/);
    assert.deepEqual(c.messages.filter((m) => m.channel === 2)[0]!.data, le(9));
    assert.match(c.text(3).slice(2), /error forwarding port 9 to pod/);
  });

  it('a client that never reads: the command is held back, berthd’s memory stays bounded and it keeps answering', async () => {
    const before = rssMiB(b.proc.pid!);
    const c = new Client(await exec(['sh', '-c', 'head -c 300000000 /dev/zero; echo done >&2']), 'v4.channel.k8s.io');
    await c.opened;
    c.ws.pause();
    // The writer stops once the socket, the session's buffer and the pipe are full.
    const written = async (): Promise<number> => {
      const r = await b.runtime.ExecSync({ container_id: id, cmd: ['sh', '-c', 'grep ^wchar /proc/$(pidof head)/io'], timeout: 5 });
      return Number(/wchar: (\d+)/.exec(r.stdout.toString())?.[1] ?? NaN);
    };
    let last = -1;
    const held = await until(
      async () => {
        const now = await written();
        const steady = now === last;
        last = now;
        return steady ? now : undefined;
      },
      30_000,
      500,
    );
    assert.ok(held < 64 * 1024 * 1024, `the command wrote ${held} bytes for a client that reads nothing`);
    const t0 = Date.now();
    await b.runtime.Version({});
    assert.ok(Date.now() - t0 < 1000, 'berthd answers');
    assert.ok(rssMiB(b.proc.pid!) - before < 48, `RSS grew from ${before} to ${rssMiB(b.proc.pid!)} MiB`);
    c.ws.terminate();
  });

  it('stdin pushed at a command that never reads it: the client is held back, berthd’s memory stays bounded', async () => {
    const before = rssMiB(b.proc.pid!);
    const c = new Client(await exec(['sleep', '1000'], { stdin: true }), 'v4.channel.k8s.io');
    await c.opened;
    const chunk = Buffer.concat([Buffer.of(0), Buffer.alloc(64 * 1024, 0x61)]);
    let sent = 0;
    // Sends as long as the client's own socket takes it; stops when berth stops reading.
    const push = (): void => {
      while (c.ws.readyState === WebSocket.OPEN && c.ws.bufferedAmount < 4 * 1024 * 1024 && sent < 256 * 1024 * 1024) {
        c.ws.send(chunk);
        sent += chunk.length;
      }
      if (sent < 256 * 1024 * 1024 && c.ws.readyState === WebSocket.OPEN) setTimeout(push, 20);
    };
    push();
    // Held back: what berth accepted stops growing far below what was pushed.
    let last = -1;
    const accepted = await until(
      async () => {
        const now = sent - c.ws.bufferedAmount;
        const steady = now === last && c.ws.bufferedAmount >= 4 * 1024 * 1024 - chunk.length;
        last = now;
        return steady ? now : undefined;
      },
      30_000,
      500,
    );
    assert.ok(accepted < 64 * 1024 * 1024, `berth took ${accepted} bytes of stdin the command does not read`);
    assert.ok(rssMiB(b.proc.pid!) - before < 48, `RSS grew from ${before} to ${rssMiB(b.proc.pid!)} MiB`);
    const t0 = Date.now();
    await b.runtime.Version({});
    assert.ok(Date.now() - t0 < 1000, 'berthd answers');
    c.ws.terminate();
  });

  it('refuses, with the protocols berth speaks, a client that offers none of them; the URL stays usable', async () => {
    const url = await exec(['echo', 'later']);
    const r = await refused(url, { 'Sec-WebSocket-Protocol': 'v9.channel.k8s.io, bogus' });
    assert.equal(r.status, 400);
    for (const p of PROTOCOLS) assert.ok(r.body.includes(p), r.body);
    const c = new Client(url, 'v4.channel.k8s.io');
    assert.equal(await c.closed, 1000);
    assert.equal(c.text(1), 'later\n');

    const pf = (await b.runtime.PortForward({ pod_sandbox_id: pod, port: [80] })).url;
    const noPort = await refused(pf, { 'Sec-WebSocket-Protocol': 'v4.channel.k8s.io' });
    assert.equal(noPort.status, 400);
    assert.match(noPort.body, /"port" is required/);
    const badPort = await refused(`${pf}?port=99999`, { 'Sec-WebSocket-Protocol': 'v4.channel.k8s.io' });
    assert.equal(badPort.status, 400);
    const wrong = await refused(`${pf}?port=80`, { 'Sec-WebSocket-Protocol': 'base64.channel.k8s.io' });
    assert.equal(wrong.status, 400);
    assert.match(wrong.body, /portforward\.k8s\.io/);
  });
});
