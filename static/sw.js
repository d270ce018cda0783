// Belay's service worker: shows the Web Push messages Belay sends to this browser, and brings
// the page forward when one is clicked. Served at /sw.js so that its scope is the whole site.
'use strict';

// A new version takes over at once: the worker keeps no state a running page depends on.
self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

// The payload is `{"title","body","data":{"kind","notification_id","cursor"},"tag"?}`. A push
// must show a notification (`userVisibleOnly`), so one that cannot be read still shows one.
self.addEventListener('push', (event) => {
  let msg = {};
  try {
    msg = event.data ? event.data.json() : {};
  } catch (_) {
    msg = { body: event.data ? event.data.text() : '' };
  }
  const options = { body: typeof msg.body === 'string' ? msg.body : '', data: msg.data || {} };
  // The same tag replaces the earlier notification (e.g. collapsed likes) instead of stacking.
  if (msg.tag) options.tag = String(msg.tag);
  event.waitUntil(self.registration.showNotification(msg.title || 'Belay', options));
});

// The page reads what happened from its stream, so a click only has to show the page.
self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    const page = windows.find((c) => new URL(c.url).origin === self.location.origin);
    if (page) return page.focus();
    return self.clients.openWindow('/');
  })());
});
