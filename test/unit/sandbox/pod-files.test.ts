import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isKind } from '../../../src/common/errors.js';
import { isMountPoint, mountPoints } from '../../../src/common/mount.js';
import { hostsFile, mountShm, resolvConf, validateHostname, writePodFiles } from '../../../src/sandbox/pod-files.js';

const HOST_RESOLV = '# host\nnameserver 192.0.2.53\nsearch lan\n';
const invalid = (e: unknown): boolean => isKind(e, 'InvalidArgument');

describe('sandbox: pod files', () => {
  describe('resolvConf', () => {
    it('renders a DNSConfig as nameserver, search and options lines', () => {
      assert.equal(
        resolvConf(
          { servers: ['10.96.0.10', 'fd00::10'], searches: ['ns1.svc.cluster.local', 'svc.cluster.local', 'cluster.local'], options: ['ndots:5', 'edns0'] },
          HOST_RESOLV,
        ),
        'nameserver 10.96.0.10\nnameserver fd00::10\nsearch ns1.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 edns0\n',
      );
      assert.equal(resolvConf({ servers: ['8.8.8.8'], searches: [], options: [] }, HOST_RESOLV), 'nameserver 8.8.8.8\n');
      assert.equal(resolvConf({ servers: [], searches: ['example.com.'], options: [] }, HOST_RESOLV), 'search example.com.\n');
    });

    it("uses the host's file as is without a DNSConfig (or with an empty one)", () => {
      assert.equal(resolvConf(undefined, HOST_RESOLV), HOST_RESOLV);
      assert.equal(resolvConf({ servers: [], searches: [], options: [] }, HOST_RESOLV), HOST_RESOLV);
    });

    it('refuses bad servers, injected lines and unbounded lists', () => {
      const dns = (d: Partial<{ servers: string[]; searches: string[]; options: string[] }>) => ({
        servers: [],
        searches: [],
        options: [],
        ...d,
      });
      assert.throws(() => resolvConf(dns({ servers: ['dns.example.com'] }), ''), /nameserver "dns.example.com" is not an IP address/);
      assert.throws(() => resolvConf(dns({ servers: ['10.0.0.1\nnameserver 6.6.6.6'] }), ''), invalid);
      assert.throws(() => resolvConf(dns({ servers: ['1.1.1.1', '1.0.0.1', '8.8.8.8', '8.8.4.4'] }), ''), /at most 3/);
      assert.throws(() => resolvConf(dns({ searches: ['a.com\nnameserver 6.6.6.6'] }), ''), invalid);
      assert.throws(() => resolvConf(dns({ searches: ['a b'] }), ''), invalid);
      assert.throws(() => resolvConf(dns({ searches: Array.from({ length: 33 }, (_, i) => `d${i}.com`) }), ''), /at most 32/);
      assert.throws(() => resolvConf(dns({ searches: Array.from({ length: 20 }, (_, i) => `${'x'.repeat(120)}.d${i}`) }), ''), /at most 2048/);
      assert.throws(() => resolvConf(dns({ options: ['ndots:5 rotate'] }), ''), invalid);
      assert.throws(() => resolvConf(dns({ options: ['a\nb'] }), ''), invalid);
      resolvConf(dns({ searches: Array.from({ length: 32 }, (_, i) => `d${i}.example.com`) }), '');
    });
  });

  describe('hostsFile', () => {
    it('writes the kubelet-style file with one line per pod IP', () => {
      assert.equal(
        hostsFile('web-0', ['10.88.0.5', 'fd00:88::5']),
        '# Kubernetes-managed hosts file.\n' +
          '127.0.0.1\tlocalhost\n' +
          '::1\tlocalhost ip6-localhost ip6-loopback\n' +
          'fe00::0\tip6-localnet\n' +
          'ff00::0\tip6-mcastprefix\n' +
          'fe00::1\tip6-allnodes\n' +
          'fe00::2\tip6-allrouters\n' +
          '10.88.0.5\tweb-0\n' +
          'fd00:88::5\tweb-0\n',
      );
    });

    it('appends host aliases and checks them', () => {
      const text = hostsFile(
        'web-0',
        ['10.88.0.5'],
        [
          { ip: '10.1.2.3', hostnames: ['foo.local', 'bar.local'] },
          { ip: '::1', hostnames: ['six'] },
        ],
      );
      assert.ok(text.endsWith('10.88.0.5\tweb-0\n\n# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n::1\tsix\n'), text);
      assert.throws(() => hostsFile('web-0', [], [{ ip: 'nope', hostnames: ['a'] }]), invalid);
      assert.throws(() => hostsFile('web-0', [], [{ ip: '10.0.0.1', hostnames: ['a\n6.6.6.6 evil'] }]), invalid);
      assert.throws(() => hostsFile('web-0', ['10.0.0.300']), invalid);
    });
  });

  it('validates hostnames as RFC 1123 names of at most 63 characters', () => {
    for (const ok of ['a', 'web-0', 'Web-0', 'x'.repeat(63), 'my.pod-name', '0abc']) validateHostname(ok);
    for (const bad of ['', 'x'.repeat(64), '-web', 'web-', 'web_0', 'web 0', 'a..b', '.a', 'a.', 'ünï', 'a\nb']) {
      assert.throws(() => validateHostname(bad), invalid, JSON.stringify(bad));
    }
  });

  describe('on disk', () => {
    let base: string;
    beforeEach(() => (base = mkdtempSync(join(tmpdir(), 'berth-podfiles-'))));
    afterEach(() => {
      for (const p of mountPoints()
        .filter((m) => m.startsWith(base + '/'))
        .reverse())
        execFileSync('umount', ['-l', p]);
      rmSync(base, { recursive: true, force: true });
    });

    it('writes hostname, resolv.conf and hosts atomically with mode 0644', async () => {
      const dir = join(base, 'sandbox');
      const oldMask = process.umask(0o077);
      try {
        const files = { hostname: 'web-0', resolvConf: 'nameserver 10.96.0.10\n', hosts: hostsFile('web-0', ['10.88.0.5']) };
        const paths = await writePodFiles(dir, files);
        assert.deepEqual(paths, { hostname: join(dir, 'hostname'), resolvConf: join(dir, 'resolv.conf'), hosts: join(dir, 'hosts') });
        assert.equal(readFileSync(paths.hostname, 'utf8'), 'web-0\n');
        assert.equal(readFileSync(paths.resolvConf, 'utf8'), files.resolvConf);
        assert.equal(readFileSync(paths.hosts, 'utf8'), files.hosts);
        for (const p of Object.values(paths)) assert.equal(statSync(p).mode & 0o777, 0o644, p);

        // Rewriting replaces the file (a new inode: a reader never sees half a file).
        const inode = statSync(paths.resolvConf).ino;
        await writePodFiles(dir, { ...files, resolvConf: 'nameserver 10.96.0.11\n' });
        assert.equal(readFileSync(paths.resolvConf, 'utf8'), 'nameserver 10.96.0.11\n');
        assert.notEqual(statSync(paths.resolvConf).ino, inode);
        assert.deepEqual(readdirSync(dir).sort(), ['hostname', 'hosts', 'resolv.conf']);
      } finally {
        process.umask(oldMask);
      }
      await assert.rejects(writePodFiles(dir, { hostname: 'bad_name', resolvConf: '', hosts: '' }), invalid);
    });

    it('fails cleanly when the dir cannot be written', async () => {
      const file = join(base, 'file');
      writeFileSync(file, '');
      await assert.rejects(writePodFiles(join(file, 'sandbox'), { hostname: 'a', resolvConf: '', hosts: '' }));
    });

    it('refuses a nonsense shm size', async () => {
      const shm = join(base, 'shm');
      await assert.rejects(mountShm(shm, -1), invalid);
      await assert.rejects(mountShm(shm, 1.5), invalid);
      assert.equal(isMountPoint(shm), false);
    });
  });
});
