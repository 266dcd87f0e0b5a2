// Drives the recorder page through the life a phone lives, in Debian's headless Chromium on a profile of its
// own (a real --user-data-dir, so IndexedDB survives a reload and a killed browser), with a fake microphone.
//
//   node tests/e2e/outbox.mjs   (settings from the environment, set by tests/tests/outbox.rs)
//     SCENARIO     reload | kill | full | offline
//                  reload:  record with the relay unreachable, reload the page mid-recording
//                  kill:    record with the relay unreachable, kill -9 the browser, start it again on the profile
//                  full:    record with the relay unreachable until the (small) outbox cap stops the recording
//                  freeze:  with the relay reachable, record, freeze the page for FREEZE_MS (CDP
//                           Page.setWebLifecycleState, as Chromium freezes a background tab), record on, then
//                           suspend its AudioContext for 3 s (as iOS interrupts capture), record on, stop
//                  offline: visit the page once, then (after CUT_FILE appears: the network is gone) open it
//                           again in a new tab, record and stop
//     PAGE_URL     the page (with ?relay=... pointing the WebSockets at the unreachable address)
//     WAV, CAR_ID, RECORD_MS   as in record.mjs
//     PROFILE      the browser profile directory
//     RESUME_FILE  the test creates it when the relay is reachable again
//     SCREENSHOT   where to save a screenshot at the end
//
// Prints JSON lines: {"phase":"waiting",...} when the page lists the recording as waiting (the test then makes the
// relay reachable), and a final report: the page's counters, the outbox panel, what it showed on the way, and
// console errors.
import { chromium } from "playwright-core";
import { chromiumArgs, chromiumPath } from "./chromium.mjs";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";

const env = (k, d) => process.env[k] ?? d;
const scenario = env("SCENARIO");
const recordMs = Number(env("RECORD_MS", "4000"));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const say = (o) => console.log(JSON.stringify(o));

// Chromium started by hand (not by Playwright, which refuses a profile directory with connect-less launches and
// owns the process): its own process group, so that kill -9 takes the whole browser, as a crash or the OS does.
async function startBrowser() {
  const child = spawn(chromiumPath, [
    ...chromiumArgs(env("WAV")), `--user-data-dir=${env("PROFILE")}`, "--remote-debugging-port=0", "about:blank",
  ], { detached: true, stdio: ["ignore", "ignore", "pipe"] });
  const wsUrl = await new Promise((resolve, reject) => {
    let seen = "";
    child.stderr.on("data", (d) => {
      seen += d;
      const m = seen.match(/DevTools listening on (ws:\/\/\S+)/);
      if (m) resolve(m[1]);
    });
    child.on("exit", (code) => reject(new Error(`chromium exited (${code}) before DevTools: ${seen}`)));
    setTimeout(() => reject(new Error(`no DevTools URL within 30 s: ${seen}`)), 30000);
  });
  child.stderr.resume();
  const browser = await chromium.connectOverCDP(wsUrl);
  return { child, browser, context: browser.contexts()[0] };
}

function killBrowser(b) {
  try { process.kill(-b.child.pid, "SIGKILL"); } catch { /* already gone */ }
  return new Promise((r) => (b.child.exitCode !== null ? r() : b.child.on("exit", r)));
}

const errors = [];
async function openPage(context) {
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.setViewportSize({ width: 420, height: 1000 });
  await page.goto(env("PAGE_URL"));
  await page.waitForFunction(() => !document.getElementById("record").disabled, null, { timeout: 20000 });
  return page;
}

const text = (page, id) => page.evaluate((i) => document.getElementById(i).textContent, id);

async function startRecording(page) {
  await page.fill("#carId", env("CAR_ID"));
  await page.fill("#unitId", "e2e-depot");
  await page.fill("#notes", "outbox test");
  await page.click("#record");
  await page.waitForFunction(() => document.getElementById("record").textContent.includes("Stop"), null, { timeout: 20000 });
}

// Waits until the page lists the recording left by the earlier page as waiting, says so, and waits for the relay.
async function waitingThenResume(page, extra) {
  await page.waitForFunction(() => /1 recording waiting to upload/.test(document.getElementById("outbox").textContent), null, { timeout: 30000 });
  say({ phase: "waiting", outbox: await text(page, "outbox"), rows: await rows(page), ...extra });
  while (!existsSync(env("RESUME_FILE"))) await sleep(100);
  await page.waitForFunction(() => /Nothing waiting/.test(document.getElementById("outbox").textContent), null, { timeout: 90000 });
}

const rows = (page) => page.evaluate(() => [...document.querySelectorAll("#outbox-list li")].map((li) => li.textContent));

async function report(page, extra) {
  await page.screenshot({ path: env("SCREENSHOT"), fullPage: true });
  say({
    outbox: await text(page, "outbox"), rows: await rows(page), storage: await text(page, "storage"),
    error: await text(page, "error"), link: await text(page, "link"),
    sent: Number(await text(page, "sent")), saved: Number(await text(page, "saved")), acked: Number(await text(page, "acked")),
    consoleErrors: errors, ...extra,
  });
}

