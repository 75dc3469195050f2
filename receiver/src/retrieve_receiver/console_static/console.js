// Retrieve console: plain JS, no build step. The token lives in an HttpOnly cookie; POSTs carry
// the X-Retrieve-Console header the server requires against cross-site requests.
"use strict";

const COLORS = ["#3b6fd8", "#d8553b", "#2e9e5b", "#8e44ad", "#c99a06", "#16a2b8"];
const state = { apps: [], selected: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", ...(options || {}) });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function fmtTime(ts) {
  if (!ts) return "–";
  return new Date(ts * 1000).toISOString().replace("T", " ").replace(/\.(\d{3})Z$/, ".$1Z");
}

function notice(text) {
  document.getElementById("notice").textContent = text;
}

// ---------------------------------------------------------------- applications

function renderApplications(apps) {
  const section = document.getElementById("applications");
  section.replaceChildren();
  if (!apps.length) section.append(el("p", { class: "muted", text: "No application is served." }));
  for (const app of apps) {
    const head = el("div", { class: "app-head" },
      el("h2", { text: `${app.namespace}/${app.name}` }),
      el("span", { class: "muted", text: app.host ? `https://${app.host}` : "webhook disabled" }),
      el("span", { class: "stat", id: `queue-${app.namespace}-${app.name}` }, "queue depth ", el("b", { text: app.queueDepth })),
      el("span", { class: "stat" }, "retrying ", el("b", { text: app.retrying })),
      el("span", { class: "stat", id: `dead-${app.namespace}-${app.name}` }, "dead letters ", el("b", { text: app.deadLetters })),
    );
    const rows = app.integrations.map((i) => el("tr", { "data-integration": i.id, class: i.enabled ? "" : "disabled" },
      el("td", {}, el("b", { text: i.name }), i.enabled ? null : " (disabled)", el("br"), el("code", { class: "muted", text: i.id })),
      el("td", { class: "url" }, el("code", { class: "webhook-url", text: i.webhookURL || "–" }), el("br"),
        el("code", { class: "muted", text: i.xmlWebhookURL || "" })),
      el("td", { text: i.preset || "none" }),
      el("td", { class: "num received", text: i.received }),
      el("td", { class: "num rejected", text: i.rejected }),
      el("td", { class: "num failed", text: i.failed }),
      el("td", { text: fmtTime(i.lastReceivedAt) }),
      el("td", {}, el("button", {
        class: "replay", type: "button", "data-integration": i.id, disabled: app.deadLetters === 0,
        title: "Requeue this integration's dead letters", onclick: () => replay(app, i),
      }, "Replay dead letters")),
    ));
    section.append(head, el("table", { class: "integrations" },
      el("thead", {}, el("tr", {}, ...["integration", "webhook URL (JSON / XML)", "signature", "received 1h", "rejected 1h", "failed 1h", "last received", ""].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...rows)));
  }
}

async function replay(app, integration) {
  const query = new URLSearchParams({ namespace: app.namespace, app: app.name, integration: integration.id });
  try {
    const result = await api(`api/replay?${query}`, { method: "POST", headers: { "X-Retrieve-Console": "1" } });
    notice(`Replayed ${result.replayed} dead letter(s) of ${integration.name}.`);
  } catch (error) {
    notice(`Replay failed: ${error.message}`);
  }
  await refreshOverview();
  await refreshLogs();
}

function fillIntegrationFilter(apps) {
  const select = document.getElementById("log-integration");
  if (select.options.length) return;
  for (const app of apps) {
    select.append(el("option", { value: JSON.stringify({ namespace: app.namespace, app: app.name }), text: `${app.namespace}/${app.name}: all integrations` }));
    for (const i of app.integrations) {
      select.append(el("option", { value: JSON.stringify({ namespace: app.namespace, app: app.name, integration: i.id }), text: `${app.name} / ${i.name}` }));
    }
  }
}

async function refreshOverview() {
  try {
    const data = await api("api/overview");
    state.apps = data.applications;
    renderApplications(state.apps);
    fillIntegrationFilter(state.apps);
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    notice(`Overview unavailable: ${error.message}`);
  }
}

// ---------------------------------------------------------------- queue chart

function renderChart(data) {
  const width = 900, height = 160, left = 40, right = 10, top = 10, bottom = 22;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", height: `${height}`, role: "img", "aria-label": "queue depth over time" });
  const samples = data.samples;
  const apps = [...new Set(samples.flatMap((s) => Object.keys(s.depth)))];
  const max = Math.max(1, ...samples.flatMap((s) => Object.values(s.depth)));
  const t0 = samples.length ? samples[0].ts : 0;
  const t1 = samples.length ? samples[samples.length - 1].ts : 1;
  const x = (ts) => left + ((ts - t0) / Math.max(1, t1 - t0)) * (width - left - right);
  const y = (v) => top + (1 - v / max) * (height - top - bottom);
  chart.append(svg("line", { x1: left, y1: y(0), x2: width - right, y2: y(0), class: "chart-axis" }));
  chart.append(svg("line", { x1: left, y1: top, x2: left, y2: y(0), class: "chart-axis" }));
  for (const [value, label] of [[0, "0"], [max, String(max)]]) {
    const text = svg("text", { x: left - 6, y: y(value) + 4, "text-anchor": "end", class: "chart-label" });
    text.textContent = label;
    chart.append(text);
  }
  apps.forEach((name, index) => {
    const color = COLORS[index % COLORS.length];
    const points = samples.map((s) => `${x(s.ts).toFixed(1)},${y(s.depth[name] || 0).toFixed(1)}`).join(" ");
    chart.append(svg("polyline", { points, fill: "none", stroke: color, "stroke-width": 2, "data-app": name }));
    const legend = svg("text", { x: left + 10 + index * 160, y: height - 6, fill: color, "font-size": 12 });
    legend.textContent = `■ ${name}`;
    chart.append(legend);
  });
  const box = document.getElementById("queue-chart");
  box.replaceChildren(chart);
  const minutes = samples.length ? ((t1 - t0) / 60).toFixed(1) : "0";
  document.getElementById("queue-caption").textContent = `(${samples.length} samples every ${data.intervalSeconds} s, last ${minutes} min)`;
}

async function refreshChart() {
  try {
    renderChart(await api("api/queue"));
  } catch (error) {
    notice(`Queue history unavailable: ${error.message}`);
  }
}

// ---------------------------------------------------------------- webhook log

async function refreshLogs() {
  const select = document.getElementById("log-integration");
  if (!select.value) return;
  const filter = JSON.parse(select.value);
  const status = document.getElementById("log-status").value;
  const query = new URLSearchParams({ namespace: filter.namespace, app: filter.app, limit: "100" });
  if (filter.integration) query.set("integration", filter.integration);
  if (status) query.set("status", status);
  const tbody = document.getElementById("log-rows");
  try {
    const data = await api(`api/logs?${query}`);
    tbody.replaceChildren(...data.records.map((r) => el("tr", {
      "data-id": r.id, "data-status": r.status, class: r.id === state.selected ? "selected" : "",
      onclick: () => showEvent(filter, r.id),
    },
      el("td", { text: fmtTime(r.ts) }),
      el("td", { text: r.source_ip }),
      el("td", {}, el("code", { text: r.integration_id || "–" })),
      el("td", { text: r.http_status }),
      el("td", {}, el("span", { class: `status status-${r.status}`, text: r.status })),
      el("td", { class: "num", text: r.attempts }),
      el("td", { text: r.error || r.message }),
    )));
    document.getElementById("log-count").textContent = `${data.records.length} record(s)`;
  } catch (error) {
    notice(`Logs unavailable: ${error.message}`);
  }
}

// ---------------------------------------------------------------- error notifications

async function refreshNotifications() {
  const select = document.getElementById("log-integration");
  if (!select.value) return;
  const filter = JSON.parse(select.value);
  const query = new URLSearchParams({ namespace: filter.namespace, app: filter.app, limit: "50" });
  if (filter.integration) query.set("integration", filter.integration);
  try {
    const data = await api(`api/notifications?${query}`);
    document.getElementById("notification-rows").replaceChildren(...data.attempts.map((a) => el("tr", { "data-result": a.result },
      el("td", { text: fmtTime(a.ts) }),
      el("td", { text: a.notification }),
      el("td", { text: a.event }),
      el("td", {}, el("code", { text: a.integration_id })),
      el("td", { class: "num", text: a.count }),
      el("td", {}, el("span", { class: `status status-${a.result === "sent" ? "succeeded" : "failed"}`, text: a.result })),
      el("td", { text: a.http_status === null ? "–" : a.http_status }),
      el("td", { class: "num", text: a.attempts }),
      el("td", { text: a.error || "" }),
    )));
    document.getElementById("notification-count").textContent = `${data.attempts.length} attempt(s)`;
  } catch (error) {
    notice(`Notifications unavailable: ${error.message}`);
  }
}

function pretty(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text; }
}

