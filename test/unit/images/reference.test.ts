import assert from 'node:assert/strict';
import { isKind } from '../../../src/common/errors.js';
import {
  digestedName,
  formatReference,
  isImageId,
  parseReference,
  registryHost,
  repositoryName,
  taggedName,
  type ImageReference,
} from '../../../src/images/reference.js';

const HEX64 = '0123456789abcdef'.repeat(4);
const HEX128 = '0123456789abcdef'.repeat(8);
const SHA256 = `sha256:${HEX64}`;
const SHA512 = `sha512:${HEX128}`;

/** Asserts that parsing fails with InvalidArgument, a message naming the input, and `what`. */
function assertRejects(input: string, what: string | RegExp): void {
  assert.throws(
    () => parseReference(input),
    (err: unknown) => {
      assert.ok(isKind(err, 'InvalidArgument'), `expected InvalidArgument, got ${String(err)}`);
      assert.ok(err.message.startsWith(`invalid image reference ${JSON.stringify(input)}: `), `message does not name the input: ${err.message}`);
      if (typeof what === 'string') assert.ok(err.message.includes(what), `${err.message}\n  lacks: ${what}`);
      else assert.match(err.message, what);
      return true;
    },
    `accepted ${JSON.stringify(input)}`,
  );
}

describe('images: reference', () => {
  describe('parseReference accepts and normalises', () => {
    // [input, domain, path, tag, digest]
    const cases: [string, string, string, string | undefined, string | undefined][] = [
      // Docker Hub: one word is an official image under library/.
      ['busybox', 'docker.io', 'library/busybox', 'latest', undefined],
      ['busybox:1.36', 'docker.io', 'library/busybox', '1.36', undefined],
      ['user/app', 'docker.io', 'user/app', 'latest', undefined],
      ['user/app:v1', 'docker.io', 'user/app', 'v1', undefined],
      ['a/b/c/d', 'docker.io', 'a/b/c/d', 'latest', undefined],
      ['docker.io/busybox', 'docker.io', 'library/busybox', 'latest', undefined],
      ['docker.io/library/busybox:latest', 'docker.io', 'library/busybox', 'latest', undefined],
      ['docker.io/user/app', 'docker.io', 'user/app', 'latest', undefined],
      ['index.docker.io/busybox', 'docker.io', 'library/busybox', 'latest', undefined],
      ['index.docker.io/user/app:v1', 'docker.io', 'user/app', 'v1', undefined],
      ['registry-1.docker.io/nginx', 'docker.io', 'library/nginx', 'latest', undefined],
      ['registry-1.docker.io/library/nginx:1.25', 'docker.io', 'library/nginx', '1.25', undefined],
      ['Docker.IO/busybox', 'docker.io', 'library/busybox', 'latest', undefined],
      // Other registries: the first component has a '.' or ':' or is localhost; no library/.
      ['localhost/app', 'localhost', 'app', 'latest', undefined],
      ['localhost:5000/busybox', 'localhost:5000', 'busybox', 'latest', undefined],
      ['localhost:5000/team/app:dev', 'localhost:5000', 'team/app', 'dev', undefined],
      ['myregistry:5000/app', 'myregistry:5000', 'app', 'latest', undefined],
      ['host.tld/x', 'host.tld', 'x', 'latest', undefined],
      ['quay.io/coreos/etcd:v3.5.0', 'quay.io', 'coreos/etcd', 'v3.5.0', undefined],
      ['registry.k8s.io/pause:3.9', 'registry.k8s.io', 'pause', '3.9', undefined],
      ['gcr.io/project/sub/image', 'gcr.io', 'project/sub/image', 'latest', undefined],
      ['example.com:443/team/app', 'example.com:443', 'team/app', 'latest', undefined],
      ['My-Registry.Example.COM/app', 'My-Registry.Example.COM', 'app', 'latest', undefined],
      ['a.b-c.d/x', 'a.b-c.d', 'x', 'latest', undefined],
      ['xn--bcher-kva.example/x', 'xn--bcher-kva.example', 'x', 'latest', undefined],
      ['127.0.0.1/x', '127.0.0.1', 'x', 'latest', undefined],
      ['127.0.0.1:5000/x:1', '127.0.0.1:5000', 'x', '1', undefined],
      ['[::1]/x', '[::1]', 'x', 'latest', undefined],
      ['[::1]:5000/x', '[::1]:5000', 'x', 'latest', undefined],
      ['[2001:DB8::1]:5000/team/app:v1', '[2001:DB8::1]:5000', 'team/app', 'v1', undefined],
      // Path component separators.
      ['a0/b.c/d_e/f__g/h-i/j---k', 'docker.io', 'a0/b.c/d_e/f__g/h-i/j---k', 'latest', undefined],
      ['a.b/c', 'a.b', 'c', 'latest', undefined],
      ['0a/1/b2', 'docker.io', '0a/1/b2', 'latest', undefined],
      ['x.y.z', 'docker.io', 'library/x.y.z', 'latest', undefined],
      // Tags.
      ['busybox:_', 'docker.io', 'library/busybox', '_', undefined],
      ['busybox:V1.2_rc-3', 'docker.io', 'library/busybox', 'V1.2_rc-3', undefined],
      ['busybox:1.-_.', 'docker.io', 'library/busybox', '1.-_.', undefined],
      [`busybox:${'t'.repeat(128)}`, 'docker.io', 'library/busybox', 't'.repeat(128), undefined],
      // Digests: pinned by digest gets no default tag; tag and digest together keep both.
      [`busybox@${SHA256}`, 'docker.io', 'library/busybox', undefined, SHA256],
      [`busybox:1.36@${SHA256}`, 'docker.io', 'library/busybox', '1.36', SHA256],
      [`localhost:5000/x@${SHA256}`, 'localhost:5000', 'x', undefined, SHA256],
      [`[::1]:5000/x:t@${SHA256}`, '[::1]:5000', 'x', 't', SHA256],
      [`gcr.io/x@${SHA512}`, 'gcr.io', 'x', undefined, SHA512],
      // Bare names that look like hosts are Docker Hub repositories, as in Docker.
      ['localhost', 'docker.io', 'library/localhost', 'latest', undefined],
      ['localhost:5000', 'docker.io', 'library/localhost', '5000', undefined],
      ['example.com', 'docker.io', 'library/example.com', 'latest', undefined],
      // Only the bare 64-hex form is an image ID; with a tag or a shorter length it is a name.
      [`${HEX64}:latest`, 'docker.io', `library/${HEX64}`, 'latest', undefined],
      [HEX64.slice(1), 'docker.io', `library/${HEX64.slice(1)}`, 'latest', undefined],
      [`docker.io/library/sha256:${HEX64}`, 'docker.io', 'library/sha256', HEX64, undefined],
      // The name limit of 255 counts the normalised name: "docker.io/" + 245.
      [`u/${'a'.repeat(243)}`, 'docker.io', `u/${'a'.repeat(243)}`, 'latest', undefined],
    ];

    for (const [input, domain, path, tag, digest] of cases) {
      it(input.length > 80 ? `${input.slice(0, 77)}...` : input, () => {
        const expected: ImageReference = { domain, path };
        if (tag !== undefined) expected.tag = tag;
        if (digest !== undefined) expected.digest = digest;
        const ref = parseReference(input);
        assert.deepEqual(ref, expected);
        assert.ok(!('tag' in ref) || ref.tag !== undefined, 'no tag key set to undefined');
        assert.ok(!('digest' in ref) || ref.digest !== undefined, 'no digest key set to undefined');
        assert.deepEqual(parseReference(formatReference(ref)), ref, 'the formatted reference parses back the same');
      });
    }
  });

  describe('parseReference rejects', () => {
    // [input, part of the message saying what is wrong]
    const cases: [string, string | RegExp][] = [
      ['', 'it is empty'],
      [' busybox', 'leading or trailing whitespace'],
      ['busybox ', 'leading or trailing whitespace'],
      ['\tbusybox', 'leading or trailing whitespace'],
      ['busybox\n', 'leading or trailing whitespace'],
      ['busy box', 'repository path component "busy box"'],
      // Image IDs where a reference is expected.
      [HEX64, 'looks like an image ID'],
      [SHA256, 'looks like an image ID'],
      // Uppercase is allowed in the registry host only; a first component without '.'
      // or ':' is a path component, not a host.
      ['Busybox', 'repository path "Busybox" must be lowercase'],
      ['user/App', 'repository path "user/App" must be lowercase'],
      ['Foo/bar', 'repository path "Foo/bar" must be lowercase'],
      ['LOCALHOST/x', 'repository path "LOCALHOST/x" must be lowercase'],
      ['docker.io/Library/busybox', 'repository path "Library/busybox" must be lowercase'],
      ['localhost:5000/App:v1', 'repository path "App" must be lowercase'],
      [HEX64.toUpperCase(), 'must be lowercase'],
      // Path components.
      ['a//b', 'has an empty component'],
      ['/busybox', 'has an empty component'],
      ['busybox/', 'has an empty component'],
      ['docker.io/', 'the repository path is empty'],
      ['localhost:5000/', 'the repository path is empty'],
      [':latest', 'the repository name is empty'],
      [`@${SHA256}`, 'the repository name is empty'],
      ['a..b', 'component "a..b"'],
      ['a_-b', 'component "a_-b"'],
      ['a___b', 'component "a___b"'],
      ['-a', 'component "-a"'],
      ['a-', 'component "a-"'],
      ['.a', 'component ".a"'],
      ['_a', 'component "_a"'],
      ['a/.b', 'component ".b"'],
      ['a%b', 'component "a%b"'],
      ['caf\u00e9', 'component "caf\u00e9"'],
      // Registries.
      ['a_b.com/x', 'registry host "a_b.com" is not a valid host name'],
      ['-a.com/x', 'registry host "-a.com" is not a valid host name'],
      ['a-.com/x', 'registry host "a-.com" is not a valid host name'],
      ['a..com/x', 'registry host "a..com" is not a valid host name'],
      ['.com/x', 'registry host ".com" is not a valid host name'],
      ['host:/x', 'registry port "" must be a number'],
      ['host:abc/x', 'registry port "abc" must be a number'],
      [':5000/x', 'registry host "" is not a valid host name'],
      ['host:5000:6000/x', 'an IPv6 address must be written in brackets'],
      ['::1/x', 'an IPv6 address must be written in brackets'],
      ['[::1/x', `registry host "[::1" opens '[' without closing it`],
      ['[g::1]:5000/x', 'registry host "[g::1]" is not a valid IPv6 address'],
      ['[]:5000/x', 'registry host "[]" is not a valid IPv6 address'],
      ['[]/x', 'repository path component "[]"'],
      ['[::1]x/y', 'has "x" after its IPv6 address'],
      ['[::1]:http/x', 'registry port "http" must be a number'],
      ['https://docker.io/busybox', 'a URL scheme such as "https://"'],
      ['busybox:a/b', 'registry port "a" must be a number'],
      // Tags.
      ['busybox:', "the tag after ':' is empty"],
      ['busybox:-x', 'tag "-x" must start with a letter, digit or \'_\''],
      ['busybox:.x', 'tag ".x" must start'],
      ['busybox:t!', 'tag "t!" must start'],
      ['busybox:t+1', 'tag "t+1" must start'],
      ['busybox:t:1', 'repository path component "busybox:t"'],
      [`busybox:${'t'.repeat(129)}`, 'the tag is 129 characters long; the maximum is 128'],
      // Digests.
      ['busybox@', "the digest after '@' is empty"],
      ['busybox@sha256', 'digest "sha256" is not of the form <algorithm>:<hex>'],
      ['busybox@sha256:', 'must have exactly 64 lowercase hex digits after "sha256:"'],
      ['busybox@sha256:abc', 'must have exactly 64 lowercase hex digits after "sha256:"'],
      [`busybox@sha256:${HEX64.slice(1)}`, 'must have exactly 64 lowercase hex digits'],
      [`busybox@sha256:${HEX64}0`, 'must have exactly 64 lowercase hex digits'],
      [`busybox@sha256:${HEX64.toUpperCase()}`, 'must have exactly 64 lowercase hex digits'],
      [`busybox@sha256:${'g'.repeat(64)}`, 'must have exactly 64 lowercase hex digits'],
      [`busybox@sha512:${HEX64}`, 'must have exactly 128 lowercase hex digits after "sha512:"'],
      [`busybox@md5:${HEX64.slice(0, 32)}`, 'uses the unsupported algorithm "md5" (supported: sha256, sha512)'],
      [`busybox@SHA256:${HEX64}`, 'uses the unsupported algorithm "SHA256"'],
      [`busybox@${SHA256}@${SHA256}`, "it has more than one '@'"],
      [`busybox@${SHA256}:latest`, 'must have exactly 64 lowercase hex digits'],
      // The name limit of 255 counts the normalised name.
      [`u/${'a'.repeat(244)}`, `the repository name is 256 characters long ("docker.io/u/${'a'.repeat(244)}"); the maximum is 255`],
      ['a'.repeat(240), 'the repository name is 258 characters long'],
    ];

    for (const [input, what] of cases) {
      it(JSON.stringify(input.length > 80 ? `${input.slice(0, 77)}...` : input), () => assertRejects(input, what));
    }
  });

  describe('parseReference error messages', () => {
    const cases: [string, string][] = [
      ['', 'invalid image reference "": it is empty'],
      [' busybox', 'invalid image reference " busybox": it has leading or trailing whitespace'],
      [HEX64, `invalid image reference "${HEX64}": it looks like an image ID, not a reference; ` + 'look the image up by ID instead'],
      ['User/app', 'invalid image reference "User/app": repository path "User/app" must be lowercase'],
      [
        'a__-b',
        'invalid image reference "a__-b": repository path component "a__-b" must be lowercase letters and digits, ' +
          "optionally joined by '.', '_', '__' or '-'",
      ],
      [
        'busybox:-1',
        'invalid image reference "busybox:-1": tag "-1" must start with a letter, digit or \'_\' and hold only ' + "letters, digits, '_', '.' and '-'",
      ],
      [
        'busybox@sha256:abc',
        'invalid image reference "busybox@sha256:abc": digest "sha256:abc" must have exactly 64 lowercase hex digits ' + 'after "sha256:"',
      ],
      [
        'fe80::1/x',
        'invalid image reference "fe80::1/x": registry "fe80::1" is not host[:port]; an IPv6 address must be written ' + 'in brackets, as in [::1]:5000',
      ],
    ];
    for (const [input, message] of cases) {
      it(JSON.stringify(input.length > 40 ? `${input.slice(0, 37)}...` : input), () => {
        assert.throws(() => parseReference(input), { name: 'BerthError', kind: 'InvalidArgument', message });
      });
    }
  });

  describe('formatting', () => {
    it('formats fully qualified names', () => {
      const cases: [string, string][] = [
        ['busybox', 'docker.io/library/busybox:latest'],
        ['index.docker.io/user/app:v1', 'docker.io/user/app:v1'],
        [`localhost:5000/x@${SHA256}`, `localhost:5000/x@${SHA256}`],
        [`h.tld/x:t@${SHA256}`, `h.tld/x:t@${SHA256}`],
        ['[::1]:5000/x', '[::1]:5000/x:latest'],
      ];
      for (const [input, formatted] of cases) assert.equal(formatReference(parseReference(input)), formatted, input);
    });

    it('names the repository without tag or digest', () => {
      assert.equal(repositoryName(parseReference('busybox:1')), 'docker.io/library/busybox');
      assert.equal(repositoryName(parseReference(`quay.io/a/b:t@${SHA256}`)), 'quay.io/a/b');
    });

    it('gives the tagged name only when there is a tag', () => {
      assert.equal(taggedName(parseReference('busybox')), 'docker.io/library/busybox:latest');
      assert.equal(taggedName(parseReference(`busybox:1@${SHA256}`)), 'docker.io/library/busybox:1');
      assert.equal(taggedName(parseReference(`busybox@${SHA256}`)), undefined);
    });

    it('gives the digested name for a manifest digest', () => {
      assert.equal(digestedName(parseReference('busybox:1'), SHA256), `docker.io/library/busybox@${SHA256}`);
      assert.equal(digestedName(parseReference(`h:1/x:t@${SHA512}`), SHA256), `h:1/x@${SHA256}`);
      assert.equal(digestedName(parseReference('h.tld/x'), SHA512), `h.tld/x@${SHA512}`);
    });

    it('refuses a malformed manifest digest', () => {
      for (const bad of ['', HEX64, 'sha256:abc', `md5:${HEX64}`, `sha256:${HEX64.toUpperCase()}`]) {
        assert.throws(
          () => digestedName(parseReference('busybox'), bad),
          (err: unknown) => {
            assert.ok(isKind(err, 'InvalidArgument'));
            assert.ok(err.message.startsWith(`manifest digest ${JSON.stringify(bad)} `), err.message);
            return true;
          },
        );
      }
      assert.throws(() => digestedName(parseReference('busybox'), 'sha256:abc'), {
        message: 'manifest digest "sha256:abc" must have exactly 64 lowercase hex digits after "sha256:"',
      });
    });
  });

  describe('isImageId', () => {
    const cases: [string, boolean][] = [
      [HEX64, true],
      [SHA256, true],
      ['', false],
      [HEX64.slice(1), false],
      [`${HEX64}0`, false],
      [HEX64.toUpperCase(), false],
      [`sha256:${HEX64.toUpperCase()}`, false],
      [`sha512:${HEX128}`, false],
      [`sha256:${HEX64.slice(1)}`, false],
      [` ${HEX64}`, false],
      [`${HEX64}:latest`, false],
      [`busybox@${SHA256}`, false],
      ['busybox', false],
    ];
    for (const [input, expected] of cases) {
      it(`${JSON.stringify(input)} → ${expected}`, () => assert.equal(isImageId(input), expected));
    }
  });

  describe('registryHost', () => {
    const cases: [string, string][] = [
      ['docker.io', 'registry-1.docker.io'],
      ['quay.io', 'quay.io'],
      ['localhost:5000', 'localhost:5000'],
      ['[::1]:5000', '[::1]:5000'],
    ];
    for (const [domain, host] of cases) {
      it(`${domain} → ${host}`, () => assert.equal(registryHost(domain), host));
    }

    it('reaches Docker Hub for any spelling the parser normalises', () => {
      for (const input of ['busybox', 'index.docker.io/x/y', 'registry-1.docker.io/x/y']) {
        assert.equal(registryHost(parseReference(input).domain), 'registry-1.docker.io', input);
      }
    });
  });
});
