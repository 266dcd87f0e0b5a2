// Drives the recordings panel in Debian's headless Chromium: the list of recordings that reached Kafka, opening
// one (its audio fetched from Kafka), its spectrogram, playback and its WAV download, in both languages.
//
//   node tests/e2e/recordings.mjs   (settings from the environment, set by tests/tests/recordings.rs)
//     PAGE_URL     the page, served by the relay under test
//     WAV          the fake microphone's file (SCENARIO record)
//     CAR_ID       the car
//     SCENARIO     record: record RECORD_MS, then open the recording, play it, download it, screenshot it in
//                  zh-CN (SCREENSHOT_ZH) and English (SCREENSHOT_EN)
//                  existing: only open the car's (one) recording that is already in Kafka and download it; the
//                  supervisor view is read once a recording there holds EXISTING_AUDIO_MS of audio
//                  memory: watch the car's recordings arrive (the test produces them) and sample the page's
//                  memory (CDP Performance.getMetrics JS heap after a GC, and the WebAssembly memory) every 2 s
//                  until DONE_FILE exists and the list is still
//     DOWNLOAD     where to save the downloaded WAV
//
// Prints one JSON line: the row, what the detail said, the spectrogram's two brightest rows as frequencies, the
// bytes each /ws/feed socket received (from CDP's Network events), playback positions, console errors.
import { chromium } from "playwright-core";
import { chromiumArgs, chromiumPath } from "./chromium.mjs";
import { existsSync } from "node:fs";

const env = (k, d) => process.env[k] ?? d;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const scenario = env("SCENARIO", "record");

