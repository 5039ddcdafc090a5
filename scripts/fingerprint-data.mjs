// Reduces the Apify fingerprint-generator's Bayesian network (real-world browser
// fingerprints, Apache-2.0) to the compact table the broker picks fingerprints from
// (src/browser/fingerprints.json): for each desktop OS, the most common coherent
// combinations of client-hint platform version and architecture, CPU cores, device memory,
// screen, device pixel ratio and WebGL vendor/renderer among desktop Chrome, each with how
// often it was drawn. Sampling is seeded, so a run with the same package version gives the
// same table. Run by scripts/fingerprint-data.sh.
import { FingerprintGenerator } from 'fingerprint-generator';

const SAMPLES = 4000;
const KEEP = 40;
let state = 0x2545f491;
Math.random = () => {
  // xorshift32: the generator's draws become reproducible.
  state ^= state << 13;
  state ^= state >>> 17;
  state ^= state << 5;
  return (state >>> 0) / 4294967296;
};

const generator = new FingerprintGenerator();
const table = {};
for (const os of ['windows', 'macos', 'linux']) {
  const counts = new Map();
  for (let i = 0; i < SAMPLES; i++) {
    const { fingerprint: fp } = generator.getFingerprint({
      browsers: [{ name: 'chrome' }],
      operatingSystems: [os],
      devices: ['desktop'],
    });
    const n = fp.navigator;
    const uad = n.userAgentData || {};
    const gl = fp.videoCard || {};
    const row = {
      platform: n.platform,
      platform_version: uad.platformVersion || '',
      architecture: uad.architecture || 'x86',
      bitness: uad.bitness || '64',
      hardware_concurrency: n.hardwareConcurrency,
      device_memory: n.deviceMemory,
      screen: [fp.screen.width, fp.screen.height],
      device_pixel_ratio: fp.screen.devicePixelRatio,
      webgl_vendor: gl.vendor,
      webgl_renderer: gl.renderer,
    };
    // Only what a person's Chrome on that OS shows: a software renderer is what
    // detectors flag as headless, and fields the network left empty are not a reading.
    const complete =
      row.webgl_vendor && row.webgl_renderer && !/swiftshader|llvmpipe/i.test(row.webgl_renderer) &&
      Number.isInteger(row.hardware_concurrency) && row.hardware_concurrency > 0 && row.hardware_concurrency <= 64 &&
      typeof row.device_memory === 'number' && row.device_memory > 0 && row.device_memory <= 32 &&
      row.screen[0] >= 1024 && row.screen[1] >= 600 && row.device_pixel_ratio >= 1 &&
      (os !== 'windows' || row.platform === 'Win32') &&
      (os !== 'macos' || row.platform === 'MacIntel') &&
      (os !== 'linux' || row.platform === 'Linux x86_64') &&
      (os === 'macos' || !/apple/i.test(row.webgl_renderer + row.webgl_vendor)) &&
      (os === 'windows' ? /^\d+\.\d+\.\d+$/.test(row.platform_version) : true) &&
      (os === 'macos' ? /^\d+\.\d+\.\d+$/.test(row.platform_version) : row.platform_version !== undefined);
    if (!complete) continue;
    const key = JSON.stringify(row);
    counts.set(key, (counts.get(key) || 0) + 1);
  }
  table[os] = [...counts.entries()]
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
    .slice(0, KEEP)
    .map(([key, weight]) => ({ weight, ...JSON.parse(key) }));
}
const source = {
  package: 'fingerprint-generator',
  version: process.env.FINGERPRINT_GENERATOR_VERSION,
  license: 'Apache-2.0',
  samples_per_os: SAMPLES,
};
// One row a line: a change to the table reads as a diff of rows.
const rows = (os) => table[os].map((row) => `  ${JSON.stringify(row)}`).join(',\n');
console.log(`{\n "source": ${JSON.stringify(source)},\n${['windows', 'macos', 'linux']
  .map((os) => ` "${os}": [\n${rows(os)}\n ]`)
  .join(',\n')}\n}`);
