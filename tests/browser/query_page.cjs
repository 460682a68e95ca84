// Drives Debian's chromium (headless, via playwright-core over the DevTools protocol)
// through the web UI's query page; called by tests/web_ui.rs, which checks what it
// prints. Usage: node query_page.cjs PLAYWRIGHT_CORE_DIR URL SCREENSHOT USER_DATA_DIR
//
// Prints one JSON line: the charts found (canvas drawn, points plotted) when the page
// first shows data and after the next batches, the "last batch" figure at both
// moments, and the page's errors. Waits are bounded polls on page state, never sleeps.
"use strict";
const [, , playwrightDir, url, screenshot, userDataDir] = process.argv;
const { chromium } = require(playwrightDir);

const CHARTS = ["chart-rates", "chart-input", "chart-duration", "chart-state-rows",
  "chart-state-memory", "chart-watermark", "chart-late"];

function snapshot(page) {
  return page.evaluate((ids) => ({
    batch: document.getElementById("batch-id").textContent,
    state: document.getElementById("state").textContent,
    sql: document.getElementById("sql").textContent,
    plan: document.getElementById("plan").textContent,
    progressRows: document.querySelectorAll("#progress tbody tr").length,
    charts: ids.map((id) => {
      const el = document.getElementById(id);
      const canvas = el.querySelector(".uplot canvas");
      return {
        id,
        canvas: !!canvas && canvas.width > 0 && canvas.height > 0,
        points: Number(el.dataset.points || 0),
        lastBatch: el.dataset.lastBatch === undefined || el.dataset.lastBatch === "" ? null : Number(el.dataset.lastBatch),
        series: Number(el.dataset.series || 0),
      };
    }),
  }), CHARTS);
}

(async () => {
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1400, height: 1250 },
  });
  const errors = [];
  const offsite = [];
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
    page.on("request", (r) => { if (!r.url().startsWith("http://127.0.0.1:")) offsite.push(r.url()); });
    await page.goto(url);
    // The first poll with data: a batch number and every chart drawn.
    await page.waitForFunction((ids) => /^\d+$/.test(document.getElementById("batch-id").textContent)
      && ids.every((id) => document.querySelector("#" + id + " .uplot canvas")), CHARTS, { timeout: 120000 });
    const first = await snapshot(page);
    // Later polls (no reload): the figure and the charts move as batches run.
    await page.waitForFunction((b) => {
      const now = document.getElementById("batch-id").textContent;
      return /^\d+$/.test(now) && Number(now) >= Number(b) + 2;
    }, first.batch, { timeout: 120000 });
    await page.waitForFunction((n) => Number(document.getElementById("chart-input").dataset.lastBatch) > n,
      first.charts[1].lastBatch, { timeout: 120000 });
    const later = await snapshot(page);
    await page.screenshot({ path: screenshot, fullPage: false });
    console.log(JSON.stringify({ first, later, errors, offsite }));
  } finally {
    await context.close();
  }
})().catch((e) => {
  console.log(JSON.stringify({ failure: String(e && e.stack || e), errors: [], offsite: [] }));
  process.exit(1);
});
