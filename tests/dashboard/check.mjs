// Opens the dashboard in Debian's headless Chromium, checks that it renders every route,
// that it goes live on the event stream, and that a quota pushed through the API shows up
// without a reload; then keeps a screenshot.
// Usage: node check.mjs ADMIN_URL VIEWER_TOKEN OPERATOR_TOKEN SCREENSHOT ROUTE...
import { open, finish } from "./browser.mjs";

const [base, viewer, operator, screenshot, ...routes] = process.argv.slice(2);
const failures = [];
const { browser, page } = await open(failures);
let seen;
try {
  await page.goto(`${base}/#token=${encodeURIComponent(viewer)}`);
  for (const route of routes) await page.waitForSelector(`[data-route="${route}"]`, { timeout: 10_000 });
  await page.waitForFunction(() => document.getElementById("state").textContent === "live", null, { timeout: 10_000 });
  if (page.url().includes("token")) failures.push("the token stayed in the address bar");

  const quota = `[data-route="${routes[0]}"] .quota`;
  const before = await page.textContent(quota);
  // before the push below: a new quota starts a new offenders' sketch
  const offenders = await page.textContent(`[data-route="${routes[0]}"] .offenders`).catch(() => "");
  const response = await fetch(`${base}/v1/routes/${routes[0]}/quota`, {
    method: "PUT",
    headers: { Authorization: `Bearer ${operator}`, "Content-Type": "application/json" },
    body: JSON.stringify({ rate: 4242, per: "1m", burst: 77 }),
  });
  if (response.status !== 200) failures.push(`quota push: ${response.status}`);
  await page.waitForFunction((q) => document.querySelector(q)?.textContent.includes("4242"), quota, { timeout: 10_000 });
  await page.waitForFunction(() => document.getElementById("events").textContent.includes("quota_updated"), null, { timeout: 10_000 });
  const after = await page.textContent(quota);
  // what the page shows beside the quotas: the events from before it opened, formatted,
  // each route's latency percentiles, and the top offenders
  const events = await page.$$eval("#events > div", (lines) => lines.map((l) => ({ kind: l.dataset.kind, text: l.textContent })));
  const percentiles = {};
  for (const route of routes) {
    percentiles[route] = await page.$$eval(`[data-route="${route}"] [data-quantile]`,
      (spans) => Object.fromEntries(spans.map((s) => [s.dataset.quantile, s.dataset.seconds === "" ? null : Number(s.dataset.seconds)])));
  }
  await page.screenshot({ path: screenshot, fullPage: true });
  seen = { before, after, events, percentiles, offenders };
} catch (e) {
  failures.push(String(e));
} finally {
  await browser.close();
}
finish(failures, seen);
