// The service worker: the page opens with no network at all (a rail yard's dead zone), from a cache of this
// build's files. Recording then goes into the outbox (IndexedDB) and uploads when the relay is reachable.
//
//   index.html (navigations)   network first (4 s), so a new build reaches users; this build's copy when offline
//   every other file           this build's cache first (Trunk hashes the names of the module, wasm and css)
//   /ws/*, /metrics, /healthz, /readyz   never touched
//
// The build's file list and version are written in by scripts/sw-precache.sh (a Trunk post_build hook), so every
// build is a new worker: it caches its files at install, takes over at once, and deletes older builds' caches.
const BUILD = "__SOUNDLINE_BUILD__";
const FILES = ["__SOUNDLINE_FILES__"];
const CACHE = `soundline-${BUILD}`;
const NETWORK_TIMEOUT_MS = 4000;

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(["./", ...FILES])).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((k) => k.startsWith("soundline-") && k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

async function networkFirst(request) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), NETWORK_TIMEOUT_MS);
  try {
    return await fetch(request, { signal: controller.signal });
  } catch {
    const cached = await caches.match("./", { cacheName: CACHE });
    return cached || Response.error();
  } finally {
    clearTimeout(timer);
  }
}

async function cacheFirst(request) {
  const cached = await caches.match(request, { cacheName: CACHE, ignoreSearch: true });
  return cached || fetch(request);
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin) return;
  if (/^\/(ws\/|metrics|healthz|readyz)/.test(url.pathname)) return;
  const page = request.mode === "navigate" || url.pathname === "/" || url.pathname.endsWith("/index.html");
  event.respondWith(page ? networkFirst(request) : cacheFirst(request));
});
