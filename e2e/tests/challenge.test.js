// A direct challenge that is declined, and a ready check that runs out and requeues only the
// climber who was ready.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, climber, screenshot } from '../lib/harness.js';

const READY_TIMEOUT_SECS = 4;
let server, browser;

before(async () => {
  server = await startServer('challenge', { BELAY__MATCHMAKING__READY_TIMEOUT_SECS: String(READY_TIMEOUT_SECS) });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

test('a declined challenge reaches the challenger and leaves no match', async () => {
  const cleo = await climber(browser, server, 'cleo');
  const dev = await climber(browser, server, 'dev', { viewport: { width: 390, height: 844 } });

  await cleo.page.getByTestId('challenge-opponent').fill('dev');
  await cleo.page.getByTestId('challenge-discipline').selectOption('lead');
  await cleo.page.getByTestId('challenge-send').click();
  await cleo.page.locator('[data-testid=challenge-outgoing][data-status=pending]', { hasText: 'dev' }).waitFor();

  const incoming = dev.page.locator('[data-testid=challenge-incoming][data-status=pending]', { hasText: 'cleo' });
  await incoming.waitFor();
  assert.match(await incoming.textContent(), /lead/);
  assert.match(await incoming.locator('.countdown').textContent(), /expires in \d+:\d\d/);
  await dev.page.locator('[data-testid=toast]', { hasText: 'cleo challenged you to a lead duel' }).first().waitFor();
  await screenshot(dev.page, 'challenge-incoming-phone');

  await incoming.locator('button.decline').click();
  await dev.page.locator('[data-testid=challenge-incoming]').first().waitFor({ state: 'detached' });

  await cleo.page.locator('[data-testid=toast]', { hasText: 'dev declined your challenge' }).first().waitFor();
  await cleo.page.locator('[data-testid=notification][data-kind=challenge_declined]').waitFor();
  await cleo.page.locator('[data-testid=challenge-outgoing][data-status=pending]').waitFor({ state: 'detached' });
  for (const c of [cleo, dev]) {
    assert.equal(await c.page.getByTestId('match').isHidden(), true, `${c.user} has no match`);
    assert.equal(await c.page.getByTestId('queue-join').isEnabled(), true, `${c.user} may queue`);
  }
  assert.deepEqual([...cleo.problems, ...dev.problems], []);
  await cleo.context.close();
  await dev.context.close();
});

test('a ready check that runs out requeues the ready climber only', async () => {
  const eli = await climber(browser, server, 'eli');
  const fay = await climber(browser, server, 'fay');

  await eli.page.getByTestId('queue-join').click();
  await eli.page.locator('#queue[data-state=queued]').waitFor();
  const queuedSince = await eli.page.getByTestId('queue-status').textContent();
  await fay.page.getByTestId('queue-join').click();

  for (const c of [eli, fay]) await c.page.locator('#match[data-status=ready_check]').waitFor();
  await eli.page.getByTestId('match-ready').click();
  await eli.page.locator('[data-testid=match-player][data-user=eli][data-ready=true]').waitFor();
  // Fay lets the countdown run out.

  await eli.page.locator('#match[data-status=cancelled]').waitFor({ timeout: (READY_TIMEOUT_SECS + 5) * 1000 });
  await eli.page.locator('#queue[data-state=queued]').waitFor();
  assert.match(await eli.page.getByTestId('match-message').textContent(), /fay did not get ready in time/);
  await eli.page.locator('[data-testid=toast]', { hasText: 'Back in the queue' }).first().waitFor();
  // Requeued with the original queue time.
  assert.equal(await eli.page.getByTestId('queue-status').textContent().then((t) => t.split(' (')[0]),
    queuedSince.split(' (')[0]);

  await fay.page.locator('#match[data-status=cancelled]').waitFor();
  assert.match(await fay.page.getByTestId('match-message').textContent(), /you did not get ready in time/);
  await fay.page.locator('[data-testid=toast]', { hasText: 'you did not get ready in time' }).first().waitFor();
  assert.equal(await fay.page.locator('#queue').getAttribute('data-state'), 'idle');
  assert.equal(await fay.page.getByTestId('queue-join').isEnabled(), true);

  await screenshot(eli.page, 'ready-timeout-requeued');
  assert.deepEqual([...eli.problems, ...fay.problems], []);
  await eli.context.close();
  await fay.context.close();
});
