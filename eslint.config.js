// ESLint for the web pages' scripts (make lint): ES modules run by the browser, served as they are (no bundler).
// The vendored libraries (static/vendor/, copied from node_modules by `make install`) are not ours to lint.
const js = require('@eslint/js');
const globals = require('globals');

module.exports = [
  {ignores: ['src/sensorhub/web/static/vendor/', 'node_modules/', '.venv/']},
  {
    files: ['src/sensorhub/web/static/**/*.js'],
    ...js.configs.recommended,
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: 'module',
      // MQTT.js and Chart.js are classic scripts that the pages load first; the modules reach them as window.mqtt
      // and window.Chart.
      globals: {...globals.browser},
    },
  },
  {
    files: ['eslint.config.js'],
    ...js.configs.recommended,
    languageOptions: {sourceType: 'commonjs', globals: {...globals.node}},
  },
];
