/**
 * The pure parts of berth's CNI client: environment, stdin, error objects and results
 * of every spec version. No root, no plugins.
 */
import assert from 'node:assert/strict';
import {
  cniArgs,
  cniEnv,
  compareVersions,
  failureMessage,
  pluginStdin,
  pluginTypeProblem,
  runtimeConfProblem,
  type CniRuntimeConf,
} from '../../../../src/sandbox/cni/protocol.js';
import { parseResult, podIps, type CniResult } from '../../../../src/sandbox/cni/result.js';

const rt: CniRuntimeConf = {
  containerId: 'abc123',
  netns: '/run/netns/x',
  ifName: 'eth0',
  args: [
    ['K8S_POD_NAMESPACE', 'default'],
    ['K8S_POD_NAME', 'web-0'],
  ],
  capabilityArgs: { portMappings: [{ hostPort: 8080, containerPort: 80, protocol: 'tcp' }], bandwidth: { ingressRate: 1 } },
};

describe('CNI protocol (pure)', () => {
  it('builds the environment, with IgnoreUnknown first and every bin dir in CNI_PATH', () => {
    assert.deepEqual(cniEnv('ADD', rt, ['/usr/lib/cni', '/opt/cni/bin']), {
      CNI_COMMAND: 'ADD',
      CNI_CONTAINERID: 'abc123',
      CNI_NETNS: '/run/netns/x',
      CNI_IFNAME: 'eth0',
      CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0',
      CNI_PATH: '/usr/lib/cni:/opt/cni/bin',
    });
    assert.equal(cniArgs([['IgnoreUnknown', '0']]), 'IgnoreUnknown=0');
    assert.equal(cniArgs([]), 'IgnoreUnknown=1');
  });

  it('inserts name and cniVersion, prevResult, and only the declared capabilities as runtimeConfig', () => {
    const list = { name: 'pods', cniVersion: '1.0.0' };
    const prev: CniResult = { cniVersion: '1.0.0', ips: [{ address: '10.1.0.2/24' }] };
    const portmap = { type: 'portmap', capabilities: { portMappings: true, bandwidth: false }, runtimeConfig: { stale: 1 } };
    assert.deepEqual(pluginStdin(list, portmap, prev, rt.capabilityArgs), {
      type: 'portmap',
      capabilities: { portMappings: true, bandwidth: false },
      name: 'pods',
      cniVersion: '1.0.0',
      prevResult: prev,
      runtimeConfig: { portMappings: rt.capabilityArgs!.portMappings },
    });
    // No capability declared: no runtimeConfig at all; first plugin: no prevResult.
    const bridge = { type: 'bridge', name: 'ignored', cniVersion: '0.1.0', bridge: 'cni0' };
    assert.deepEqual(pluginStdin(list, bridge, undefined, rt.capabilityArgs), { type: 'bridge', name: 'pods', cniVersion: '1.0.0', bridge: 'cni0' });
    // A declared capability the runtime has no value for is left out.
    assert.deepEqual(pluginStdin(list, { type: 'x', capabilities: { ips: true } }, undefined, rt.capabilityArgs), {
      type: 'x',
      capabilities: { ips: true },
      name: 'pods',
      cniVersion: '1.0.0',
    });
  });

  it('refuses runtime confs and plugin types that break the spec', () => {
    assert.equal(runtimeConfProblem(rt), undefined);
    assert.match(runtimeConfProblem({ ...rt, containerId: '-x' }) ?? '', /container id/);
    assert.match(runtimeConfProblem({ ...rt, ifName: 'a-very-long-name0' }) ?? '', /interface name/);
    assert.match(runtimeConfProblem({ ...rt, ifName: 'eth 0' }) ?? '', /interface name/);
    assert.match(runtimeConfProblem({ ...rt, args: [['K', 'a;b']] }) ?? '', /';', '='/);
    assert.match(runtimeConfProblem({ ...rt, args: [['K=1', 'v']] }) ?? '', /';', '='/);
    assert.equal(runtimeConfProblem({ ...rt, args: [['K8S_POD_UID', '']] }), undefined);
    assert.equal(pluginTypeProblem('bridge'), undefined);
    assert.ok(pluginTypeProblem('../bin/sh'));
    assert.ok(pluginTypeProblem(''));
  });

  it('compares spec versions numerically', () => {
    assert.equal(compareVersions('0.4.0', '0.3.1'), 1);
    assert.equal(compareVersions('0.10.0', '0.4.0'), 1);
    assert.equal(compareVersions('1.0.0', '1.0'), 0);
    assert.equal(compareVersions('', '0.2.0'), -1);
  });

  it('reads the CNI error object, else stderr, else how the plugin ended', () => {
    const obj = JSON.stringify({ cniVersion: '1.0.0', code: 7, msg: 'failed to allocate', details: 'range is full' });
    assert.equal(failureMessage(obj, 'ignored', { code: 1, signal: null }), 'failed to allocate: range is full');
    assert.equal(failureMessage('{"code":11}', '', { code: 1, signal: null }), 'CNI error code 11');
    assert.equal(failureMessage('', 'panic: boom\n', { code: 2, signal: null }), 'panic: boom (exit code 2)');
    assert.equal(failureMessage('', '', { code: null, signal: 'SIGSEGV' }), 'killed by SIGSEGV');
  });
});

