/**
 * The WebSocket channel protocols' parts that need no container: negotiation, the ports
 * of a port-forward query, the exit report, and WsChannels' framing, close signal,
 * protocol errors and input backpressure over a real WebSocket on 127.0.0.1.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import WebSocket, { WebSocketServer } from 'ws';
import { exitReport, startFailureReport } from '../../../src/streaming/remotecommand.js';
import { portsOfQuery } from '../../../src/streaming/ws-portforward.js';
import { negotiateWs, WS_REMOTECOMMAND_PROTOCOLS, wsTraits } from '../../../src/streaming/ws-remotecommand.js';
import { WsChannels, type WsChannelOptions } from '../../../src/streaming/ws-session.js';

describe('streaming: WebSocket channel protocols', () => {
  it('takes the client’s first subprotocol that berth speaks; none offered means channel.k8s.io', () => {
    const n = (offered: string[]): string | undefined => negotiateWs<string>(offered, WS_REMOTECOMMAND_PROTOCOLS, 'channel.k8s.io');
    assert.equal(n(['v6.channel.k8s.io', 'v4.base64.channel.k8s.io', 'v5.channel.k8s.io']), 'v4.base64.channel.k8s.io');
    assert.equal(n([]), 'channel.k8s.io');
    assert.equal(n(['SPDY/3.1', 'bogus']), undefined);
  });

  it('frames base64 for the base64 protocols, reports a Status from v4 on, the close signal in v5 only', () => {
    assert.deepEqual(wsTraits('v5.channel.k8s.io'), { base64: false, structured: true, closeSignal: true });
    assert.deepEqual(wsTraits('v4.base64.channel.k8s.io'), { base64: true, structured: true, closeSignal: false });
    assert.deepEqual(wsTraits('base64.channel.k8s.io'), { base64: true, structured: false, closeSignal: false });
    assert.deepEqual(wsTraits('v2.channel.k8s.io'), { base64: false, structured: false, closeSignal: false });
    assert.equal(exitReport(false, 0), '');
    assert.equal(exitReport(false, 7), 'command terminated with non-zero exit code: exit status 7');
    assert.equal((JSON.parse(exitReport(true, 0)) as { status: string }).status, 'Success');
    assert.equal(startFailureReport(false, 'no such file'), 'no such file');
    assert.equal((JSON.parse(startFailureReport(true, 'no such file')) as { message: string }).message, 'no such file');
  });

  it('reads the ports of a port-forward query, and refuses missing or bad ones', () => {
    assert.deepEqual(portsOfQuery('/portforward/abc?port=80&port=443'), [80, 443]);
    assert.match(String(portsOfQuery('/portforward/abc')), /"port" is required/);
    assert.match(String(portsOfQuery('/portforward/abc?port=0')), /not a port number/);
    assert.match(String(portsOfQuery('/portforward/abc?port=65536')), /not a port number/);
    assert.match(String(portsOfQuery('/portforward/abc?port=8o')), /not a port number/);
    assert.match(String(portsOfQuery(`/portforward/abc?${Array.from({ length: 33 }, (_, i) => `port=${i + 1}`).join('&')}`)), /at most 32/);
  });

  describe('WsChannels over a real WebSocket', () => {
    let server: Server;
    let wss: WebSocketServer;
    let url: string;
    let sessions: WsChannels[] = [];
    let options: WsChannelOptions;

    beforeEach(async () => {
      sessions = [];
      wss = new WebSocketServer({ noServer: true, autoPong: false });
      server = createServer();
      server.on('upgrade', (req, socket, head) => wss.handleUpgrade(req, socket, head, (ws) => sessions.push(new WsChannels(ws, options))));
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      url = `ws://127.0.0.1:${(server.address() as AddressInfo).port}/`;
    });
    afterEach(async () => {
      for (const c of wss.clients) c.terminate();
      await new Promise((r) => server.close(r));
    });

    async function open(o: WsChannelOptions): Promise<{ client: WebSocket; ch: WsChannels }> {
      options = o;
      const client = new WebSocket(url);
      await new Promise((r) => client.once('open', r));
      await new Promise((r) => setImmediate(r));
      return { client, ch: sessions[sessions.length - 1]! };
    }

    it('decodes binary and base64 input, drops channels it lacks, sends the close signal as end', async () => {
      const { client, ch } = await open({ base64: false, channels: 5, closeSignal: true });
      const got: Array<[number, string]> = [];
      ch.on('data', (c: number, d: Buffer) => got.push([c, d.toString()]));
      ch.on('end', (c: number) => got.push([c, 'END']));
      client.send(Buffer.from('\x00abc'));
      client.send(Buffer.from('\x09dropped'));
      client.send(Buffer.of(255, 0));
      client.send(Buffer.from('\x04{}'));
      await new Promise<void>((r) => (got.length === 3 ? r() : ch.on('data', () => got.length === 3 && r())));
      assert.deepEqual(got, [
        [0, 'abc'],
        [0, 'END'],
        [4, '{}'],
      ]);

      const b = await open({ base64: true, channels: 5, closeSignal: false });
      const text: string[] = [];
      b.client.on('message', (d: Buffer) => text.push(d.toString()));
      const input = new Promise<string>((r) => b.ch.once('data', (c: number, d: Buffer) => r(`${c}:${d.toString()}`)));
      b.client.send(`0${Buffer.from('hi there').toString('base64')}`);
      assert.equal(await input, '0:hi there');
      await new Promise<void>((r) => b.ch.send(1, 'out', r));
      await new Promise<void>((r) => (text.length > 0 ? r() : b.client.once('message', () => r())));
      assert.deepEqual(text, [`1${Buffer.from('out').toString('base64')}`]);
    });

    it('closes the session on data that is not base64, or a malformed close signal', async () => {
      const a = await open({ base64: true, channels: 5, closeSignal: false });
      const closedA = new Promise<number>((r) => a.client.once('close', r));
      a.client.send('0not base64!');
      assert.equal(await closedA, 1008);
      const b = await open({ base64: false, channels: 5, closeSignal: true });
      const closedB = new Promise<number>((r) => b.client.once('close', r));
      b.client.send(Buffer.of(255, 0, 1));
      assert.equal(await closedB, 1008);
    });

    it('stops reading the client while a consumer does not drain, and resumes when it does', async () => {
      const { client, ch } = await open({ base64: false, channels: 1, closeSignal: false });
      let release: (() => void) | undefined;
      let taken = 0;
      const sink = new Writable({
        highWaterMark: 1024,
        write: (chunk: Buffer, _e, cb) => {
          taken += chunk.length;
          release = cb;
        },
      });
      ch.on('data', (_c: number, d: Buffer) => ch.deliver(sink, d));
      const msg = Buffer.concat([Buffer.of(0), Buffer.alloc(64 * 1024)]);
      for (let i = 0; i < 200; i++) client.send(msg);
      // The server stops reading: the client's own buffer holds most of it.
      await until(() => ch.ws.isPaused);
      await until(() => client.bufferedAmount > 0);
      assert.ok(sink.writableLength < 2 * 1024 * 1024, `${sink.writableLength} bytes queued`);
      // The consumer drains: everything arrives.
      const drain = (): void => {
        const r = release;
        release = undefined;
        r?.();
        if (taken < 200 * 64 * 1024) setImmediate(drain);
      };
      drain();
      await until(() => taken === 200 * 64 * 1024);
    });
  });
});

/** Waits (polling) until `f` holds, or fails after 5 s. */
async function until(f: () => boolean): Promise<void> {
  const end = Date.now() + 5000;
  while (!f()) {
    if (Date.now() > end) throw new Error('condition not met within 5 s');
    await new Promise((r) => setTimeout(r, 10));
  }
}