const browser = await chromium.launch({ executablePath: chromiumPath, args: chromiumArgs(env("WAV")) });
const errors = [];
try {
  // The technician's phone speaks Chinese: the page must too.
  const context = await browser.newContext({ locale: "zh-CN", viewport: { width: 480, height: 1400 }, acceptDownloads: true });
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); if (process.env.DEBUG_CONSOLE) console.error("console:", m.type(), m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  // What each feed socket received, counted on the wire.
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  const sockets = new Map();
  cdp.on("Network.webSocketCreated", (e) => sockets.set(e.requestId, { url: e.url, bytes: 0, frames: 0 }));
  cdp.on("Network.webSocketFrameReceived", (e) => {
    const s = sockets.get(e.requestId);
    if (s) { s.bytes += Buffer.byteLength(e.response.payloadData); s.frames += 1; }
  });
  // Test instrumentation: keep the WebAssembly instance's exports, to read its memory size.
  await context.addInitScript(() => addEventListener("TrunkApplicationStarted", (e) => { window.__wasm = e.detail.wasm; }));
  await page.goto(env("PAGE_URL"));
  await page.waitForFunction(() => !document.getElementById("record").disabled, null, { timeout: 20000 });
  const lang = await page.evaluate(() => document.documentElement.lang);
  // With no car entered the list is every device's, grouped by car (the supervisor view): an earlier recording
  // of the car shows under its name.
  let supervisor = null;
  if (scenario === "existing") {
    await page.waitForFunction((car) => [...document.querySelectorAll("#feed li.car")].some((li) => li.textContent === car), env("CAR_ID"), { timeout: 20000 });
    // Its frames come as one feed record each: read the view once the recording holds all its audio.
    await page.waitForFunction((ms) => [...document.querySelectorAll("#feed li[data-segment]")].some((li) => Number(li.dataset.durationMs) >= ms), Number(env("EXISTING_AUDIO_MS")), { timeout: 20000 });
    supervisor = await page.evaluate(() => [...document.querySelectorAll("#feed li")].map((li) => ({ group: li.classList.contains("car"), text: li.textContent })));
  }
  await page.fill("#carId", env("CAR_ID"));
  await page.dispatchEvent("#carId", "change");
  if (scenario === "memory") {
    await page.evaluate((car) => localStorage.setItem("soundline.carId", car), env("CAR_ID"));
    await page.reload();
    await page.waitForFunction(() => !document.getElementById("record").disabled, null, { timeout: 20000 });
    await page.waitForFunction(() => /\(/.test(document.getElementById("feed-status").textContent), null, { timeout: 20000 });
    console.log(JSON.stringify({ phase: "subscribed" }));
    await cdp.send("Performance.enable");
    const samples = [];
    let still = 0, lastBytes = -1;
    while (true) {
      await cdp.send("HeapProfiler.collectGarbage");
      const metrics = (await cdp.send("Performance.getMetrics")).metrics;
      const heap = metrics.find((m) => m.name === "JSHeapUsedSize").value;
      const wasm = await page.evaluate(() => window.__wasm.memory.buffer.byteLength);
      const bytes = [...sockets.values()].filter((s) => s.url.endsWith("/ws/feed")).reduce((n, s) => n + s.bytes, 0);
      const records = [...sockets.values()].filter((s) => s.url.endsWith("/ws/feed")).reduce((n, s) => n + s.frames, 0);
      const rows = await page.evaluate(() => document.querySelectorAll("#feed li[data-segment]").length);
      samples.push({ heap, wasm, records, rows, bytes });
      still = bytes === lastBytes ? still + 1 : 0;
      lastBytes = bytes;
      if (existsSync(env("DONE_FILE")) && still >= 2) break;
      await sleep(2000);
    }
    console.log(JSON.stringify({ samples, consoleErrors: errors, status: await page.evaluate(() => document.getElementById("feed-status").textContent) }));
    await browser.close();
    process.exit(0);
  }
  // How long the page recorded, as far as this script can tell: at least the wait between the two clicks, at most
  // until the stop click was done (a click on a loaded machine can take a while to land).
  let recorded = null;
  if (scenario === "record") {
    await page.click("#record");
    await page.waitForFunction(() => document.getElementById("record").classList.contains("on"), null, { timeout: 20000 });
    const on = Date.now();
    await sleep(Number(env("RECORD_MS", "5000")));
    const stopping = Date.now();
    await page.click("#record");
    recorded = { atLeastMs: stopping - on, atMostMs: Date.now() - on };
    await page.waitForFunction(() => document.getElementById("record").classList.length === 0 && !document.getElementById("record").disabled, null, { timeout: 60000 });
  } else {
    // The feed filters by the car the page knows at load: reload with the car remembered.
    await page.evaluate((car) => localStorage.setItem("soundline.carId", car), env("CAR_ID"));
    await page.reload();
    await page.waitForFunction(() => !document.getElementById("record").disabled, null, { timeout: 20000 });
  }
  // The row: one per recording, complete once its frames stopped arriving.
  await page.waitForFunction(
    () => [...document.querySelectorAll("#feed li[data-segment]")].some((li) => li.dataset.state !== "recording"),
    null, { timeout: 30000 },
  );
  const rows = await page.evaluate(() => [...document.querySelectorAll("#feed li[data-segment]")].map((li) => ({
    segment: li.dataset.segment, state: li.dataset.state, durationMs: Number(li.dataset.durationMs), text: li.textContent,
  })));
  // Every list socket so far (the page subscribes again when the car changes), before anything is opened.
  const listSocketBytes = [...sockets.values()].filter((s) => s.url.endsWith("/ws/feed")).reduce((n, s) => n + s.bytes, 0);
  const feedSocketsBefore = [...sockets.values()].filter((s) => s.url.endsWith("/ws/feed")).length;

  // Open it: its audio is fetched from Kafka.
  await page.click(`#feed li[data-segment] button`);
  await page.waitForFunction(() => !document.getElementById("play").disabled, null, { timeout: 30000 });
  const detail = await page.evaluate(() => document.getElementById("detail-status").textContent);
  const feedSockets = [...sockets.values()].filter((s) => s.url.endsWith("/ws/feed"));
  const spectrogram = await page.evaluate(() => {
    const c = document.getElementById("spectrogram");
    const ctx = c.getContext("2d");
    const LEFT = 44, BINS = 257;
    const cols = Number(c.dataset.columns);
    const img = ctx.getImageData(LEFT, 0, cols, BINS).data;
    const rows = [];
    for (let y = 0; y < BINS; y++) {
      let sum = 0;
      for (let x = 0; x < cols; x++) { const i = (y * cols + x) * 4; sum += img[i] + img[i + 1] + img[i + 2]; }
      rows.push(sum / cols);
    }
    const order = rows.map((v, y) => [v, y]).sort((a, b) => b[0] - a[0]);
    const peaks = [];
    for (const [, y] of order) {
      if (peaks.every((p) => Math.abs(p - y) > 4)) peaks.push(y);
      if (peaks.length === 2) break;
    }
    return { columns: cols, peaksHz: peaks.map((y) => (BINS - 1 - y) * 31.25), label: c.getAttribute("aria-label") };
  });
  const download = page.waitForEvent("download");
  await page.click("#download");
  const file = await download;
  const fileName = file.suggestedFilename();
  await file.saveAs(env("DOWNLOAD"));

  let playback = null;
  if (scenario === "record") {
    await page.click("#play");
    await sleep(1500);
    const during = await page.evaluate(() => Number(document.getElementById("position").value));
    await page.click("#play"); // pause
    // Seek to 3 s and play from there.
    await page.evaluate(() => { const p = document.getElementById("position"); p.value = "3000"; p.dispatchEvent(new Event("input")); });
    await page.click("#play");
    await sleep(500);
    const afterSeek = await page.evaluate(() => Number(document.getElementById("position").value));
    await page.click("#play");
    playback = { during, afterSeek, max: await page.evaluate(() => Number(document.getElementById("position").max)) };
    await page.screenshot({ path: env("SCREENSHOT_ZH"), fullPage: true });
    const zhTitle = await page.evaluate(() => document.getElementById("feed-title").textContent);
    await page.selectOption("#lang", "en");
    await sleep(300);
    const enTitle = await page.evaluate(() => document.getElementById("feed-title").textContent);
    await page.screenshot({ path: env("SCREENSHOT_EN"), fullPage: true });
    playback.titles = { zh: zhTitle, en: enTitle, htmlLang: await page.evaluate(() => document.documentElement.lang) };
  }
  console.log(JSON.stringify({
    lang, rows, detail, spectrogram, fileName, playback, listSocketBytes, feedSocketsBefore, supervisor, recorded,
    feedSockets: feedSockets.map((s) => ({ bytes: s.bytes, frames: s.frames })),
    link: await page.evaluate(() => document.getElementById("link").textContent),
    consoleErrors: errors,
  }));
} catch (e) {
  const pages = browser.contexts().flatMap((c) => c.pages());
  const state = pages.length
    ? await pages[0].evaluate(() => ["status", "error", "link", "record", "feed-status", "detail-status"].map((id) => `${id}: ${document.getElementById(id)?.textContent}`).join(" | ") + " | rows: " + [...document.querySelectorAll("#feed li")].map((l) => l.textContent).join(" / ")).catch(() => "")
    : "";
  console.error(`e2e recordings: ${e.message}\npage: ${state}\nconsole errors: ${errors.join(" / ")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
