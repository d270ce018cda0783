// Test harness: a real `belay` process on a loopback port with its own SQLite file, headless
// Chromium driven by playwright-core, and small helpers for the host API.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, openSync, closeSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '..', '..');
export const ARTIFACTS = path.join(ROOT, 'e2e', 'artifacts');

const BIN = process.env.BELAY_BIN || path.join(ROOT, 'target', 'debug', 'belay');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const API_KEY = 'e2e-host-key';
const JWT_SECRET = 'e2e-jwt-secret-of-at-least-32-bytes!';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts `belay` with a fresh data folder. `env` adds configuration overrides
 * (BELAY__SECTION__KEY). The returned server can be killed and started again on the same port
 * and database.
 */
export async function startServer(name, env = {}) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const dir = mkdtempSync(path.join(tmpdir(), `belay-e2e-${name}-`));
  const port = await freePort();
  const server = {
    name, dir, port, url: `http://127.0.0.1:${port}`, child: null, starts: 0,
    env: {
      ...process.env,
      RUST_LOG: process.env.RUST_LOG || 'warn',
      BELAY__SERVER__HOST: '127.0.0.1',
      BELAY__SERVER__PORT: String(port),
      BELAY__SERVER__WORKERS: '2',
      BELAY__DATABASE__URL: `sqlite://${path.join(dir, 'belay.db')}`,
      BELAY__AUTH__DEV_SECRETS_FILE: path.join(dir, 'dev-secrets.json'),
      BELAY__AUTH__API_KEY: API_KEY,
      BELAY__AUTH__JWT_SECRET: JWT_SECRET,
      ...env,
    },
  };
  server.start = () => launch(server);
  server.kill = () => kill(server, 'SIGKILL');
  server.stop = async () => {
    await kill(server, 'SIGTERM');
    rmSync(server.dir, { recursive: true, force: true });
  };
  await server.start();
  return server;
}

async function launch(server) {
  server.starts += 1;
  const log = openSync(path.join(ARTIFACTS, `${server.name}.server.log`), server.starts === 1 ? 'w' : 'a');
  const child = spawn(BIN, [], { cwd: server.dir, env: server.env, stdio: ['ignore', log, log] });
  closeSync(log);
  server.child = child;
  let exited = null;
  child.once('exit', (code, signal) => { exited = { code, signal }; });
  const deadline = Date.now() + 20000;
  for (;;) {
    if (exited) throw new Error(`belay exited at start (${JSON.stringify(exited)}); see ${server.name}.server.log`);
    try {
      const r = await fetch(server.url + '/readyz');
      if (r.ok) return;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) throw new Error('belay did not become ready within 20 s');
    await sleep(50);
  }
}

async function kill(server, signal) {
  const child = server.child;
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once('exit', r));
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), 15000);
  await gone;
  clearTimeout(timer);
}

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/**
 * Headless Chromium from the system package. playwright-core gives every launch a fresh, empty
 * profile folder of its own (and removes it on close).
 */
export async function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

/**
 * One browser context on a profile folder, as a climber's own browser is: Chromium offers Web Push
 * only outside incognito, and every `launchBrowser()` context is incognito. Closing the context
 * removes the folder.
 */
export async function launchProfileBrowser({ viewport = { width: 1100, height: 900 } } = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), 'belay-e2e-profile-'));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, viewport,
  });
  const close = context.close.bind(context);
  context.close = async () => {
    await close();
    rmSync(dir, { recursive: true, force: true });
  };
  return context;
}

/**
 * A climber: a browser context of their own, signed in on the demo page. `viewport` defaults to a
 * phone-sized screen for one of the two climbers in most tests; other options (`timezoneId`, ...)
 * go to the browser context. `setup(page, context)` runs before the page loads, for watchers that
 * must see its first stream.
 */
export async function climber(browser, server, user, { viewport = { width: 1100, height: 900 }, setup, ...options } = {}) {
  const context = await browser.newContext({ viewport, ...options });
  return signIn(context, server, user, { setup });
}

/** Opens the demo page in `context` and signs `user` in; problems collects the page's errors. */
export async function signIn(context, server, user, { setup } = {}) {
  const page = await context.newPage();
  if (setup) await setup(page, context);
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource|net::ERR_/.test(m.text())) {
      problems.push(`console error: ${m.text()}`);
    }
  });
  await page.goto(server.url + '/');
  await page.getByTestId('user').fill(user);
  await page.getByTestId('signin').click();
  await page.getByTestId('me').filter({ hasText: user }).waitFor();
  await page.locator('#status[data-state=connected]').waitFor();
  return { user, context, page, problems };
}

/** The host app's server-to-server call. */
export async function hostNotify(server, body) {
  const r = await fetch(server.url + '/v1/notify', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': API_KEY },
    body: JSON.stringify(body),
  });
  const json = await r.json();
  if (!r.ok) throw new Error(`notify: ${r.status} ${JSON.stringify(json)}`);
  return json;
}

/** A new VAPID key pair from `belay vapid-keys`, both halves unpadded base64url. */
export function vapidKeys() {
  const out = execFileSync(BIN, ['vapid-keys'], { encoding: 'utf8' });
  const privateKey = /VAPID_PRIVATE_KEY=(\S+)/.exec(out)?.[1];
  const publicKey = /public key[^:]*:\s*(\S+)/.exec(out)?.[1];
  if (!privateKey || !publicKey) throw new Error(`belay vapid-keys printed: ${out}`);
  return { privateKey, publicKey };
}

/** A climber's bearer token from the dev sign-in, for calling the API beside their page. */
export async function devToken(server, user) {
  const r = await fetch(server.url + '/v1/dev/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user_id: user }),
  });
  if (!r.ok) throw new Error(`dev token: ${r.status} ${await r.text()}`);
  return (await r.json()).token;
}

export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

export { sleep };
