// Validates a HAR file with har-validator (the HAR 1.2 JSON schema).
// Usage: node har_validate.mjs <file.har>; prints {"valid": true} or the errors.
import { readFileSync } from 'node:fs';
import validator from 'har-validator';

const har = JSON.parse(readFileSync(process.argv[2], 'utf8'));
try {
  await validator.har(har);
  console.log(JSON.stringify({ valid: true, entries: har.log.entries.length }));
} catch (e) {
  console.log(JSON.stringify({ valid: false, errors: e.errors ?? String(e) }));
}
