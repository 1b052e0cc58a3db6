import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'smol-toml';
import { ConfigError, formatConfig, loadConfig } from '../../../src/config/load.js';
import { defaultConfig } from '../../../src/config/schema.js';

describe('config loading', () => {
  let dir: string;
  let file: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'berth-config-'));
    file = join(dir, 'config.toml');
    mkdirSync(join(dir, 'config.d'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const load = (toml: string, overrides?: Record<string, unknown>) => {
    writeFileSync(file, toml);
    return loadConfig({ file, ...(overrides ? { overrides } : {}) });
  };

  it('uses the defaults for an empty file; registry certificates live in certs.d beside it', () => {
    const want = defaultConfig();
    want.images.registry_certs_dir = join(dir, 'certs.d');
    assert.deepEqual(load('').config, want);
    assert.equal(load('[images]\nregistry_certs_dir = "/srv/certs"\n').config.images.registry_certs_dir, '/srv/certs');
  });

  it('reads top-level keys and tables', () => {
    const { config, sources } = load('log_level = "warn"\ncgroup_driver = "systemd"\n[cni]\nbin_dirs = ["/x/bin"]\n');
    assert.equal(config.log_level, 'warn');
    assert.equal(config.cgroup_driver, 'systemd');
    assert.deepEqual(config.cni.bin_dirs, ['/x/bin']);
    assert.equal(config.cni.conf_dir, '/etc/cni/net.d', 'keys not given keep their default');
    assert.deepEqual(sources, [file]);
  });

  it('applies drop-ins in lexical order after the file, and flags last', () => {
    writeFileSync(join(dir, 'config.d', '20-b.toml'), 'log_level = "error"\n');
    writeFileSync(join(dir, 'config.d', '10-a.toml'), 'log_level = "debug"\nshutdown_timeout_seconds = 3\n');
    writeFileSync(join(dir, 'config.d', 'ignored.conf'), 'not toml at all [');
    const { config, sources } = load('log_level = "warn"\n');
    assert.equal(config.log_level, 'error');
    assert.equal(config.shutdown_timeout_seconds, 3);
    assert.deepEqual(sources, [file, join(dir, 'config.d', '10-a.toml'), join(dir, 'config.d', '20-b.toml')]);
    assert.equal(load('', { log_level: 'info', root: '/srv/berth' }).config.log_level, 'info');
    assert.equal(load('', { root: '/srv/berth', socket: undefined }).config.root, '/srv/berth');
  });

  it('rejects an unknown key, naming the file and the key', () => {
    assert.throws(
      () => load('sokcet = "/x"\n'),
      (e: Error) => e instanceof ConfigError && e.message === `${file}: unknown key 'sokcet'`,
    );
    assert.throws(() => load('[cni]\nconfdir = "/x"\n'), /unknown key 'cni.confdir'/);
    assert.throws(() => load('[images]\nx = 1\n'), /unknown key 'images.x'/);
    assert.throws(() => load('[volumes]\nx = 1\n'), /unknown key 'volumes'/);
  });

  it('starts through the exec.fifo unless a handler turns it off', () => {
    const { config } = load('[runtimes.runc]\nfifo_start = false\n[runtimes.kata]\npath = "/usr/bin/kata-runtime"\n');
    assert.deepEqual(config.runtimes['runc'], { path: '/usr/sbin/runc', fifo_start: false });
    // A handler of the user's own leaves it unset: on (main.ts).
    assert.deepEqual(config.runtimes['kata'], { path: '/usr/bin/kata-runtime' });
    assert.throws(() => load('[runtimes.runc]\nfifo_start = "yes"\n'), /key 'runtimes.runc.fifo_start': expected true or false, got "yes"/);
  });

  it('rejects a bad value with the reason', () => {
    assert.throws(() => load('log_level = "loud"\n'), /key 'log_level': expected one of "debug", "info", "warn", "error", got "loud"/);
    assert.throws(() => load('root = "relative/dir"\n'), /key 'root': expected an absolute path, got "relative\/dir"/);
    assert.throws(() => load('shutdown_timeout_seconds = 1.5\n'), /key 'shutdown_timeout_seconds': expected an integer from 0 to 3600/);
    assert.throws(() => load('cni = "x"\n'), /key 'cni': expected a table, got "x"/);
    assert.throws(() => load('[cni]\nbin_dirs = ["/ok", 3]\n'), /key 'cni.bin_dirs': item 1: expected a string path, got number 3/);
    assert.throws(() => load('', { log_level: 'verbose' }), /command line: key 'log_level'/);
  });

  it('takes the metrics address as ip:port, or "" for off', () => {
    assert.equal(defaultConfig().metrics.address, '127.0.0.1:9102');
    assert.equal(load('[metrics]\naddress = ""\n').config.metrics.address, '');
    assert.equal(load('[metrics]\naddress = "[::1]:9102"\n').config.metrics.address, '[::1]:9102');
    for (const bad of ['localhost:9102', '127.0.0.1', '127.0.0.1:65536', ':9102']) {
      assert.throws(() => load(`[metrics]\naddress = "${bad}"\n`), /key 'metrics.address': expected "ip:port" such as "127.0.0.1:9102" \(or "" for off\)/, bad);
    }
  });

  it('names the drop-in that is wrong', () => {
    writeFileSync(join(dir, 'config.d', '50-bad.toml'), 'cgroup_driver = "cgroupv3"\n');
    assert.throws(
      () => load(''),
      (e: Error) => e.message.startsWith(join(dir, 'config.d', '50-bad.toml') + ": key 'cgroup_driver'"),
    );
  });

  it('rejects invalid TOML and a missing --config file', () => {
    assert.throws(() => load('root = \n'), new RegExp(`^ConfigError: ${file}: not valid TOML`));
    assert.throws(() => loadConfig({ file: join(dir, 'nope.toml') }), /config file given with --config does not exist/);
  });

  it('reads per-registry tables keyed by host, with defaults for keys not given', () => {
    const { config } = load(
      '[registries."docker.io"]\nmirrors = ["http://127.0.0.1:5000"]\n' +
        '[registries."127.0.0.1:5001"]\nusername = "u"\npassword = "p"\ninsecure_skip_verify = true\n',
    );
    assert.deepEqual(config.registries['docker.io'], { mirrors: ['http://127.0.0.1:5000'], insecure_skip_verify: false, username: '', password: '' });
    assert.equal(config.registries['127.0.0.1:5001']!.username, 'u');
    assert.equal(config.registries['127.0.0.1:5001']!.insecure_skip_verify, true);
    assert.throws(() => load('[registries."docker.io"]\nmirors = []\n'), /unknown key 'registries\."docker\.io"\.mirors'/);
    assert.throws(
      () => load('[registries."docker.io"]\nmirrors = ["ftp://x"]\n'),
      /key 'registries\."docker\.io"\.mirrors': item 0: "ftp:\/\/x" must be http:\/\/ or https:\/\//,
    );
    assert.throws(() => load('[registries."docker.io"]\nmirrors = ["http://u:p@m"]\n'), /put credentials in the mirror's own/);
    assert.throws(() => load('registries = 1\n'), /key 'registries': expected a table/);
    assert.throws(
      () => load('[images]\nmax_concurrent_downloads = 0\n'),
      /key 'images.max_concurrent_downloads': expected an integer from 1 to 64, got number 0/,
    );
    assert.equal(load('').config.images.max_layers, 500);
    assert.equal(load('[images]\nmax_layers = 20\n').config.images.max_layers, 20);
    assert.throws(() => load('[images]\nmax_layers = 0\n'), /key 'images.max_layers': expected an integer from 1 to 10000, got number 0/);
  });

  it('never prints registry passwords', () => {
    const { config } = load('[registries."r.example"]\nusername = "u"\npassword = "hunter2"\n');
    const text = formatConfig(config);
    assert.ok(!text.includes('hunter2'));
    assert.match(text, /password = "\[redacted\]"/);
    assert.equal(config.registries['r.example']!.password, 'hunter2', 'the daemon itself keeps the real value');
  });

  it('prints TOML that loads back to the same config', () => {
    const { config } = load('[cni]\nconf_dir = "/srv/cni"\n');
    const text = formatConfig(config);
    assert.deepEqual(JSON.parse(JSON.stringify(parse(text))), config);
    writeFileSync(join(dir, 'round.toml'), text);
    assert.deepEqual(loadConfig({ file: join(dir, 'round.toml') }).config, config);
  });
});
