import assert from 'node:assert/strict';
import { isKind } from '../../../src/common/errors.js';
import { classifySysctl, sysctlPath, validateSysctls } from '../../../src/sandbox/sysctls.js';

const NO_HOST = { network: false, ipc: false };

describe('sandbox: sysctls', () => {
  it('classifies names into the namespace that isolates them', () => {
    const table: Array<[string, string | undefined]> = [
      ['net.ipv4.ip_forward', 'net'],
      ['net/ipv4/ip_forward', 'net'],
      ['net.core.somaxconn', 'net'],
      ['net.ipv4.ip_unprivileged_port_start', 'net'],
      ['net.ipv4.ip_local_port_range', 'net'],
      ['net/ipv4/conf/eno2.100/rp_filter', 'net'],
      ['net.ipv6.conf.all.disable_ipv6', 'net'],
      ['net.core.netdev_max_backlog', undefined], // global: init netns only
      ['net.ipv4.tcp_mem', undefined],
      ['net.netfilter.nf_log_all_netns', undefined],
      ['kernel.shmmax', 'ipc'],
      ['kernel.shmall', 'ipc'],
      ['kernel.shm_rmid_forced', 'ipc'],
      ['kernel/shmmni', 'ipc'],
      ['kernel.msgmax', 'ipc'],
      ['kernel.msgmnb', 'ipc'],
      ['kernel.sem', 'ipc'],
      ['fs.mqueue.msg_max', 'ipc'],
      ['fs/mqueue/queues_max', 'ipc'],
      ['kernel.hostname', 'uts'],
      ['kernel.domainname', 'uts'],
      ['kernel.panic', undefined],
      ['kernel.semaphores', undefined],
      ['vm.max_map_count', undefined],
      ['fs.file-max', undefined],
      ['user.max_user_namespaces', undefined],
      ['net', undefined],
      ['net..ipv4', undefined],
      ['net/ipv4/../../kernel/panic', undefined],
      ['net.ipv4.ip_forward ', undefined],
      ['', undefined],
    ];
    for (const [name, want] of table) assert.equal(classifySysctl(name), want, name);
    assert.equal(sysctlPath('net.ipv4.ip_forward'), 'net/ipv4/ip_forward');
    assert.equal(sysctlPath('net/ipv4/conf/eno2.100/rp_filter'), 'net/ipv4/conf/eno2.100/rp_filter');
  });

  it('refuses what is not namespaced or would change the host, naming each', () => {
    validateSysctls({ 'net.ipv4.ip_forward': '1', 'kernel.shmmax': '1000', 'fs.mqueue.msg_max': '20' }, NO_HOST);
    validateSysctls({ 'kernel.shmmax': '1000' }, { network: true, ipc: false });
    validateSysctls({ 'net.core.somaxconn': '1000' }, { network: false, ipc: true });
    validateSysctls({}, { network: true, ipc: true });

    const refused = (sysctls: Record<string, string>, host = NO_HOST): string => {
      try {
        validateSysctls(sysctls, host);
      } catch (err) {
        assert.ok(isKind(err, 'InvalidArgument'));
        return err.message;
      }
      assert.fail(`accepted ${JSON.stringify(sysctls)}`);
    };
    assert.match(refused({ 'kernel.panic': '10' }), /sysctl "kernel.panic": not namespaced/);
    assert.match(
      refused({ 'net.ipv4.ip_forward': '1' }, { network: true, ipc: false }),
      /sysctl "net.ipv4.ip_forward": would change the host: the pod uses the host's network namespace/,
    );
    assert.match(
      refused({ 'kernel.shmmax': '1' }, { network: false, ipc: true }),
      /sysctl "kernel.shmmax": would change the host: the pod uses the host's IPC namespace/,
    );
    assert.match(refused({ 'kernel.hostname': 'x' }), /set the pod's hostname instead/);
    assert.match(refused({ 'net.core.netdev_budget': '5' }), /"net.core.netdev_budget": not namespaced/);
    assert.match(refused({ 'net/../kernel/panic': '1' }), /not a valid sysctl name/);
    assert.match(refused({ 'net.ipv4.ip_forward': '1\nkernel.panic=1' }), /line break/);
    const both = refused({ 'kernel.panic': '1', 'vm.swappiness': '1', 'net.core.somaxconn': '5' });
    assert.match(both, /"kernel.panic"/);
    assert.match(both, /"vm.swappiness"/);
    assert.doesNotMatch(both, /somaxconn/);
  });
});
