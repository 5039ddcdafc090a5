// Loads a page whose script logs from known lines and reports what the client sees of it:
// each console message's type, text and location(), whether logging an Error ran the
// page's Error.prepareStackTrace (fpscanner's hasCDP), and how the console methods read
// (source text, name, length, keys, `new`, descriptors). With `launch` for the endpoint,
// a plain Chromium of the client's own launching, for comparison.
// usage: node console_location.mjs puppeteer|playwright <endpoint>|launch <page_url>
import puppeteer from 'puppeteer-core';
import { chromium } from 'playwright-core';

const [client, endpoint, url] = process.argv.slice(2);
const CHROMIUM = '/usr/bin/chromium';
const METHODS = ['debug', 'error', 'info', 'log', 'warn', 'trace', 'dir', 'dirxml', 'table', 'group', 'groupCollapsed', 'assert', 'timeLog', 'count', 'context'];

// Runs in the page.
function probe(methods) {
  let ran = false;
  const saved = Error.prepareStackTrace;
  Error.prepareStackTrace = function () {
    ran = true;
    return saved;
  };
  console.log(new Error(''));
  Error.prepareStackTrace = saved;
  const thrown = (run) => {
    try {
      run();
      return 'no error';
    } catch (e) {
      return e.constructor.name;
    }
  };
  const shape = (d) => d && Object.fromEntries(Object.entries(d).map(([k, v]) => [k, typeof v === 'boolean' ? v : typeof v]));
  const read = (object, m) => {
    const f = object[m];
    return {
      toString: Function.prototype.toString.call(f),
      string: String(f),
      name: f.name,
      length: f.length,
      hasPrototype: 'prototype' in f,
      ownKeys: Reflect.ownKeys(f).map(String),
      newThrows: thrown(() => new f()),
      descriptor: shape(Object.getOwnPropertyDescriptor(object, m)),
      nameDescriptor: shape(Object.getOwnPropertyDescriptor(f, 'name')),
    };
  };
  // What the page set stays what it set after a console call.
  const mine = function () {};
  Error.prepareStackTrace = mine;
  console.warn(new Error('kept'));
  const kept = Error.prepareStackTrace === mine;
  delete Error.prepareStackTrace;
  const made = console.context('c');
  return {
    ran,
    kept,
    natives: Object.fromEntries(methods.map((m) => [m, read(console, m)])),
    context: Object.fromEntries(['log', 'warn'].map((m) => [m, read(made, m)])),
    toStringItself: Function.prototype.toString.call(Function.prototype.toString),
  };
}

const messages = [];
const record = (type, text, location) => messages.length < 2 && messages.push({ type, text, ...location });
const until = async (check) => {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 50));
};
let result;
if (client === 'puppeteer') {
  const browser =
    endpoint === 'launch'
      ? await puppeteer.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] })
      : await puppeteer.connect({ browserWSEndpoint: endpoint, defaultViewport: null });
  const page = endpoint === 'launch' ? await browser.newPage() : (await browser.pages())[0];
  page.on('console', (m) => record(m.type(), m.text(), m.location()));
  await page.goto(url);
  await until(() => messages.length >= 2);
  result = await page.evaluate(probe, METHODS);
  endpoint === 'launch' ? await browser.close() : await browser.disconnect();
} else {
  const browser =
    endpoint === 'launch'
      ? await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] })
      : await chromium.connectOverCDP(endpoint, { timeout: 15000 });
  const page = endpoint === 'launch' ? await browser.newPage() : browser.contexts()[0].pages()[0];
  page.on('console', (m) => record(m.type(), m.text(), m.location()));
  await page.goto(url);
  await until(() => messages.length >= 2);
  result = await page.evaluate(probe, METHODS);
  await browser.close();
}
console.log(JSON.stringify({ messages, ...result }));
