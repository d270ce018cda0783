// The "Push & preferences" panel: preferences saved and read back, the server's refusal shown;
// enabling push registers the service worker and subscribes with the server's VAPID key, and
// every way that can fail here (no Web Push on the server, notifications blocked, no push
// service reachable) ends in a state that says so; devices listed and removed.
//
// No real push service is reachable from this machine, so no subscription is ever accepted by
// one and no notification is shown: the device list is fed through the API with a loopback
// endpoint, as a browser's registration would be.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createECDH, randomBytes } from 'node:crypto';
import {
  startServer, launchBrowser, launchProfileBrowser, climber, signIn, devToken, vapidKeys, screenshot,
} from '../lib/harness.js';

// Chromium says this on the console of every incognito context that calls subscribe().
const INCOGNITO = /does not support the Push API in incognito mode/;

let plain, webpush, browser, keys;

before(async () => {
  keys = vapidKeys();
  plain = await startServer('push-plain');
  webpush = await startServer('push-webpush', {
    BELAY__PUSH__WEBPUSH__VAPID_PRIVATE_KEY: keys.privateKey,
    BELAY__PUSH__WEBPUSH__ALLOW_LOOPBACK_HTTP: 'true',
  });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await plain?.stop();
  await webpush?.stop();
});

async function call(server, token, method, path, body) {
  const r = await fetch(server.url + path, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

// What a browser's PushSubscription.toJSON() gives, for a push service at `endpoint`.
function subscription(endpoint) {
  const ecdh = createECDH('prime256v1');
  ecdh.generateKeys();
  return {
    endpoint,
    expirationTime: null,
    keys: { p256dh: ecdh.getPublicKey().toString('base64url'), auth: randomBytes(16).toString('base64url') },
  };
}

// Records the options the page passes to pushManager.subscribe(), then lets it go on.
function recordSubscribe() {
  const original = PushManager.prototype.subscribe;
  PushManager.prototype.subscribe = function (options) {
    const key = new Uint8Array(options.applicationServerKey);
    window.subscribeCalls = (window.subscribeCalls || []).concat([{
      userVisibleOnly: options.userVisibleOnly,
      key: btoa(String.fromCharCode(...key)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, ''),
    }]);
    return original.call(this, options);
  };
}

const pushState = (page) => page.getByTestId('push-status').getAttribute('data-state');
const row = (page, kind) => page.locator(`[data-testid=pref-kind][data-kind=${kind}]`);

test('the preferences panel lists every kind, saves a change that a reload shows, and shows a refusal', async () => {
  const lia = await climber(browser, plain, 'lia', { timezoneId: 'America/Chicago' });
  const token = await devToken(plain, 'lia');
  const { body: defaults } = await call(plain, token, 'GET', '/v1/preferences');
  const kinds = Object.keys(defaults.kinds);
  assert.ok(kinds.includes('match_found') && kinds.includes('post_liked'), kinds.join());

  await row(lia.page, 'match_found').waitFor();
  const shown = await lia.page.getByTestId('pref-kind').evaluateAll((rows) => rows.map((r) => r.dataset.kind));
  assert.deepEqual(shown, kinds, 'one row per kind, as the server lists them');
  for (const kind of kinds) {
    assert.equal(await row(lia.page, kind).getByTestId('pref-live').isChecked(), defaults.kinds[kind].live, kind);
    assert.equal(await row(lia.page, kind).getByTestId('pref-push').isChecked(), defaults.kinds[kind].push, kind);
  }
  // Never chosen (UTC on the server): the browser's zone is offered.
  assert.equal(defaults.time_zone, 'UTC');
  assert.equal(await lia.page.getByTestId('prefs-tz').inputValue(), 'America/Chicago');
  // This server has no VAPID key: the panel says push cannot be enabled.
  assert.equal(await pushState(lia.page), 'unavailable');
  assert.match(await lia.page.getByTestId('push-status').textContent(), /does not send Web Push/);
  assert.ok(await lia.page.getByTestId('push-enable').isDisabled());

  await row(lia.page, 'post_liked').getByTestId('pref-push').uncheck();
  await row(lia.page, 'rank_changed').getByTestId('pref-live').uncheck();
  await lia.page.getByTestId('prefs-tz').fill('Europe/Paris');
  await lia.page.getByTestId('prefs-quiet-start').fill('22:00');
  await lia.page.getByTestId('prefs-quiet-end').fill('07:00');
  await lia.page.getByTestId('prefs-save').click();
  await lia.page.locator('[data-testid=prefs-result].good', { hasText: 'Saved' }).waitFor();

  const { body: saved } = await call(plain, token, 'GET', '/v1/preferences');
  assert.deepEqual(saved.kinds.post_liked, { live: true, push: false });
  assert.deepEqual(saved.kinds.rank_changed, { live: false, push: defaults.kinds.rank_changed.push });
  assert.deepEqual(saved.kinds.match_found, defaults.kinds.match_found);
  assert.equal(saved.time_zone, 'Europe/Paris');
  assert.deepEqual(saved.quiet_hours, { start: '22:00', end: '07:00' });

  await lia.page.reload();
  await lia.page.locator('#status[data-state=connected]').waitFor();
  await row(lia.page, 'post_liked').waitFor();
  assert.equal(await row(lia.page, 'post_liked').getByTestId('pref-push').isChecked(), false);
  assert.equal(await row(lia.page, 'rank_changed').getByTestId('pref-live').isChecked(), false);
  assert.equal(await row(lia.page, 'match_found').getByTestId('pref-push').isChecked(), defaults.kinds.match_found.push);
  assert.equal(await lia.page.getByTestId('prefs-tz').inputValue(), 'Europe/Paris');
  assert.equal(await lia.page.getByTestId('prefs-quiet-start').inputValue(), '22:00');
  assert.equal(await lia.page.getByTestId('prefs-quiet-end').inputValue(), '07:00');

  // A zone that does not exist: the server's message, and nothing changed.
  await lia.page.getByTestId('prefs-tz').fill('Mars/Olympus_Mons');
  await lia.page.getByTestId('prefs-save').click();
  const refusal = lia.page.locator('[data-testid=prefs-result].bad');
  await refusal.waitFor();
  assert.match(await refusal.textContent(), /time_zone: "Mars\/Olympus_Mons" is not an IANA time zone name/);
  assert.equal((await call(plain, token, 'GET', '/v1/preferences')).body.time_zone, 'Europe/Paris');
  await screenshot(lia.page, 'push-preferences-refused');
  assert.deepEqual(lia.problems, []);
  await lia.context.close();
});

test('enabling push registers the worker and asks with the VAPID key; a blocked permission and a failed subscribe say so', async () => {
  const max = await climber(browser, webpush, 'max');
  await max.context.addInitScript(recordSubscribe);
  await max.page.reload();
  await max.page.locator('#status[data-state=connected]').waitFor();
  await max.page.locator('[data-testid=push-status][data-state=off]').waitFor();
  assert.equal(await max.page.getByTestId('push-status').textContent(), 'Push is off for this browser.');

  // Headless Chromium refuses the permission prompt, as a climber who blocked it would.
  await max.page.getByTestId('push-enable').click();
  await max.page.locator('[data-testid=push-status][data-state=denied]').waitFor();
  assert.match(await max.page.getByTestId('push-status').textContent(), /Notifications are blocked/);
  const worker = await max.page.evaluate(async () => {
    const reg = await navigator.serviceWorker.getRegistration('/');
    return reg && reg.active ? { script: reg.active.scriptURL, scope: reg.scope } : null;
  });
  assert.deepEqual(worker, { script: `${webpush.url}/sw.js`, scope: `${webpush.url}/` });

  // Allowed, but this context is incognito, where Chromium has no push service.
  await max.context.grantPermissions(['notifications'], { origin: webpush.url });
  await max.page.getByTestId('push-enable').click();
  await max.page.locator('[data-testid=push-status][data-state=failed]').waitFor();
  assert.match(await max.page.getByTestId('push-status').textContent(), /could not subscribe to its push service/);
  assert.deepEqual(await max.page.evaluate(() => window.subscribeCalls),
    [{ userVisibleOnly: true, key: keys.publicKey }]);
  assert.ok(await max.page.getByTestId('push-enable').isEnabled(), 'the climber can try again');
  assert.equal((await call(webpush, await devToken(webpush, 'max'), 'GET', '/v1/devices')).body.devices.length, 0);
  assert.deepEqual(max.problems.filter((p) => !INCOGNITO.test(p)), []);
  await max.context.close();
});

test('a browser whose push service never answers is told so after the timeout', async () => {
  // A profile on disk, where Chromium does try its push service (Google's, unreachable here).
  const context = await launchProfileBrowser();
  try {
    await context.grantPermissions(['notifications'], { origin: webpush.url });
    await context.addInitScript(recordSubscribe);
    const ode = await signIn(context, webpush, 'ode');
    await ode.page.locator('[data-testid=push-status][data-state=off]').waitFor();
    await ode.page.getByTestId('push-enable').click();
    await ode.page.locator('[data-testid=push-status][data-state=working]').waitFor();
    await ode.page.locator('[data-testid=push-status][data-state=failed]').waitFor({ timeout: 30000 });
    assert.match(await ode.page.getByTestId('push-status').textContent(),
      /could not subscribe to its push service: no answer within 15 s/);
    assert.deepEqual(await ode.page.evaluate(() => window.subscribeCalls),
      [{ userVisibleOnly: true, key: keys.publicKey }]);
    await screenshot(ode.page, 'push-subscribe-failed');
    assert.deepEqual(ode.problems, []);
  } finally {
    await context.close();
  }
});

test('the panel lists the climber\'s devices and removes one', async () => {
  const token = await devToken(webpush, 'nia');
  // A loopback push service: allowed by push.webpush.allow_loopback_http, never called here.
  const service = webpush.url;
  const laptop = await call(webpush, token, 'POST', '/v1/devices',
    { platform: 'webpush', subscription: subscription(`${service}/push/nia-laptop`) });
  const phone = await call(webpush, token, 'POST', '/v1/devices',
    { platform: 'webpush', subscription: subscription(`${service}/push/nia-phone1`) });
  assert.equal(laptop.status, 201, JSON.stringify(laptop.body));
  assert.equal(phone.status, 201, JSON.stringify(phone.body));

  const nia = await climber(browser, webpush, 'nia');
  const devices = nia.page.getByTestId('device');
  await devices.nth(1).waitFor();
  assert.equal(await devices.count(), 2);
  const item = nia.page.locator(`[data-testid=device][data-id="${laptop.body.id}"]`);
  assert.match(await item.textContent(), /Web Push · 127\.0\.0\.1:\d+ …laptop/);
  await screenshot(nia.page, 'push-devices');

  await item.getByRole('button', { name: /Remove Web Push device .*laptop/ }).click();
  await item.waitFor({ state: 'detached' });
  assert.equal(await devices.count(), 1);
  assert.equal(await devices.first().getAttribute('data-id'), phone.body.id);
  const { body } = await call(webpush, token, 'GET', '/v1/devices');
  assert.deepEqual(body.devices.map((d) => d.id), [phone.body.id]);
  assert.deepEqual(nia.problems, []);
  await nia.context.close();
});
