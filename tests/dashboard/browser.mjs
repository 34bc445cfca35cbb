// Debian's headless Chromium, driven by playwright-core, as both dashboard checks open it:
// a page whose errors are failures, and the one way the check ends.
import { chromium } from "playwright-core";

export async function open(failures) {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
  });
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  page.on("pageerror", (e) => failures.push(`page error: ${e}`));
  page.on("console", (m) => m.type() === "error" && failures.push(`console error: ${m.text()}`));
  return { browser, page };
}

// Prints what was seen as JSON, or the failures (exit 1).
export function finish(failures, seen) {
  if (failures.length) {
    console.error(failures.join("\n"));
    process.exit(1);
  }
  console.log(JSON.stringify(seen));
}
