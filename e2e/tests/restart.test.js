// The server is killed and started again while the host app keeps sending notifications: the
// browser's EventSource reconnects with Last-Event-ID, receives every one exactly once (counted
// on the wire, since the page itself drops a repeated id) and the page lists each once.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, climber, screenshot, sleep, API_KEY } from '../lib/harness.js';

const COUNT = 60;
let server, browser;
let refused = 0; // sends that found the server down

before(async () => {
  // A short retry hint keeps the test quick; the browser honours the server's `retry:` field.
  server = await startServer('restart', { BELAY__SSE__RETRY_MS: '300' });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

// The host app's side: each like is sent until the server accepts it. A retry after a lost
// answer carries the same idempotency key, so it is stored once.
async function sendUntilAccepted(i) {
  for (let attempt = 0; ; attempt++) {
    try {
      const r = await fetch(server.url + '/v1/notify', {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-api-key': API_KEY },
        body: JSON.stringify({
          user_id: 'kim', kind: 'post_liked', idempotency_key: `restart-like-${i}`,
          data: { post_id: `post-${i}`, by: 'lou' },
        }),
      });
      if (r.ok) return (await r.json()).results[0];
      if (r.status < 500) throw new Error(`notify ${i}: ${r.status} ${await r.text()}`);
    } catch (e) {
      if (!(e instanceof TypeError)) throw e; // fetch failed: the server is down
      refused += 1;
    }
    if (attempt > 200) throw new Error(`notify ${i} never accepted`);
    await sleep(100);
  }
}

test('kill and restart while notifications are sent: each received and listed exactly once', async () => {
  // Every message the browser's EventSource receives, as DevTools sees it on the wire: the page
  // replaces entries by id, so its list alone could not show a frame that came twice. Watched
  // from before the page loads: DevTools reports no message of a stream opened before it looked.
  const frames = [];
  const kim = await climber(browser, server, 'kim', {
    setup: async (page, context) => {
      const cdp = await context.newCDPSession(page);
      cdp.on('Network.eventSourceMessageReceived', (m) => frames.push(m));
      await cdp.send('Network.enable');
    },
  });
  const states = [];
  await kim.page.exposeFunction('reportStatus', (s) => states.push(s));
  await kim.page.evaluate(() => {
    new MutationObserver(() => window.reportStatus(document.getElementById('status').dataset.state))
      .observe(document.getElementById('status'), { attributes: true, attributeFilter: ['data-state'] });
  });

  // Every stream request the browser makes, in request order, with the cursor it resumes from.
  // Last-Event-ID is only in the full headers, which can come after the request has started.
  const streams = [];
  kim.page.on('request', (req) => {
    const url = new URL(req.url());
    if (url.pathname === '/v1/events') {
      streams.push(req.allHeaders().then(
        (h) => h['last-event-id'] ?? url.searchParams.get('last_event_id'),
        () => url.searchParams.get('last_event_id'),
      ));
    }
  });

  let accepted = 0;
  let senderDone = false;
  const sender = (async () => {
    const results = [];
    for (let i = 1; i <= COUNT; i++) {
      results.push(await sendUntilAccepted(i));
      accepted = i;
      await sleep(30);
    }
    return results;
  })().finally(() => { senderDone = true; });

  // Let some arrive live, then kill the server without warning. The browser is kept from
  // reconnecting until well after the restart, so that many likes are stored while it is away
  // (more than the `unread` summary's latest ten).
  const items = kim.page.locator('[data-testid=notification][data-kind=post_liked]');
  await items.nth(9).waitFor();
  await kim.page.route('**/v1/events?**', (route) => route.abort('connectionrefused'));
  await server.kill();
  await sleep(1000);
  await server.start();
  while (accepted < 40 && !senderDone) await sleep(20);
  if (accepted < 40) await sender; // it stopped early: its error fails the test
  assert.notEqual(await kim.page.getByTestId('status').getAttribute('data-state'), 'connected');
  await kim.page.unroute('**/v1/events?**');

  const results = await sender;
  assert.ok(results.every((r) => r.outcome === 'created' || r.outcome === 'duplicate'),
    results.map((r) => r.outcome).join());
  assert.ok(refused > 0, 'some likes were sent while the server was down');
  const sent = results.map((r) => r.id);
  assert.equal(new Set(sent).size, COUNT, 'one stored notification per like');

  await kim.page.locator('#status[data-state=connected]').waitFor();
  await kim.page.locator(`#badge[data-count="${COUNT}"]`).waitFor({ timeout: 20000 });
  await items.nth(COUNT - 1).waitFor();
  await kim.page.waitForTimeout(1000); // anything sent twice would show up by now
  const listed = await items.evaluateAll((li) => li.map((x) => x.dataset.id));
  assert.equal(listed.length, COUNT, `listed ${listed.length} entries`);
  // Each stored notification exactly once, newest first.
  assert.deepEqual(listed, [...sent].reverse());
  // And each arrived as exactly one frame, in cursor order: none repeated, none only inside an
  // `unread` summary.
  const likes = frames.filter((f) => f.eventName === 'post_liked');
  assert.deepEqual(likes.map((f) => JSON.parse(f.data).id), sent,
    `frames: ${likes.map((f) => f.eventId).join()}`);
  assert.deepEqual(likes.map((f) => Number(f.eventId)), sent.map((_, i) => i + 1));

  // The stream that finally got through resumed from the last cursor seen before the kill.
  let timer;
  const requests = await Promise.race([
    Promise.all(streams),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error('the stream requests\' headers never came')), 10000);
    }),
  ]).finally(() => clearTimeout(timer));
  const resumed = Number(requests.at(-1));
  assert.ok(resumed >= 10 && resumed < 40, `resumed after ${resumed}; requests: ${requests}`);
  assert.ok(states.includes('reconnecting') || states.includes('offline'), `status went ${states}`);
  assert.equal(states.at(-1), 'connected');
  await screenshot(kim.page, 'restart-all-listed-once');
  assert.deepEqual(kim.problems, []);
  await kim.context.close();
});
