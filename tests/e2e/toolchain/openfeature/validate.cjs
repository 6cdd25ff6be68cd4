// Validates a flagd flag file against flagd's published flag and targeting schemas, with
// @openfeature/flagd-core's strict validation (the schemas are compiled into that package).
//
// Usage: node validate.cjs FILE   (NODE_PATH must include the node_modules build.sh installed)
// Exits 0 and prints the flag keys when valid; exits 1 with the validation errors otherwise.
const fs = require('fs');
const { FlagdCore, MemoryStorage } = require('@openfeature/flagd-core');

const errors = [];
const logger = {
  error: (...a) => errors.push(a.join(' ')),
  warn: (...a) => errors.push(a.join(' ')),
  info: () => {},
  debug: () => {},
};
const text = fs.readFileSync(process.argv[2], 'utf8');
try {
  const storage = new MemoryStorage(logger);
  const keys = storage.setConfigurations(text, true);
  const core = new FlagdCore(storage, logger);
  if (errors.length > 0) throw new Error(errors.join('; '));
  console.log(JSON.stringify({ valid: true, flags: [...core.getFlags().keys()], changed: keys }));
} catch (e) {
  console.log(JSON.stringify({ valid: false, error: String(e && e.message ? e.message : e), logged: errors }));
  process.exit(1);
}
