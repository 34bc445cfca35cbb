// Opens the dashboard of a sluice whose Redis is gone, and reports what it shows of the
// global quotas: the banner, the route's quota line, and the events.
// Usage: node global.mjs ADMIN_URL VIEWER_TOKEN ROUTE
import { open, finish } from "./browser.mjs";

const [base, viewer, route] = process.argv.slice(2);
const failures = [];
const { browser, page } = await open(failures);
let seen;
try {
  await page.goto(`${base}/#token=${encodeURIComponent(viewer)}`);
  await page.waitForSelector(`[data-route="${route}"]`, { timeout: 10_000 });
  await page.waitForFunction(() => document.getElementById("events").textContent.includes("global_quota_degraded"), null, { timeout: 10_000 });
  const banner = await page.textContent("#global");
  const degraded = await page.$eval("#global", (g) => !g.hidden && g.classList.contains("degraded"));
  const quota = await page.textContent(`[data-route="${route}"] .quota`);
  const events = await page.$$eval("#events > div", (lines) => lines.map((l) => ({ kind: l.dataset.kind, text: l.textContent })));
  seen = { banner, degraded, quota, events };
} catch (e) {
  failures.push(String(e));
} finally {
  await browser.close();
}
finish(failures, seen);
