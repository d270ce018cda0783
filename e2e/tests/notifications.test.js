// Host-app notifications on the page: a like as a toast, a second like collapsing into the same
// entry, the unread badge and mark-read.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, climber, hostNotify, screenshot } from '../lib/harness.js';

let server, browser;

before(async () => {
  server = await startServer('notifications');
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

test('a like shows as a toast and the second like collapses into it', async () => {
  const gus = await climber(browser, server, 'gus');
  const likes = gus.page.locator('[data-testid=notification][data-kind=post_liked]');
  assert.equal(await gus.page.getByTestId('badge').textContent(), '0');

  await hostNotify(server, { user_id: 'gus', kind: 'post_liked', data: { post_id: 'p42', by: 'hana' } });
  await gus.page.locator('[data-testid=toast]', { hasText: 'hana liked your post' }).first().waitFor();
  await likes.first().waitFor();
  assert.equal(await likes.count(), 1);
  await gus.page.locator('#badge[data-count="1"]').waitFor();

  const r = await hostNotify(server, { user_id: 'gus', kind: 'post_liked', data: { post_id: 'p42', by: 'ivo' } });
  assert.equal(r.results[0].outcome, 'collapsed');
  await gus.page.locator('[data-testid=toast]', { hasText: 'ivo and 1 other liked your post' }).first().waitFor();
  await likes.filter({ hasText: 'ivo and 1 other liked your post' }).waitFor();
  assert.equal(await likes.count(), 1, 'the second like updates the same entry');
  assert.equal(await gus.page.getByTestId('badge').textContent(), '1', 'still one unread notification');
  await screenshot(gus.page, 'like-collapsed');

  // A like of another post is its own entry.
  await hostNotify(server, { user_id: 'gus', kind: 'post_liked', data: { post_id: 'p43', by: 'hana' } });
  await gus.page.locator('#badge[data-count="2"]').waitFor();
  assert.equal(await likes.count(), 2);

  // Mark one read, then all; a reload shows the same read state from the server.
  await likes.first().getByTestId('mark-read').click();
  await gus.page.locator('#badge[data-count="1"]').waitFor();
  await gus.page.getByTestId('mark-all').click();
  await gus.page.locator('#badge[data-count="0"]').waitFor();
  await gus.page.reload();
  await gus.page.locator('#status[data-state=connected]').waitFor();
  await likes.nth(1).waitFor();
  assert.equal(await gus.page.locator('[data-testid=notification].unread').count(), 0);
  assert.equal(await gus.page.getByTestId('badge').textContent(), '0');
  assert.deepEqual(gus.problems, []);
  await gus.context.close();
});

// An `unread` update after a read travels beside the events, so either can arrive first. The
// frames are handed to the page's own handlers in each order, as its EventSource would.
test('the badge is right whichever comes first: a read elsewhere or a new like', async () => {
  const jo = await climber(browser, server, 'jo');
  await hostNotify(server, { user_id: 'jo', kind: 'post_liked', data: { post_id: 'p1', by: 'kim' } });
  await jo.page.locator('#badge[data-count="1"]').waitFor();
  const head = await jo.page.evaluate(() => state.items[0].cursor);

  const badge = await jo.page.evaluate((head) => {
    const like = (cursor, post) => {
      const n = structuredClone(state.items[0]);
      n.id = `00000000-0000-7000-8000-00000000000${cursor}`;
      n.cursor = cursor;
      n.data = { ...n.data, post_id: post };
      return n;
    };
    const seen = [];
    // A like committed after the read reaches the page first: the read's count (one unread, the
    // first like) does not hold it.
    onNotification(like(head + 2, 'p3'), 'post_liked');
    seen.push(state.unread);
    onUnread({ count: 1, cursor: head + 1 });
    seen.push(state.unread);
    // A read whose count already holds a like that reaches the page after it.
    onUnread({ count: 3, cursor: head + 3 });
    seen.push(state.unread);
    onNotification(like(head + 3, 'p4'), 'post_liked');
    seen.push(state.unread);
    return seen;
  }, head);
  assert.deepEqual(badge, [2, 2, 3, 3]);
  assert.equal(await jo.page.getByTestId('badge').textContent(), '3');
  assert.deepEqual(jo.problems, []);
  await jo.context.close();
});