describe('CNI results (pure)', () => {
  const v100 = {
    cniVersion: '1.0.0',
    interfaces: [
      { name: 'cni0', mac: 'aa:bb' },
      { name: 'veth1', mac: 'cc:dd' },
      { name: 'eth0', mac: 'ee:ff', sandbox: '/run/netns/x' },
    ],
    ips: [
      { address: 'fd00::5/64', gateway: 'fd00::1', interface: 2 },
      { address: '10.88.0.5/16', gateway: '10.88.0.1', interface: 2 },
    ],
    routes: [{ dst: '0.0.0.0/0' }],
    dns: {},
  };

  it('accepts a 1.0.0 result and gives the pod IPs, IPv4 first, without prefix', () => {
    const r = parseResult(JSON.stringify(v100), '1.0.0');
    assert.ok(typeof r !== 'string');
    assert.deepEqual(podIps(r), ['10.88.0.5', 'fd00::5']);
  });

  it('accepts 0.3.1 / 0.4.0 results with ips[].version and keeps their fields for prevResult', () => {
    const v040 = { ...v100, cniVersion: '0.4.0', ips: [{ version: '4', address: '10.88.0.7/16', gateway: '10.88.0.1', interface: 2 }] };
    const r = parseResult(JSON.stringify(v040), '0.4.0');
    assert.ok(typeof r !== 'string');
    assert.deepEqual(r, v040);
    assert.deepEqual(podIps(r), ['10.88.0.7']);
    const r031 = parseResult(JSON.stringify({ ...v040, cniVersion: '0.3.1' }), '0.3.1');
    assert.ok(typeof r031 !== 'string');
    assert.deepEqual(podIps(r031), ['10.88.0.7']);
  });

  it('accepts a 0.2.0 result (ip4/ip6) and an IPAM-only result', () => {
    const r = parseResult(JSON.stringify({ cniVersion: '0.2.0', ip4: { ip: '10.1.2.3/24', gateway: '10.1.2.1' }, ip6: { ip: 'fd01::3/64' } }), '0.2.0');
    assert.ok(typeof r !== 'string');
    assert.deepEqual(podIps(r), ['10.1.2.3', 'fd01::3']);
    const ipam = parseResult(JSON.stringify({ ips: [{ address: '10.9.0.4/24' }] }), '1.0.0');
    assert.ok(typeof ipam !== 'string');
    assert.equal(ipam.cniVersion, '1.0.0');
    assert.deepEqual(podIps(ipam), ['10.9.0.4']);
  });

  it('leaves out host-side addresses', () => {
    const r: CniResult = {
      cniVersion: '1.0.0',
      interfaces: [{ name: 'cni0' }, { name: 'eth0', sandbox: '/x' }],
      ips: [
        { address: '10.0.0.1/24', interface: 0 },
        { address: '10.0.0.2/24', interface: 1 },
      ],
    };
    assert.deepEqual(podIps(r), ['10.0.0.2']);
  });

  it('says why a result is unusable', () => {
    assert.equal(parseResult('', '1.0.0'), 'the plugin printed no result');
    assert.match(parseResult('nope', '1.0.0') as string, /not JSON/);
    assert.equal(parseResult('[]', '1.0.0'), 'the result is not a JSON object');
    assert.match(parseResult('{"ips":[{"address":"10.0.0.1"}]}', '1.0.0') as string, /ips\[0\]\.address "10\.0\.0\.1" is not an address with prefix length/);
    assert.match(parseResult('{"interfaces":[],"ips":[{"address":"10.0.0.1/8","interface":0}]}', '1.0.0') as string, /not an index/);
    assert.match(parseResult('{"interfaces":[{}]}', '1.0.0') as string, /interfaces\[0\] has no "name"/);
  });
});
