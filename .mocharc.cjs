// Mocha's settings. The whole suite (unit, integration, then end-to-end) runs when no test
// file is named; naming files (`mocha dist/test/unit/x.test.js` or `--spec …`) runs only those
// (mocha would otherwise add the configured spec to the named files).
const named = process.argv.slice(2).some((a) => a === '--spec' || /\.test\.js$/.test(a));
module.exports = {
  ...(named ? {} : { spec: ['unit', 'integration', 'e2e'].map((tier) => `dist/test/${tier}/**/*.test.js`) }),
  timeout: 30000,
  'enable-source-maps': true,
  exit: true,
};
