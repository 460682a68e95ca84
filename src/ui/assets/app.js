// millrace web UI: polls the REST API every second and redraws; charts by uPlot
// (vendored in /assets). No build step, no network beyond this server.
"use strict";

const POLL_MS = 1000;
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

async function getJson(url, options) {
  const response = await fetch(url, Object.assign({ cache: "no-store" }, options));
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function text(id, value) {
  const el = document.getElementById(id);
  if (el && el.textContent !== String(value)) el.textContent = value;
}

function showError(message) {
  const el = document.getElementById("error");
  el.hidden = !message;
  el.textContent = message || "";
}

function fmtRate(x) {
  return x === null || x === undefined ? "–" : (Math.round(x * 10) / 10).toLocaleString("en");
}

function cell(row, value, numeric) {
  const td = row.insertCell();
  td.textContent = value === null || value === undefined ? "" : value;
  if (numeric) td.className = "num";
  return td;
}

function stateRows(progress) {
  if (!progress || !progress.stateOperators.length) return null;
  return progress.stateOperators.reduce((sum, op) => sum + (op.numRowsTotal || 0), 0);
}

// ---------- the list of queries ----------

async function refreshIndex() {
  try {
    const queries = await getJson("/api/queries");
    const body = document.querySelector("#queries tbody");
    body.replaceChildren();
    if (!queries.length) {
      const row = body.insertRow();
      const td = cell(row, "no streaming query has started yet");
      td.colSpan = 9;
      td.className = "muted";
    }
    for (const q of queries) {
      const p = q.lastProgress;
      const row = body.insertRow();
      const link = document.createElement("a");
      link.href = "/queries/" + encodeURIComponent(q.runId);
      link.textContent = q.name;
      row.insertCell().appendChild(link);
      cell(row, q.id.slice(0, 8)).title = q.id;
      cell(row, q.state).className = "state-" + q.state;
      cell(row, p ? p.batchId : null, true);
      cell(row, p ? fmtRate(p.inputRowsPerSecond) : null, true);
      cell(row, p ? fmtRate(p.processedRowsPerSecond) : null, true);
      cell(row, p && p.eventTime.watermark);
      cell(row, q.stateRows, true);
      cell(row, q.exception).className = q.exception ? "error" : "";
    }
    showError(null);
  } catch (e) {
    showError("cannot reach millrace: " + e.message);
  }
}

// ---------- one query ----------

const charts = {};

function seconds(iso) {
  return iso ? Date.parse(iso) / 1000 : null;
}

// Each chart: its series labels and how to read them from the reports.
function chartSpecs(reports) {
  const operators = Math.max(0, ...reports.map((p) => p.stateOperators.length));
  const opLabel = (i) => {
    const op = reports.map((p) => p.stateOperators[i]).find((o) => o) || {};
    return (op.operatorName || "operator") + " #" + i;
  };
  const perOperator = (field) => Array.from({ length: operators }, (_, i) => ({
    label: opLabel(i), value: (p) => (p.stateOperators[i] ? p.stateOperators[i][field] : null),
  }));
  const phases = ["latestOffset", "getBatch", "queryPlanning", "addBatch", "walCommit", "commitOffsets", "triggerExecution"];
  return {
    "chart-rates": [
      { label: "inputRowsPerSecond", value: (p) => p.inputRowsPerSecond },
      { label: "processedRowsPerSecond", value: (p) => p.processedRowsPerSecond },
    ],
    "chart-input": [{ label: "numInputRows", value: (p) => p.numInputRows }],
    "chart-duration": phases.map((phase) => ({ label: phase, value: (p) => p.durationMs[phase] })),
    "chart-state-rows": perOperator("numRowsTotal"),
    "chart-state-memory": perOperator("memoryUsedBytes"),
    "chart-watermark": [
      {
        label: "batch time − watermark",
        value: (p) => (p.eventTime.watermark ? seconds(p.timestamp) - seconds(p.eventTime.watermark) : null),
      },
      {
        label: "max event time − watermark",
        value: (p) => (p.eventTime.watermark && p.eventTime.max ? seconds(p.eventTime.max) - seconds(p.eventTime.watermark) : null),
      },
    ],
    "chart-late": [{
      label: "numRowsDroppedByWatermark",
      value: (p) => p.stateOperators.reduce((sum, op) => sum + (op.numRowsDroppedByWatermark || 0), 0),
    }],
  };
}

function drawChart(id, series, reports) {
  const container = document.getElementById(id);
  const data = [reports.map((p) => seconds(p.timestamp))];
  for (const s of series) data.push(reports.map((p) => { const v = s.value(p); return v === undefined ? null : v; }));
  const key = series.map((s) => s.label).join("|");
  let chart = charts[id];
  if (chart && chart.key !== key) {
    chart.plot.destroy();
    chart = null;
  }
  const width = Math.max(300, container.clientWidth - 16);
  if (!chart) {
    const opts = {
      width,
      height: 200,
      scales: { x: { time: true } },
      series: [{}].concat(series.map((s, i) => ({
        label: s.label, stroke: COLORS[i % COLORS.length], width: 1.5, points: { show: true, size: 4 },
      }))),
      axes: [{}, { size: 60 }],
    };
    chart = { key, plot: new uPlot(opts, data, container) };
    charts[id] = chart;
  } else {
    chart.plot.setData(data);
    if (Math.abs(chart.plot.width - width) > 4) chart.plot.setSize({ width, height: 200 });
  }
  container.dataset.points = String(reports.length);
  container.dataset.lastBatch = reports.length ? String(reports[reports.length - 1].batchId) : "";
  container.dataset.series = String(series.length);
}

function renderProgressTable(reports) {
  const body = document.querySelector("#progress tbody");
  body.replaceChildren();
  for (const p of reports.slice(-20).reverse()) {
    const row = body.insertRow();
    cell(row, p.batchId, true);
    cell(row, p.timestamp);
    cell(row, p.numInputRows, true);
    cell(row, fmtRate(p.inputRowsPerSecond), true);
    cell(row, fmtRate(p.processedRowsPerSecond), true);
    cell(row, p.durationMs.triggerExecution, true);
    cell(row, p.eventTime.watermark);
    cell(row, p.sink.numOutputRows, true);
  }
}

async function refreshQuery(key) {
  try {
    const [q, reports] = await Promise.all([
      getJson("/api/queries/" + encodeURIComponent(key)),
      getJson("/api/queries/" + encodeURIComponent(key) + "/progress?limit=100"),
    ]);
    const p = q.lastProgress;
    document.title = "millrace · " + q.name;
    text("title", q.name);
    text("query-id", q.id);
    text("run-id", q.runId);
    text("state", q.state);
    document.getElementById("state").className = "value state-" + q.state;
    text("status-message", q.state === "active" ? q.status.message : "");
    text("batch-id", p ? p.batchId : "–");
    text("input-rate", p ? fmtRate(p.inputRowsPerSecond) : "–");
    text("process-rate", p ? fmtRate(p.processedRowsPerSecond) : "–");
    text("watermark", (p && p.eventTime.watermark) || "none");
    text("state-rows", stateRows(p) === null ? "stateless" : stateRows(p).toLocaleString("en"));
    const exception = document.getElementById("exception");
    exception.hidden = !q.exception;
    exception.textContent = q.exception ? "failed: " + q.exception : "";
    document.getElementById("stop").disabled = q.state !== "active";
    text("sql", q.sql || "(started from the DataFrame API: no SQL)");
    text("plan", q.plan);
    const specs = chartSpecs(reports);
    for (const id of Object.keys(specs)) drawChart(id, specs[id], reports);
    renderProgressTable(reports);
    showError(null);
  } catch (e) {
    showError("cannot reach millrace: " + e.message);
  }
}

function startQueryPage() {
  const key = decodeURIComponent(location.pathname.split("/").pop());
  document.getElementById("stop").addEventListener("click", async () => {
    document.getElementById("stop").disabled = true;
    try {
      await getJson("/api/queries/" + encodeURIComponent(key) + "/stop", { method: "POST" });
    } catch (e) {
      showError(e.message);
    }
  });
  const tick = async () => {
    await refreshQuery(key);
    setTimeout(tick, POLL_MS);
  };
  tick();
}

function startIndexPage() {
  const tick = async () => {
    await refreshIndex();
    setTimeout(tick, POLL_MS);
  };
  tick();
}

if (document.body.dataset.page === "query") startQueryPage();
else startIndexPage();