let b = await startBrowser();
try {
  if (scenario === "offline") {
    // The first visit installs the service worker; it controls the page once it has cached this build.
    const first = await openPage(b.context);
    await first.waitForFunction(() => navigator.serviceWorker.controller !== null, null, { timeout: 30000 });
    await first.close();
    say({ phase: "visited" });
    while (!existsSync(env("CUT_FILE"))) await sleep(100);
    const page = await openPage(b.context);
    const controlled = await page.evaluate(() => navigator.serviceWorker.controller !== null);
    await startRecording(page);
    await sleep(recordMs);
    await page.click("#record");
    await page.waitForFunction(() => Number(document.getElementById("saved").textContent) === Number(document.getElementById("sent").textContent), null, { timeout: 10000 });
    const recorded = { controlled, savedBefore: Number(await text(page, "saved")), link: await text(page, "link") };
    say({ phase: "recorded", ...recorded });
    while (!existsSync(env("RESUME_FILE"))) await sleep(100);
    await page.waitForFunction(() => document.getElementById("link").textContent.includes("every frame is in Kafka"), null, { timeout: 90000 });
    await report(page, recorded);
  } else if (scenario === "freeze") {
    // Test instrumentation only: keep a handle on the page's AudioContext, to suspend it as iOS does.
    await b.context.addInitScript(() => {
      const Base = window.AudioContext;
      window.__soundlineContexts = [];
      window.AudioContext = class extends Base {
        constructor(...args) { super(...args); window.__soundlineContexts.push(this); }
      };
    });
    const page = await openPage(b.context);
    await startRecording(page);
    const startedAt = Date.now();
    await sleep(2000);
    const awake = await text(page, "awake");
    const cdp = await page.context().newCDPSession(page);
    const frozenAt = Date.now();
    await cdp.send("Page.setWebLifecycleState", { state: "frozen" });
    await sleep(Number(env("FREEZE_MS", "5000")));
    await cdp.send("Page.setWebLifecycleState", { state: "active" });
    const thawedAt = Date.now();
    await sleep(2000);
    const suspendedAt = Date.now();
    await page.evaluate(() => window.__soundlineContexts.at(-1).suspend());
    await sleep(3000);
    await page.evaluate(() => window.__soundlineContexts.at(-1).resume());
    const resumedAt = Date.now();
    await page.waitForFunction(() => /paused recording for/.test(document.getElementById("status").textContent), null, { timeout: 5000 });
    const paused = await text(page, "status");
    await sleep(2000);
    await page.click("#record");
    const stoppedAt = Date.now();
    await page.waitForFunction(() => document.getElementById("link").textContent.includes("every frame is in Kafka"), null, { timeout: 60000 });
    await report(page, { awake, paused, startedAt, frozenAt, thawedAt, suspendedAt, resumedAt, stoppedAt });
  } else if (scenario === "reload") {
    const page = await openPage(b.context);
    await startRecording(page);
    await sleep(recordMs);
    const before = { savedBefore: Number(await text(page, "saved")), sentBefore: Number(await text(page, "sent")) };
    await page.reload();
    await page.waitForFunction(() => !document.getElementById("record").disabled, null, { timeout: 20000 });
    await waitingThenResume(page, before);
    await report(page, before);
  } else if (scenario === "kill") {
    let page = await openPage(b.context);
    await startRecording(page);
    await sleep(recordMs);
    const before = { savedBefore: Number(await text(page, "saved")), sentBefore: Number(await text(page, "sent")) };
    await killBrowser(b);
    b = await startBrowser();
    // Two tabs of the page open on the restarted browser: only one may upload the recording.
    page = await openPage(b.context);
    const second = await openPage(b.context);
    const otherTab = () => /uploading in another tab/.test(document.getElementById("outbox-list").textContent);
    const deadline = Date.now() + 30000;
    let tabs = [];
    while (Date.now() < deadline) {
      tabs = [await page.evaluate(otherTab), await second.evaluate(otherTab)];
      if (tabs.some((t) => t)) break;
      await sleep(200);
    }
    await waitingThenResume(page, { ...before, tabsSayingAnotherTab: tabs.filter((t) => t).length, secondRows: await rows(second) });
    await report(page, before);
  } else if (scenario === "full") {
    const page = await openPage(b.context);
    await startRecording(page);
    // Recording goes on until the cap stops it; on the way the page must warn in red.
    let warning = null;
    const deadline = Date.now() + 120000;
    while (Date.now() < deadline) {
      const s = await page.evaluate(() => ({
        storage: document.getElementById("storage").textContent,
        warn: document.getElementById("storage").className === "warn",
        record: document.getElementById("record").textContent,
        elapsed: document.getElementById("elapsed").textContent,
      }));
      if (s.warn && /almost full/.test(s.storage) && !warning) warning = s;
      if (!s.record.includes("Stop")) break;
      await sleep(200);
    }
    await page.waitForFunction(() => /full: recording stopped/.test(document.getElementById("storage").textContent), null, { timeout: 10000 });
    const stopped = { warning, stoppedWith: await text(page, "storage"), elapsed: await text(page, "elapsed"), savedBefore: Number(await text(page, "saved")) };
    say({ phase: "stopped", ...stopped });
    while (!existsSync(env("RESUME_FILE"))) await sleep(100);
    await page.waitForFunction(() => document.getElementById("link").textContent.includes("every frame is in Kafka"), null, { timeout: 90000 });
    await report(page, stopped);
  } else {
    throw new Error(`unknown SCENARIO ${scenario}`);
  }
} catch (e) {
  const pages = b.context ? b.context.pages() : [];
  const state = pages.length
    ? await pages[pages.length - 1].evaluate(() => ["status", "error", "link", "record", "storage", "outbox", "saved"].map((id) => `${id}: ${document.getElementById(id)?.textContent}`).join(" | ")).catch(() => "")
    : "";
  console.error(`e2e outbox: ${e.message}\npage: ${state}\nconsole errors: ${errors.join(" / ")}`);
  process.exitCode = 1;
} finally {
  await b.browser.close().catch(() => {});
  await killBrowser(b);
}
