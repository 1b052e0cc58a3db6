/**
 * berthd under systemd: the unit file (hack/systemd/berthd.service) checked by
 * `systemd-analyze verify`, and the notify protocol of `Type=notify` spoken to a socket
 * the test listens on, as systemd would: READY=1 once berthd serves, RELOADING=1 then
 * READY=1 around a reload, STOPPING=1 at SIGTERM.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Berthd, BERTHD_BIN } from '../helpers/berthd.js';
import { criClients } from '../helpers/cri-client.js';
import { fields, NotifyListener } from '../helpers/notify-socket.js';

const UNIT = fileURLToPath(new URL('../../../hack/systemd/berthd.service', import.meta.url));
const ANALYZE = '/usr/bin/systemd-analyze';

/** `Key=value` directives of a unit file, by key (a key given twice keeps both values). */
function directives(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (m) out.set(m[1]!, [...(out.get(m[1]!) ?? []), m[2]!]);
  }
  return out;
}

describe('berthd under systemd', function () {
  this.timeout(60_000);
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'berth-systemd-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  describe('the unit file', () => {
    const text = readFileSync(UNIT, 'utf8');

    it('has the settings berth relies on, and none that would hide the host from it', () => {
      const d = directives(text);
      const one = (k: string): string | undefined => (d.get(k)?.length === 1 ? d.get(k)![0] : undefined);
      assert.equal(one('Type'), 'notify');
      assert.equal(one('KillMode'), 'process', 'a restart must leave conmon and the containers running');
      assert.equal(one('Delegate'), 'yes');
      assert.equal(one('LimitNOFILE'), '1048576');
      assert.equal(one('OOMScoreAdjust'), '-999');
      assert.equal(one('Restart'), 'always');
      assert.equal(one('ExecStart'), '/usr/local/bin/berthd');
      assert.equal(one('ExecReload'), '/usr/local/bin/berthd reload');
      for (const k of ['PrivateTmp', 'ProtectSystem', 'PrivateMounts', 'ProtectHome', 'ReadOnlyPaths', 'InaccessiblePaths', 'MountFlags', 'NotifyAccess']) {
        assert.equal(d.get(k), undefined, `${k} must not be set`);
      }
    });

    it('passes systemd-analyze verify (ExecStart pointed at this checkout)', function () {
      if (!existsSync(ANALYZE)) {
        console.log(`      skipped: ${ANALYZE} is missing (hack/install.sh installs Debian's systemd package)`);
        this.skip();
      }
      // verify checks that ExecStart= names an executable; this checkout's bin/berthd.js
      // stands in for /usr/local/bin/berthd (a link to it that hack/setup.sh makes), so the
      // test depends on nothing installed. Only those two lines change.
      const copy = text
        .replace(/^ExecStart=\/usr\/local\/bin\/berthd$/m, `ExecStart=${BERTHD_BIN}`)
        .replace(/^ExecReload=\/usr\/local\/bin\/berthd /m, `ExecReload=${BERTHD_BIN} `);
      assert.equal(copy.split('\n').filter((l, i) => l !== text.split('\n')[i]).length, 2);
      const unit = join(dir, 'berthd.service');
      writeFileSync(unit, copy);
      const verify = (file: string): { code: number | null; out: string } => {
        const r = spawnSync(ANALYZE, ['verify', '--man=no', file], { encoding: 'utf8', timeout: 30_000 });
        return { code: r.status, out: (r.stdout + r.stderr).trim() };
      };
      assert.deepEqual(verify(unit), { code: 0, out: '' }, 'no error and no warning');

      // The check has teeth: a mistyped value is reported (systemd only warns, and goes on).
      writeFileSync(unit, copy.replace('Type=notify', 'Type=notiffy'));
      assert.match(verify(unit).out, /Failed to parse service type, ignoring: notiffy/);
      writeFileSync(unit, copy.replace(`ExecStart=${BERTHD_BIN}`, `ExecStart=${join(dir, 'missing')}`));
      assert.notEqual(verify(unit).code, 0);
    });
  });

  describe('the notify protocol', () => {
    it('READY=1 once berthd serves, RELOADING=1 and READY=1 around a reload, STOPPING=1 at SIGTERM', async () => {
      const listener = NotifyListener.open(join(dir, 'notify.sock'));
      let b: Berthd | undefined;
      try {
        // While berthd starts, the test watches for READY=1 and asks berthd a question the
        // moment it arrives: it must answer (during recovery it answers UNAVAILABLE).
        const bdir = mkdtempSync(join(tmpdir(), 'berth-test-'));
        const starting = Berthd.start({ reuse: { dir: bdir }, env: { NOTIFY_SOCKET: listener.path } });
        const ready = await listener.waitFor(/^READY=1$/m);
        const clients = criClients(join(bdir, 'state', 'berth.sock'));
        try {
          assert.equal((await clients.runtime.Version({}, { deadline: Date.now() + 5000 })).runtime_name, 'berth');
        } finally {
          clients.close();
        }
        b = await starting;
        assert.match(fields(ready).STATUS!, /^serving on /);
        assert.ok(
          b.records().some((r) => r.msg === 'recovery finished; berthd is ready'),
          'READY=1 comes after recovery',
        );
        assert.equal(listener.messages.filter((m) => /^READY=1$/m.test(m)).length, 1, 'one READY=1 at start-up');

        b.proc.kill('SIGHUP');
        const reloading = fields(await listener.waitFor(/^RELOADING=1$/m));
        assert.match(reloading.MONOTONIC_USEC!, /^\d+$/);
        // MONOTONIC_USEC is CLOCK_MONOTONIC, which is also what /proc/uptime counts (in seconds).
        const uptimeUs = Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * 1e6;
        assert.ok(Math.abs(Number(reloading.MONOTONIC_USEC) - uptimeUs) < 5e6, `${reloading.MONOTONIC_USEC} vs uptime ${uptimeUs}`);
        assert.match(fields(await listener.waitFor(/^READY=1$/m)).STATUS!, /configuration generation 2/);

        const stopped = b.stop();
        assert.match(fields(await listener.waitFor(/^STOPPING=1$/m)).STATUS!, /stopping on SIGTERM/);
        assert.equal((await stopped).code, 0);
      } finally {
        listener.close();
        await b?.dispose();
      }
    });
  });
});
