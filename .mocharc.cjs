// Mocha's settings. The whole suite (unit, then end-to-end) runs when no test file is
// named; naming files (`mocha dist/test/unit/x.test.js` or `--spec …`) runs only those
// (mocha would otherwise add the configured spec to the named files).
const named = process.argv.slice(2).some((a) => a === '--spec' || /\.test\.js$/.test(a));
module.exports = {
  ...(named ? {} : { spec: ['dist/test/unit/**/*.test.js', 'dist/test/e2e/**/*.test.js'] }),
  timeout: 30000,
  'enable-source-maps': true,
  exit: true,
};
