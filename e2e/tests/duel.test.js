// Two climbers, two browser contexts: the open queue, the ready check, results and leaderboards.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, climber, screenshot } from '../lib/harness.js';

const PHONE = { width: 360, height: 740 };
let server, browser;

before(async () => {
  server = await startServer('duel');
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

async function leaderboard(page) {
  return page.$$eval('[data-testid=leaderboard-row]', (rows) =>
    rows.map((r) => ({ user: r.dataset.user, rank: Number(r.dataset.rank), me: r.classList.contains('me') })));
}

test('queue → match → ready → confirmed → results → both leaderboards', async () => {
  const ana = await climber(browser, server, 'ana');
  const ben = await climber(browser, server, 'ben', { viewport: PHONE });

  for (const c of [ana, ben]) {
    await c.page.getByTestId('queue-discipline').selectOption('boulder');
  }
  await ana.page.getByTestId('queue-join').click();
  await ana.page.locator('#queue[data-state=queued]').waitFor();
  assert.match(await ana.page.getByTestId('queue-status').textContent(), /Waiting in boulder since/);

  await ben.page.getByTestId('queue-join').click();

  // Both pages show the match the moment it is made, with the ready countdown running.
  for (const [c, other] of [[ana, 'ben'], [ben, 'ana']]) {
    await c.page.locator('#match[data-status=ready_check]').waitFor();
    assert.equal(await c.page.getByTestId('match-opponent').textContent(), other);
    assert.match(await c.page.getByTestId('match-countdown').textContent(), /^00:[0-3]\d$/);
    await c.page.locator('[data-testid=toast]', { hasText: `Match found vs ${other}` }).first().waitFor();
    assert.equal(await c.page.locator('#queue').getAttribute('data-state'), 'matched');
  }

  await ana.page.getByTestId('match-ready').click();
  // Ben sees that Ana is ready before he confirms.
  await ben.page.locator('[data-testid=match-player][data-user=ana][data-ready=true]').waitFor();
  await ben.page.locator('[data-testid=toast]', { hasText: 'ana is ready' }).first().waitFor();
  await ben.page.getByTestId('match-ready').click();

  for (const c of [ana, ben]) {
    await c.page.locator('#match[data-status=confirmed]').waitFor();
    await c.page.locator('[data-testid=toast]', { hasText: 'Match confirmed' }).first().waitFor();
    assert.equal(await c.page.getByTestId('match-cancel').isHidden(), true, 'a confirmed match cannot be cancelled');
  }
  await screenshot(ana.page, 'duel-confirmed');

  // Ana reports her win; Ben confirms it.
  await ana.page.getByTestId('result-winner').selectOption('ana');
  await ana.page.getByTestId('result-submit').click();
  await ana.page.getByTestId('match-message').filter({ hasText: "waiting for opponent's report" }).waitFor();
  await ben.page.getByTestId('result-winner').selectOption('ana');
  await ben.page.getByTestId('result-submit').click();

  for (const c of [ana, ben]) {
    await c.page.locator('#match[data-status=settled]').waitFor();
    assert.match(await c.page.getByTestId('match-message').textContent(), /Settled: (you|ana) won/);
    await c.page.locator('[data-testid=leaderboard-row][data-user=ben]').waitFor();
    const rows = await leaderboard(c.page);
    assert.deepEqual(rows.map((r) => [r.user, r.rank]), [['ana', 1], ['ben', 2]]);
    assert.deepEqual(rows.filter((r) => r.me).map((r) => r.user), [c.user], 'own row is marked');
  }
  await ana.page.locator('[data-testid=toast]', { hasText: 'You won!' }).first().waitFor();
  await ben.page.locator('[data-testid=toast]', { hasText: 'You lost to ana.' }).first().waitFor();

  // Every step is also in the notification list, newest first.
  const kinds = await ben.page.$$eval('[data-testid=notification]', (li) => li.map((x) => x.dataset.kind));
  for (const k of ['match_found', 'opponent_ready', 'match_confirmed', 'match_result', 'rank_changed']) {
    assert.ok(kinds.includes(k), `ben's list has ${k}: ${kinds}`);
  }

  // The phone-sized page does not scroll sideways.
  const overflow = await ben.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `horizontal overflow of ${overflow}px at 360px`);

  await screenshot(ana.page, 'duel-ana');
  await screenshot(ben.page, 'duel-ben-phone');
  assert.deepEqual([...ana.problems, ...ben.problems], []);
  await ana.context.close();
  await ben.context.close();
});
