/**
 * The config in force and its reload (config/live.ts, config/reload.ts): which changed
 * keys apply and which keep their running value, views that follow a reload, and the
 * reloader's outcome on a good, a partly refused and a broken config.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '../../../src/common/logger.js';
import { LiveConfig, planReload, readThrough } from '../../../src/config/live.js';
import { ConfigError } from '../../../src/config/load.js';
import { ConfigReloader, IN_FORCE_FILE, readInForce } from '../../../src/config/reload.js';
import { defaultConfig, type BerthConfig } from '../../../src/config/schema.js';

function changed(f: (c: BerthConfig) => void): BerthConfig {
  const c = defaultConfig();
  f(c);
  return c;
}

describe('config reload', () => {
  describe('planReload', () => {
    it('changes nothing for the same config', () => {
      const plan = planReload(defaultConfig(), defaultConfig());
      assert.deepEqual(plan, { config: defaultConfig(), applied: [], refused: [] });
    });

    it('applies registries, images, CNI, streaming timeouts and the log level', () => {
      const next = changed((c) => {
        c.log_level = 'debug';
        c.registries['127.0.0.1:5000'] = { mirrors: ['http://127.0.0.1:5001'], insecure_skip_verify: false, username: 'u', password: 'p' };
        c.images.pinned = ['busybox'];
        c.cni.conf_dir = '/srv/cni';
        c.streaming.token_ttl_seconds = 5;
        c.sandbox.cni_timeout_seconds = 9;
      });
      const plan = planReload(defaultConfig(), next);
      assert.deepEqual(plan.config, next);
      assert.deepEqual(plan.refused, []);
      assert.deepEqual(plan.applied, [
        'cni.conf_dir',
        'images.pinned',
        'log_level',
        'registries."127.0.0.1:5000".insecure_skip_verify',
        'registries."127.0.0.1:5000".mirrors',
        'registries."127.0.0.1:5000".password',
        'registries."127.0.0.1:5000".username',
        'sandbox.cni_timeout_seconds',
        'streaming.token_ttl_seconds',
      ]);
      // A registry dropped from the files is dropped from the config in force.
      assert.deepEqual(planReload(next, defaultConfig()).config.registries, {});
    });

    it('keeps the running value of each key that needs a restart, and names it', () => {
      const running = defaultConfig();
      const next = changed((c) => {
        c.socket = '/run/other.sock';
        c.cgroup_driver = 'systemd';
        c.streaming.port = 10010;
        c.streaming.idle_timeout_seconds = 60;
        c.runtimes['kata'] = { path: '/usr/bin/kata' };
        c.default_runtime = 'kata';
        c.metrics.address = '';
      });
      const plan = planReload(running, next);
      assert.deepEqual(
        plan.refused.map((r) => [r.key, r.running, r.wanted]),
        [
          ['cgroup_driver', 'cgroupfs', 'systemd'],
          ['default_runtime', 'runc', 'kata'],
          ['metrics.address', '127.0.0.1:9102', ''],
          ['runtimes.kata.path', null, '/usr/bin/kata'],
          ['socket', '/run/berth/berth.sock', '/run/other.sock'],
          ['streaming.port', 0, 10010],
        ],
      );
      assert.deepEqual(plan.applied, ['streaming.idle_timeout_seconds']);
      assert.deepEqual(
        plan.config,
        changed((c) => (c.streaming.idle_timeout_seconds = 60)),
      );
      assert.equal(next.runtimes['kata']?.path, '/usr/bin/kata', 'the new config is not modified');
    });
  });

  it('views read the config in force at each access', () => {
    const live = new LiveConfig(defaultConfig(), ['/etc/berth/config.toml']);
    const view = live.view;
    const streaming = live.section('streaming');
    const level = createLogger(
      () => live.current.log_level,
      () => undefined,
    );
    assert.equal(level.enabled('debug'), false);
    live.replace(
      changed((c) => {
        c.cni.conf_dir = '/srv/cni';
        c.streaming.token_ttl_seconds = 7;
        c.log_level = 'debug';
      }),
      [],
    );
    assert.equal(view.cni.conf_dir, '/srv/cni');
    assert.equal(streaming.token_ttl_seconds, 7);
    assert.equal(level.child({ a: 1 }).enabled('debug'), true);
    assert.equal(live.generation, 2);
    assert.deepEqual(JSON.parse(JSON.stringify(view)), live.current, 'a view serialises as the config in force');
    let n = 0;
    const counted = readThrough(() => ({ a: ++n }));
    assert.equal(counted.a, 2);
    assert.equal(counted.a, 3);
  });

  describe('ConfigReloader', () => {
    let dir: string;
    beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'berth-reload-'))));
    afterEach(() => rmSync(dir, { recursive: true, force: true }));

    function reloader(load: () => BerthConfig, check?: (c: BerthConfig) => void) {
      const lines: Array<Record<string, unknown>> = [];
      const live = new LiveConfig(defaultConfig(), []);
      const events: string[] = [];
      const r = new ConfigReloader({
        live,
        load: () => ({ config: load(), sources: ['/x.toml'] }),
        ...(check ? { check } : {}),
        stateDir: dir,
        log: createLogger('debug', (l) => void lines.push(JSON.parse(l) as Record<string, unknown>)),
        onBegin: () => events.push('begin'),
        onEnd: (o) => events.push(o.ok ? 'ok' : 'refused'),
      });
      return { r, live, lines, events };
    }

    it('puts a good config in force, publishes it with passwords masked, and says what applied', async () => {
      const next = changed((c) => {
        c.registries['r.example'] = { mirrors: [], insecure_skip_verify: false, username: 'u', password: 'hunter2' };
        c.cgroup_driver = 'systemd';
      });
      const { r, live, lines, events } = reloader(() => next);
      const outcome = await r.reload();
      assert.equal(outcome.ok, true);
      assert.deepEqual(outcome.refused, ['cgroup_driver']);
      assert.equal(live.current.registries['r.example']!.password, 'hunter2');
      assert.equal(live.current.cgroup_driver, 'cgroupfs');
      const rec = readInForce(dir)!;
      assert.equal(rec.pid, process.pid);
      assert.equal(rec.generation, 2);
      assert.equal(rec.reloads, 1);
      assert.equal(rec.config.registries['r.example']!.password, '[redacted]');
      assert.ok(!readFileSync(join(dir, IN_FORCE_FILE), 'utf8').includes('hunter2'));
      assert.deepEqual(
        lines.map((l) => [l.level, l.msg]),
        [
          ['warn', 'config key needs a restart; its running value stays'],
          ['info', 'configuration reloaded'],
        ],
      );
      assert.deepEqual(events, ['begin', 'ok']);
      r.unpublish();
      assert.equal(readInForce(dir), undefined);
    });

    it('refuses a broken config whole with one error line; the running config stays', async () => {
      const { r, live, lines, events } = reloader(() => {
        throw new ConfigError("/etc/berth/config.d/9.toml: key 'log_level': expected one of …");
      });
      const before = live.current;
      const outcome = await r.reload();
      assert.equal(outcome.ok, false);
      assert.match(outcome.error!, /9\.toml: key 'log_level'/);
      assert.equal(live.current, before);
      assert.equal(live.generation, 1);
      assert.deepEqual(
        lines.map((l) => [l.level, l.msg]),
        [['error', 'configuration reload refused; the running configuration stays']],
      );
      assert.equal(readInForce(dir)!.reloads, 1);
      assert.deepEqual(events, ['begin', 'refused']);

      // A check beyond the schema refuses the same way.
      const checked = reloader(
        () => changed((c) => (c.images.pinned = ['bad ref'])),
        () => {
          throw new Error("config key 'images.pinned': bad");
        },
      );
      assert.equal((await checked.r.reload()).ok, false);
      assert.deepEqual(checked.live.current.images.pinned, []);
    });

    it('runs reloads one at a time, in order', async () => {
      let n = 0;
      const { r } = reloader(() => changed((c) => (c.images.pull_attempts = ++n)));
      const outcomes = await Promise.all([r.reload(), r.reload(), r.reload()]);
      assert.deepEqual(
        outcomes.map((o) => o.applied),
        [['images.pull_attempts'], ['images.pull_attempts'], ['images.pull_attempts']],
      );
      assert.equal(readInForce(dir)!.reloads, 3);
      assert.equal(readInForce(dir)!.config.images.pull_attempts, 3);
    });
  });
});
