/** Shared inputs for the container spec tests: a busybox-like image in a plain pod. */
import type { ImageConfig } from '../../src/images/manifest.js';
import type { ContainerSpecInput, CriContainerConfig, CriSecurityContext } from '../../src/containers/spec.js';

export function image(run: Partial<ImageConfig['run']> = {}): ImageConfig {
  return {
    architecture: 'amd64',
    os: 'linux',
    diffIds: [],
    run: {
      user: '',
      env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      entrypoint: [],
      cmd: ['sh'],
      workingDir: '',
      stopSignal: '',
      volumes: [],
      labels: {},
      exposedPorts: [],
      ...run,
    },
  };
}

export function securityContext(sc: Partial<CriSecurityContext> = {}): CriSecurityContext {
  return {
    privileged: false,
    run_as_username: '',
    readonly_rootfs: false,
    supplemental_groups: [],
    no_new_privs: false,
    masked_paths: [],
    readonly_paths: [],
    namespace_options: { network: 'POD', pid: 'CONTAINER', ipc: 'POD', target_id: '' },
    ...sc,
  };
}

export function config(c: Partial<CriContainerConfig> = {}): CriContainerConfig {
  return {
    command: [],
    args: [],
    working_dir: '',
    envs: [],
    mounts: [],
    devices: [],
    labels: {},
    annotations: {},
    tty: false,
    stdin: false,
    stdin_once: false,
    linux: { security_context: securityContext() },
    ...c,
  };
}

export const PASSWD = [
  'root:x:0:0:root:/root:/bin/sh',
  'daemon:x:1:1:daemon:/usr/sbin:/bin/false',
  '# a comment',
  'www-data:x:33:33:www-data:/var/www:/bin/false',
  'app:x:1000:1000:App:/home/app:/bin/sh',
  'broken line',
  '',
].join('\n');

export const GROUP = ['root:x:0:', 'daemon:x:1:', 'wheel:x:10:root,app', 'www-data:x:33:', 'audio:x:29:app', 'app:x:1000:', 'staff:x:50:daemon'].join('\n');

export function input(over: Partial<ContainerSpecInput> = {}): ContainerSpecInput {
  return {
    containerId: 'c0ffee',
    sandboxId: 'sb1',
    config: config(),
    image: image(),
    passwd: PASSWD,
    group: GROUP,
    rootfs: '/var/lib/berth/containers/c0ffee/rootfs',
    sandbox: {
      hostname: 'web-0',
      netnsPath: '/run/berth/ns/net/sb1',
      ipcnsPath: '/run/berth/ns/ipc/sb1',
      utsnsPath: '/run/berth/ns/uts/sb1',
      hostsPath: '/var/lib/berth/sandboxes/sb1/hosts',
      resolvConfPath: '/var/lib/berth/sandboxes/sb1/resolv.conf',
      hostnamePath: '/var/lib/berth/sandboxes/sb1/hostname',
      shmPath: '/var/lib/berth/sandboxes/sb1/shm',
      cgroupParent: '/kubepods/besteffort/pod1',
      hostNetwork: false,
      hostIpc: false,
      hostPid: false,
    },
    cgroupDriver: 'cgroupfs',
    minOomScoreAdj: 0,
    ...over,
  };
}

/** input() with the security context patched. */
export function withSc(sc: Partial<CriSecurityContext>, over: Partial<ContainerSpecInput> = {}): ContainerSpecInput {
  return input({ config: config({ linux: { security_context: securityContext(sc) } }), ...over });
}
