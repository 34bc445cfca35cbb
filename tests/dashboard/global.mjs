// Opens the dashboard of a sluice whose Redis is gone, and reports what it shows of the
// global quotas: the banner, the route's quota line, and the events.
// Usage: node global.mjs ADMIN_URL VIEWER_TOKEN ROUTE
import { chromium } from "playwright-core";

const [base, viewer, route] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
});
const failures = [];
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  page.on("pageerror", (e) => failures.push(`page error: ${e}`));
  page.on("console", (m) => m.type() === "error" && failures.push(`console error: ${m.text()}`));
  await page.goto(`${base}/#token=${encodeURIComponent(viewer)}`);
  await page.waitForSelector(`[data-route="${route}"]`, { timeout: 10_000 });
  await page.waitForFunction(() => document.getElementById("events").textContent.includes("global_quota_degraded"), null, { timeout: 10_000 });
  const banner = await page.textContent("#global");
  const degraded = await page.$eval("#global", (g) => !g.hidden && g.classList.contains("degraded"));
  const quota = await page.textContent(`[data-route="${route}"] .quota`);
  const events = await page.$$eval("#events > div", (lines) => lines.map((l) => ({ kind: l.dataset.kind, text: l.textContent })));
  console.log(JSON.stringify({ banner, degraded, quota, events }));
} catch (e) {
  failures.push(String(e));
} finally {
  await browser.close();
}
if (failures.length) {
  console.error(failures.join("\n"));
  process.exit(1);
}