async function showEvent(filter, id) {
  state.selected = id;
  for (const row of document.querySelectorAll("#log-rows tr")) row.classList.toggle("selected", row.dataset.id === id);
  const query = new URLSearchParams({ namespace: filter.namespace, app: filter.app });
  let r;
  try {
    r = await api(`api/logs/${encodeURIComponent(id)}?${query}`);
  } catch (error) {
    notice(`Event unavailable: ${error.message}`);
    return;
  }
  document.getElementById("event-id").textContent = r.id;
  const meta = document.getElementById("event-meta");
  meta.replaceChildren();
  for (const [name, value] of [["received", fmtTime(r.ts)], ["source IP", r.source_ip], ["integration", r.integration_id], ["HTTP", r.http_status], ["format", r.format || "–"], ["error", r.error || "–"]]) {
    meta.append(el("dt", { text: name }), el("dd", { text: value }));
  }
  const result = document.getElementById("event-result");
  result.replaceChildren(...[
    el("dl", {},
      el("dt", { text: "status" }), el("dd", {}, el("span", { class: `status status-${r.status}`, text: r.status })),
      el("dt", { text: "job status" }), el("dd", { text: r.job_status === null || r.job_status === undefined ? "–" : r.job_status }),
      el("dt", { text: "attempts" }), el("dd", { text: r.attempts }),
      el("dt", { text: "message" }), el("dd", { class: "result-message", text: r.message || "–" }),
      el("dt", { text: "updated" }), el("dd", { text: fmtTime(r.updated_at) }),
    ),
    r.destinations.length ? el("table", { class: "destinations" },
      el("thead", {}, el("tr", {}, ...["destination", "record", "HTTP", "ms", "batch", "error"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...r.destinations.map((d) => el("tr", {},
        el("td", { text: d.name }), el("td", { text: d.record }), el("td", { text: d.status === null ? "–" : d.status }),
        el("td", { class: "num", text: d.latency_ms.toFixed(1) }),
        el("td", {}, d.batch ? el("code", { class: "batch", text: d.batch }) : "–"),
        el("td", { text: d.error || "" }))))) : null,
    r.console.length ? el("pre", { class: "console-lines", text: r.console.join("\n") }) : null,
  ].filter(Boolean));
  document.getElementById("event-payload").textContent = pretty(r.payload) + (r.payload_truncated ? "\n… (truncated)" : "");
  document.getElementById("event-detail").hidden = false;
}

async function start() {
  const statusSelect = document.getElementById("log-status");
  const { statuses } = await api("api/statuses");
  for (const s of statuses) statusSelect.append(el("option", { value: s, text: s }));
  document.getElementById("log-filters").addEventListener("submit", (event) => { event.preventDefault(); refreshLogs(); refreshNotifications(); });
  document.getElementById("log-integration").addEventListener("change", () => { refreshLogs(); refreshNotifications(); });
  statusSelect.addEventListener("change", refreshLogs);
  await refreshOverview();
  await refreshChart();
  await refreshLogs();
  await refreshNotifications();
  setInterval(refreshOverview, 3000);
  setInterval(refreshNotifications, 5000);
  setInterval(refreshChart, 3000);
}

document.addEventListener("DOMContentLoaded", () => { start().catch((error) => notice(error.message)); });
