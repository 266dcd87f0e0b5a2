// Drives the real recorder page in Debian's headless Chromium with a fake microphone playing a WAV file.
//
//   node tests/e2e/record.mjs   (settings from the environment, set by tests/tests/browser.rs)
//     PAGE_URL        the page, served by the relay under test
//     WAV             absolute path of the file the fake microphone plays (looped)
//     CAR_ID          what to type into the car field
//     RECORD_MS       how long to record
//     SCREENSHOT      where to save a screenshot of the page at the end
//     CUT_AT_MS / RESUME_FILE   optional: after CUT_AT_MS of recording, print "cut" and wait until RESUME_FILE
//                               exists (the test stops and restarts the relay meanwhile)
//
// Prints one JSON line: what the page showed at the end (counters, link state, feed rows, console errors).
import { chromium } from "playwright-core";
import { chromiumArgs, chromiumPath } from "./chromium.mjs";
import { existsSync } from "node:fs";

const env = (k, d) => process.env[k] ?? d;
const recordMs = Number(env("RECORD_MS", "5000"));
const cutAt = process.env.CUT_AT_MS ? Number(process.env.CUT_AT_MS) : null;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Playwright gives every launch a fresh temporary profile (it refuses --user-data-dir).
const browser = await chromium.launch({ executablePath: chromiumPath, args: chromiumArgs(env("WAV")) });
const errors = [];
try {
  const page = await browser.newPage({ viewport: { width: 420, height: 900 } });
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(env("PAGE_URL"));
  await page.waitForFunction(() => !document.getElementById("record").disabled, null, { timeout: 20000 });
  // The access token first: moving on to the next field fires its change event (the feed then reconnects).
  if (process.env.TOKEN) await page.fill("#token", process.env.TOKEN);
  await page.fill("#carId", env("CAR_ID"));
  await page.fill("#unitId", "e2e-depot");
  await page.fill("#notes", "end-to-end test");
  await page.click("#record");
  await page.waitForFunction(() => document.getElementById("record").textContent.includes("Stop"), null, { timeout: 20000 });
  if (cutAt !== null) {
    await sleep(cutAt);
    console.log(JSON.stringify({ cut: true }));
    while (!existsSync(env("RESUME_FILE"))) await sleep(100);
    await sleep(recordMs - cutAt);
  } else {
    await sleep(recordMs);
  }
  await page.click("#record");
  await page.waitForFunction(
    () => document.getElementById("link").textContent.includes("every frame is in Kafka"),
    null,
    { timeout: 60000 },
  );
  const car = env("CAR_ID");
  await page.waitForFunction((c) => [...document.querySelectorAll("#feed li")].some((li) => li.textContent.includes(c)), car, { timeout: 20000 });
  await page.screenshot({ path: env("SCREENSHOT"), fullPage: true });
  const result = await page.evaluate(() => {
    const text = (id) => document.getElementById(id).textContent;
    return {
      sent: Number(text("sent")), acked: Number(text("acked")), pending: text("pending"), clipped: Number(text("clipped")),
      link: text("link"), error: text("error"), status: text("status"), elapsed: text("elapsed"),
      feedRows: [...document.querySelectorAll("#feed li")].map((li) => li.textContent),
    };
  });
  console.log(JSON.stringify({ ...result, consoleErrors: errors }));
} catch (e) {
  // Say what the page showed, so a failure names its cause.
  const pages = browser.contexts().flatMap((c) => c.pages());
  const state = pages.length
    ? await pages[0].evaluate(() => ["status", "error", "link", "record"].map((id) => `${id}: ${document.getElementById(id)?.textContent}`).join(" | ")).catch(() => "")
    : "";
  console.error(`e2e: ${e.message}\npage: ${state}\nconsole errors: ${errors.join(" / ")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
