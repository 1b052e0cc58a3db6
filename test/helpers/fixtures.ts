/**
 * The test images (hack/test-images) served by a registry of the suite's own on
 * 127.0.0.1: started before the suite's tests, stopped after them.
 */
import { pushFixtures, type Fixtures } from '../../hack/test-images/oci.js';
import { startRegistry, type Registry } from './registry.js';

export interface FixtureRegistry {
  registry: Registry;
  fx: Fixtures;
}

/** Registers the mocha hooks; the returned object is filled in before the first test. */
export function useFixtureRegistry(): FixtureRegistry {
  const reg = {} as FixtureRegistry;
  before(async function () {
    this.timeout(120_000);
    reg.registry = await startRegistry();
    reg.fx = await pushFixtures(reg.registry.host);
  });
  after(async () => reg.registry?.stop());
  return reg;
}
