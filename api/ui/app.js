// The realign dashboard: a small single-page app over the authenticated API (same origin, no CDN, no build).
// The API key lives in sessionStorage only; every request carries it, so the page sees what its tenant sees.
// DOM is built with textContent (never by parsing HTML strings), so pair texts and job fields cannot inject markup.
"use strict";

const KEY_STORAGE = "realign.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const CATEGORIES = ["INVERT", "PUNISH", "RETAIN", "ERROR"];
const STAGES = ["validate", "triage", "score", "train", "evaluate"];
const REVIEW_MAX_PAIRS = 5000; // the review table loads at most this many pairs (the API pages through all)
let view = null; // {abort: AbortController, timers: []} of the page on screen

// ------------------------------------------------------------------ helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style") el.style.cssText = v; // CSSOM: allowed by the page's CSP (style attributes are not)
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function toast(message, isError) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.className = isError ? "error" : "";
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 4000);
}

function apiKey() { return sessionStorage.getItem(KEY_STORAGE); }

class ApiError extends Error {
  constructor(status, detail) { super(`${status}: ${detail}`); this.status = status; this.detail = detail; }
}

async function call(method, path, body, extra) {
  const headers = { Authorization: `Bearer ${apiKey()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                       signal: view && view.abort.signal, ...(extra || {}) });
  if (response.status === 401) { logout("the API key was refused (401): log in again"); throw new ApiError(401, "unauthorised"); }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!response.ok) throw new ApiError(response.status, (data && data.detail) || text || response.statusText);
  return data;
}
const get = (path) => call("GET", path);

// Every page of a cursor-paginated list.
async function allPages(path, limit, max) {
  const out = []; let cursor = null; let extra = {};
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await get(`${path}${sep}limit=${limit}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    out.push(...page.data); extra = page; cursor = page.next_cursor;
  } while (cursor && out.length < (max || 100000));
  return { data: out, last: extra };
}

// A resource that does not exist yet (404: e.g. impact scores before the score stage ran) as `fallback`.
async function unlessMissing(promise, fallback) {
  try { return await promise; } catch (err) { if (err.status === 404) return fallback; throw err; }
}

function failed(err) { if (err && err.name !== "AbortError" && err.status !== 401) toast(err.detail || err.message, true); }

// The first `limit` rows of a JSONL response, by id, read as a stream (a large job's triaged file is not loaded
// whole into the page).
async function firstRows(response, limit) {
  const rows = new Map();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (value) buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0 && rows.size < limit) {
      const line = buffer.slice(0, end); buffer = buffer.slice(end + 1);
      if (line.trim()) { const row = JSON.parse(line); rows.set(row.id, row); }
    }
    if (rows.size >= limit) { reader.cancel().catch(() => {}); break; }
    if (done) { if (buffer.trim()) { const row = JSON.parse(buffer); rows.set(row.id, row); } break; }
  }
  return rows;
}

// Server-sent events over fetch (EventSource cannot send the Authorization header).
async function streamEvents(jobId, onEvent, signal) {
  const response = await fetch(`/v1/jobs/${jobId}/events`, {
    headers: { Authorization: `Bearer ${apiKey()}`, Accept: "text/event-stream" }, signal });
  if (!response.ok || !response.body) throw new ApiError(response.status, "event stream refused");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end); buffer = buffer.slice(end + 2);
      const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      let event;
      try { event = JSON.parse(data); } catch (_) { continue; } // a keep-alive or a partial frame
      Promise.resolve().then(() => onEvent(event)).catch(failed);
    }
  }
}

function follow(jobId, onEvent) {
  const signal = view.abort.signal;
  streamEvents(jobId, onEvent, signal).catch((err) => {
    if (!signal.aborted) console.warn("event stream ended", err);
  });
}

function every(ms, fn) { const t = setInterval(fn, ms); view.timers.push(t); return t; }

function seconds(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "–";
  if (s < 90) return `${s.toFixed(0)} s`;
  if (s < 5400) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
function pct(v) { return Number.isFinite(v) ? `${(100 * v).toFixed(1)}%` : "n/a"; }
function when(iso) { return iso ? new Date(iso).toLocaleString() : "–"; }
function stateBadge(state) { return h("span", { class: `state ${state}`, "data-state": state }, state.replace("_", " ")); }

function currentProgress(job) {
  const rows = job.progress || [];
  const running = rows.find((p) => p.stage === job.stage);
  if (!running) return { fraction: 0, eta: null, label: job.stage ? `${job.stage} starting` : "queued" };
  const fraction = running.total ? Math.min(1, running.done / running.total) : (running.completed_at ? 1 : 0);
  const label = running.total ? `${running.stage} ${running.done}/${running.total}` : running.stage;
  return { fraction, eta: running.completed_at ? 0 : running.eta_s, label };
}

function progressCell(job) {
  const p = TERMINAL.has(job.state) ? { fraction: job.state === "succeeded" ? 1 : currentProgress(job).fraction,
                                         eta: null, label: job.state } : currentProgress(job);
  return h("div", {},
    h("div", { class: "progress", title: p.label }, h("span", { style: `width:${(p.fraction * 100).toFixed(1)}%` })),
    h("div", { class: "small muted" }, p.label, TERMINAL.has(job.state) ? "" : ` · ETA ${seconds(p.eta)}`));
}

async function download(path, filename) {
  let response;
  try { response = await fetch(path, { headers: { Authorization: `Bearer ${apiKey()}` } }); } catch (err) { failed(err); return; }
  if (!response.ok) { toast(`download failed: ${response.status}`, true); return; }
  const url = URL.createObjectURL(await response.blob());
  const a = h("a", { href: url, download: filename });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ------------------------------------------------------------------ login

function logout(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  location.hash = "#/login";
  if (message) toast(message, true);
}

function renderLogin(main) {
  const input = h("input", { type: "password", id: "api-key", placeholder: "rk_…", autocomplete: "off" });
  const error = h("p", { class: "error", id: "login-error" });
  const form = h("form", { class: "card login", id: "login-form", onsubmit: async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) { error.textContent = "enter an API key"; return; }
    const response = await fetch("/v1/jobs?limit=1", { headers: { Authorization: `Bearer ${key}` } });
    if (response.status === 401) { error.textContent = "this key was refused (401): check it and the service's data directory"; return; }
    if (!response.ok) { error.textContent = `the service answered ${response.status}`; return; }
    sessionStorage.setItem(KEY_STORAGE, key);
    location.hash = "#/jobs";
  } },
  h("h1", {}, "Log in"),
  h("p", { class: "muted" }, "Paste an API key (", h("code", {}, "realign keys create --tenant NAME"),
    ", or the key `realign serve` prints). It is kept in this tab's session storage only."),
  input, h("button", { type: "submit", id: "login" }, "Log in"), error);
  main.append(h("section", { class: "card login" }, form));
  input.focus();
}

// ------------------------------------------------------------------ jobs list

function renderJobs(main) {
  const body = h("textarea", { id: "job-body", rows: 8, spellcheck: "false",
    placeholder: "POST /v1/realign body as JSON, e.g. the contents of examples/synthetic_realign.json" });
  const review = h("input", { type: "checkbox", id: "job-review" });
  const status = h("span", { class: "small", id: "submit-status" });
  const submit = async () => {
    let parsed;
    try { parsed = JSON.parse(body.value); } catch (err) { status.textContent = `not JSON: ${err.message}`; status.className = "error"; return; }
    if (review.checked) parsed.review = true;
    try {
      const job = await call("POST", "/v1/realign", parsed);
      status.className = "small"; status.textContent = `submitted ${job.id}`;
      location.hash = `#/jobs/${job.id}`;
    } catch (err) { status.className = "error"; status.textContent = err.detail || err.message; }
  };
  const table = h("tbody", { id: "jobs-rows" });
  main.append(
    h("h1", {}, "Jobs"),
    h("section", { class: "card" }, h("h2", {}, "Submit a re-alignment job"), body,
      h("div", { class: "toolbar" },
        h("label", {}, review, " review triage before training (", h("code", {}, "review: true"), ")"),
        h("button", { type: "button", id: "submit-job", onclick: submit }, "Submit"), status)),
    h("section", { class: "card" },
      h("table", { id: "jobs" }, h("thead", {}, h("tr", {}, ["Job", "Kind", "State", "Stage", "Progress", "Created"].map((c) => h("th", {}, c)))), table)));

  const rows = new Map();
  const rowFor = (job) => h("tr", { "data-job": job.id },
    h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.id)), h("td", {}, job.kind), h("td", {}, stateBadge(job.state)),
    h("td", {}, job.stage || "–"), h("td", {}, progressCell(job)), h("td", { class: "small" }, when(job.created_at)));
  const put = (job) => {
    const fresh = rowFor(job);
    if (rows.has(job.id)) rows.get(job.id).replaceWith(fresh); else table.append(fresh);
    rows.set(job.id, fresh);
  };
  const streaming = new Set();
  const load = async () => {
    const page = await get("/v1/jobs?limit=50");
    if (!page.data.length && !rows.size) table.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "no jobs yet")));
    for (const job of page.data) {
      put(job);
      // live through the SSE stream (a few at a time: browsers allow ~6 connections per origin); the rest poll
      if (!TERMINAL.has(job.state) && !streaming.has(job.id) && streaming.size < 2) {
        streaming.add(job.id);
        follow(job.id, async () => { put(await get(`/v1/jobs/${job.id}`)); });
      }
    }
  };
  load().catch(failed);
  every(5000, () => load().catch(() => {}));
}

// ------------------------------------------------------------------ job page

function evalRows(report) {
  // Three shapes: an eval job's comparison ({vs_base: [{metric, before, after}]}), its per-model summary
  // ({target: {metric: {value, ci_low, ci_high}}, base: ...}), and a realign job's flat summary
  // ({name}_before / {name}_after with _ci partners, tpa_by_category). Each gives rows of before vs after.
  const src = report || {};
  const interval = (m) => (m ? [m.ci_low, m.ci_high] : null);
  const comparison = (src.comparison || {}).vs_base;
  if (Array.isArray(comparison) && comparison.length) {
    return comparison.map((c) => ({ label: c.metric, before: (c.before || {}).value, beforeCi: interval(c.before),
                                    after: (c.after || {}).value, afterCi: interval(c.after) }));
  }
  const perModel = src.target ? src : (src.summary && src.summary.target ? src.summary : null);
  if (perModel) {
    return Object.entries(perModel.target).filter(([, m]) => m && typeof m === "object" && "value" in m).map(([metric, m]) => {
      const base = (perModel.base || {})[metric];
      return { label: metric, before: base ? base.value : undefined, beforeCi: interval(base), after: m.value, afterCi: interval(m) };
    });
  }
  const flat = (o) => o && typeof o === "object" && Object.keys(o).some((k) => k.endsWith("_before") && typeof o[k] !== "object");
  const summary = flat(src.summary) ? src.summary : src;
  const rows = [];
  for (const key of Object.keys(summary)) {
    const m = key.match(/^(.*)_before$/);
    if (!m || !(`${m[1]}_after` in summary)) continue;
    rows.push({ label: m[1], before: summary[key], beforeCi: summary[`${key}_ci`], after: summary[`${m[1]}_after`],
                afterCi: summary[`${m[1]}_after_ci`] });
  }
  for (const [cat, c] of Object.entries(summary.tpa_by_category || {})) {
    rows.push({ label: `tpa · ${cat}`, before: c.before, beforeCi: c.before_ci, after: c.after, afterCi: c.after_ci });
  }
  return rows;
}

function ciText(v, ci) {
  if (!Number.isFinite(v)) return "n/a";
  return ci && Number.isFinite(ci[0]) ? `${pct(v)} [${pct(ci[0])}, ${pct(ci[1])}]` : pct(v);
}

function evalSection(report, id) {
  const rows = evalRows(report);
  const canvas = h("canvas", { class: "chart", id, style: `height:${Math.max(120, rows.length * 30 + 50)}px` });
  const table = h("table", { class: "small" }, h("thead", {}, h("tr", {}, h("th", {}, "metric"), h("th", { class: "num" }, "before (95% CI)"),
    h("th", { class: "num" }, "after (95% CI)"), h("th", { class: "num" }, "change"))),
  h("tbody", {}, rows.map((r) => h("tr", {}, h("td", {}, r.label), h("td", { class: "num" }, ciText(r.before, r.beforeCi)),
    h("td", { class: "num" }, ciText(r.after, r.afterCi)),
    h("td", { class: "num" }, Number.isFinite(r.before) && Number.isFinite(r.after) ? `${((r.after - r.before) * 100).toFixed(1)} pt` : "–")))));
  const wrap = h("div", {}, canvas, rows.length ? table : h("p", { class: "muted" }, "no evaluation yet"));
  requestAnimationFrame(() => Charts.intervals(canvas, rows, { title: "before vs after (dots: value, bars: 95% CI)", empty: "no evaluation yet" }));
  return wrap;
}

function verdictBlock(title, text, verdict) {
  const v = verdict || {};
  return h("div", {}, h("div", { class: "small muted" }, title), h("pre", {}, text || ""),
    h("div", { class: "verdict" }, h("span", { class: v.verdict || "" }, v.verdict || "no verdict"),
      (v.clauses || []).length ? ` · clauses ${v.clauses.join(", ")}` : "", v.rationale ? ` · ${v.rationale}` : ""));
}

function renderJob(main, jobId) {
  const header = h("div", { id: "job-header" });
  const timeline = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  timeline.setAttribute("class", "timeline"); timeline.id = "timeline";
  const categories = h("canvas", { class: "chart", id: "chart-categories" });
  const scores = h("canvas", { class: "chart", id: "chart-scores" });
  const scoreNote = h("p", { class: "small muted", id: "scores-note" });
  const curves = { loss: h("canvas", { class: "chart", id: "chart-loss" }), rewards: h("canvas", { class: "chart", id: "chart-rewards" }),
                   margin: h("canvas", { class: "chart", id: "chart-margin" }), lr: h("canvas", { class: "chart", id: "chart-lr" }) };
  const evalBox = h("div", { id: "eval" });
  const artifacts = h("div", { id: "artifacts" });
  const triageBox = h("div", { id: "triage" });
  const events = h("div", { class: "events", id: "events" });
  main.append(
    h("p", {}, h("a", { href: "#/jobs" }, "← jobs")), header,
    h("section", { class: "card" }, h("h2", {}, "Stage timeline"), timeline),
    h("div", { class: "grid2 realign-only" },
      h("section", { class: "card" }, h("h2", {}, "Triage categories"), categories),
      h("section", { class: "card" }, h("h2", {}, "Impact scores"), scores, scoreNote)),
    h("section", { class: "card realign-only" }, h("h2", {}, "Training curves"),
      h("div", { class: "grid4" }, curves.loss, curves.rewards, curves.margin, curves.lr)),
    h("section", { class: "card" }, h("h2", { id: "eval-title" }, "Evaluation: before vs after"), evalBox),
    h("section", { class: "card realign-only" }, h("h2", {}, "Triage review"), triageBox),
    h("div", { class: "grid2" },
      h("section", { class: "card" }, h("h2", {}, "Artifacts"), artifacts),
      h("section", { class: "card" }, h("h2", {}, "Events"), events)));

  let job = null; let metricsRows = []; let metricsCursor = null; let loaded = {};
  const seenEvents = new Set();

  const drawHeader = () => {
    const cancel = TERMINAL.has(job.state) ? null : h("button", { type: "button", class: "secondary", id: "cancel-job", onclick: async () => {
      try { job = await call("POST", `/v1/jobs/${jobId}/cancel`); await refresh(); } catch (err) { failed(err); } } }, "Cancel");
    header.replaceChildren(
      h("h1", {}, `Job ${job.id} `, stateBadge(job.state)),
      h("div", { class: "toolbar" }, h("span", {}, `stage: ${job.stage || "–"}`),
        job.kind === "eval" ? h("span", {}, `model: ${job.request.model}; suites: ${(job.request.suites || []).join(", ")}`)
          : [h("span", {}, `variant: ${(job.request.method || {}).variant || "–"}`), h("span", {}, `base: ${(job.request.base_model || {}).name_or_path || "–"}`)],
        progressCell(job), cancel,
        job.artifacts.adapter_id ? h("a", { href: `#/adapters/${job.artifacts.adapter_id}`, id: "job-adapter" }, `adapter ${job.artifacts.adapter_name}`) : null),
      job.error ? h("p", { class: "error", id: "job-error" }, `${job.error.stage || ""} ${job.error.kind || ""}: ${job.error.message || ""}`) : "");
  };

  const drawTimeline = () => {
    const stages = (job.progress || []).filter((p) => STAGES.includes(p.stage)).map((p) => ({
      stage: p.stage, start: new Date(p.started_at), end: p.completed_at ? new Date(p.completed_at) : (TERMINAL.has(job.state) ? new Date(p.updated_at) : null) }));
    Charts.timeline(timeline, stages, new Date());
  };

  const drawCategories = () => {
    const counts = job.category_counts || {};
    Charts.bars(categories, CATEGORIES.filter((c) => c in counts || c !== "ERROR").map((c) => ({ label: c === "ERROR" ? "errors" : c, value: counts[c] || 0, color: Charts.CATEGORY_COLORS[c] })),
      { title: "pairs per category under the new policy", empty: "triage has not run yet" });
  };

  const drawScores = async () => {
    const { data, last } = await unlessMissing(allPages(`/v1/jobs/${jobId}/scores`, 500), { data: [], last: {} });
    const weighted = data.filter((s) => s.impact_score !== null && s.impact_score !== undefined);
    const clamped = weighted.filter((s) => s.impact_score <= 0).length;
    Charts.histogram(scores, weighted.map((s) => s.impact_score), { title: "normalised impact weight of conflicting pairs",
      bins: 24, zeroColor: "#9ca3af", xLabel: "impact weight", empty: "no impact scores (not scored yet, or the variant has none)" });
    const summary = last.summary || {};
    const kinds = Object.entries(summary.by_kind || {}).map(([k, v]) => `${k} ${pct(v.share_clamped)}`).join(", ");
    scoreNote.textContent = weighted.length ? `${weighted.length} conflicting pairs scored; ${clamped} (${pct(clamped / weighted.length)}) ` +
      `clamped to zero weight (grey: a raw impact score ≤ 0 trains with no weight)${kinds ? `; by kind: ${kinds}` : ""}` +
      (summary.mode ? ` · normalisation: ${summary.mode}` : "") : "";
    scores.dataset.clampedShare = weighted.length ? String(clamped / weighted.length) : "";
  };

  const drawCurves = () => {
    const series = (keys) => keys.map((k) => ({ name: k, points: metricsRows.filter((r) => r[k] !== undefined && r[k] !== null).map((r) => [r.step, Number(r[k])]) }))
      .filter((s) => s.points.length);
    Charts.line(curves.loss, series(["loss", "loss_pref", "loss_npo", "kl"]), { title: "loss and its components", xLabel: "step", empty: "no training steps yet" });
    Charts.line(curves.rewards, series(["reward_chosen", "reward_rejected", "npo_reward"]), { title: "implicit rewards", xLabel: "step", empty: "no training steps yet" });
    Charts.line(curves.margin, series(["margin", "accuracy"]), { title: "reward margin and accuracy", xLabel: "step", empty: "no training steps yet" });
    Charts.line(curves.lr, series(["lr"]), { title: "learning rate", xLabel: "step", empty: "no training steps yet" });
  };

  const loadMetrics = async () => {
    for (;;) {
      const page = await get(`/v1/jobs/${jobId}/metrics?limit=1000${metricsCursor ? `&cursor=${encodeURIComponent(metricsCursor)}` : ""}`);
      if (!page.data.length) break;
      metricsRows.push(...page.data); metricsCursor = page.next_cursor;
      if (!metricsCursor) break;
    }
    drawCurves();
  };

  const drawArtifacts = async () => {
    const list = await get(`/v1/jobs/${jobId}/artifacts`);
    artifacts.replaceChildren(list.data.length ? h("table", { class: "small" }, h("tbody", {}, list.data.map((a) => h("tr", {},
      h("td", {}, a.name), h("td", { class: "muted" }, a.kind), h("td", { class: "num" }, `${(a.size_bytes / 1024).toFixed(1)} KiB`),
      h("td", {}, h("button", { type: "button", class: "secondary", "data-artifact": a.name,
        onclick: () => download(a.url, a.name === "adapter" ? `${job.artifacts.adapter_name || "adapter"}.tar.gz` : a.file.split("/").pop()) }, "Download"))))))
      : h("p", { class: "muted" }, "nothing yet"));
  };

  const drawTriage = async () => {
    const triaged = await fetch(`/v1/jobs/${jobId}/artifacts/triaged`, { headers: { Authorization: `Bearer ${apiKey()}` }, signal: view.abort.signal });
    if (!triaged.ok) { triageBox.replaceChildren(h("p", { class: "muted" }, "triage has not finished yet")); return; }
    const texts = await firstRows(triaged, REVIEW_MAX_PAIRS);
    const [{ data: items }, { data: scored }, review] = await Promise.all([
      allPages(`/v1/jobs/${jobId}/triage`, 500, REVIEW_MAX_PAIRS), unlessMissing(allPages(`/v1/jobs/${jobId}/scores`, 500, REVIEW_MAX_PAIRS), { data: [] }),
      get(`/v1/jobs/${jobId}/review`)]);
    const impact = new Map(scored.map((s) => [s.pair_id, s.impact_score]));
    const overridden = new Map(review.overrides.map((o) => [o.pair_id, o.original_category]));
    const clauses = [...new Set(items.flatMap((i) => [...((i.verdicts.chosen_verdict || {}).clauses || []), ...((i.verdicts.rejected_verdict || {}).clauses || [])]))].sort();
    const catFilter = h("select", { id: "filter-category" }, h("option", { value: "" }, "all categories"), CATEGORIES.map((c) => h("option", { value: c }, c)));
    const clauseFilter = h("select", { id: "filter-clause" }, h("option", { value: "" }, "all clauses"), clauses.map((c) => h("option", { value: c }, c)));
    const sortBy = h("select", { id: "sort-by" }, h("option", { value: "position" }, "dataset order"), h("option", { value: "impact" }, "impact score, high first"));
    const awaiting = review.awaiting_review;
    const rowsBody = h("tbody", { id: "triage-rows" });
    const count = h("span", { class: "small muted", id: "triage-count" });
    let shown = 20;
    const more = h("button", { type: "button", class: "secondary", onclick: () => { shown += 20; draw(); } }, "Show more");
    const change = async (item, select) => {
      try {
        const out = await call("PATCH", `/v1/jobs/${jobId}/triage/${encodeURIComponent(item.pair_id)}`, { category: select.value });
        item.category = out.category;
        if (out.original_category) overridden.set(item.pair_id, out.original_category); else overridden.delete(item.pair_id);
        toast(`${item.pair_id}: ${out.category}${out.original_category ? ` (judge said ${out.original_category})` : ""}`);
        job = await get(`/v1/jobs/${jobId}`); drawCategories(); draw();
      } catch (err) { failed(err); select.value = item.category; }
    };
    const draw = () => {
      let list = items.filter((i) => (!catFilter.value || i.category === catFilter.value) && (!clauseFilter.value ||
        [...((i.verdicts.chosen_verdict || {}).clauses || []), ...((i.verdicts.rejected_verdict || {}).clauses || [])].includes(clauseFilter.value)));
      if (sortBy.value === "impact") list = [...list].sort((a, b) => (impact.get(b.pair_id) ?? -Infinity) - (impact.get(a.pair_id) ?? -Infinity));
      count.textContent = `${list.length} of ${items.length} pairs` + (items.length >= REVIEW_MAX_PAIRS
        ? ` (the first ${REVIEW_MAX_PAIRS}; GET /v1/jobs/${jobId}/triage pages through all)` : "");
      rowsBody.replaceChildren(...list.slice(0, shown).map((item) => {
        const row = texts.get(item.pair_id) || {};
        const v = item.verdicts; const swapped = !!v.swapped;
        const oldChosenVerdict = swapped ? v.rejected_verdict : v.chosen_verdict;
        const oldRejectedVerdict = swapped ? v.chosen_verdict : v.rejected_verdict;
        const category = awaiting
          ? h("select", { class: "review-category", "data-pair": item.pair_id, "aria-label": `category of ${item.pair_id}`,
                          onchange: (e) => change(item, e.target) },
            item.category === "ERROR" ? h("option", { value: "ERROR", selected: true, disabled: true }, "ERROR (no verdict)") : null,
            ["INVERT", "PUNISH", "RETAIN"].map((c) => h("option", { value: c, selected: c === item.category }, c)))
          : h("span", { class: `cat ${item.category}` }, item.category);
        const prompt = typeof row.prompt === "string" ? row.prompt : JSON.stringify(row.prompt || "");
        return h("tr", { "data-pair": item.pair_id },
          h("td", { class: "small" }, item.pair_id, h("br"), category,
            overridden.has(item.pair_id) ? h("div", { class: "small muted" }, `judge: ${overridden.get(item.pair_id)}`) : ""),
          h("td", { class: "num small" }, impact.has(item.pair_id) && impact.get(item.pair_id) !== null ? Number(impact.get(item.pair_id)).toFixed(3) : "–"),
          h("td", {}, h("pre", {}, prompt),
            h("div", { class: "pair" }, verdictBlock("old chosen", row.original_chosen ?? row.chosen, oldChosenVerdict),
              verdictBlock("old rejected", row.original_rejected ?? row.rejected, oldRejectedVerdict)),
            v.error ? h("div", { class: "error small" }, v.error) : ""));
      }));
      more.hidden = list.length <= shown;
    };
    for (const f of [catFilter, clauseFilter, sortBy]) f.addEventListener("change", () => { shown = 20; draw(); });
    const continueButton = awaiting ? h("button", { type: "button", id: "continue-job", onclick: async () => {
      try { job = await call("POST", `/v1/jobs/${jobId}/continue`); toast("continued: training on the reviewed categories"); await refresh(true); }
      catch (err) { failed(err); } } }, "Continue to training") : null;
    triageBox.replaceChildren(
      awaiting ? h("p", { class: "state awaiting_review", id: "review-banner" }, "This job waits for your review: change categories below, then continue.") : "",
      h("div", { class: "toolbar" }, catFilter, clauseFilter, sortBy, count, continueButton),
      h("table", { class: "small" }, h("thead", {}, h("tr", {}, h("th", {}, "pair / category"), h("th", { class: "num" }, "impact"), h("th", {}, "prompt, old preference, verdicts"))), rowsBody),
      more);
    draw();
  };

  const addEvent = (e) => {
    if (seenEvents.has(e.id)) return;
    seenEvents.add(e.id);
    const data = e.data || {};
    const detail = e.type === "progress" ? `${data.done ?? ""}/${data.total ?? ""}` : e.type === "state_changed" ? `${data.from} → ${data.to}` : (data.message || (data.pair_id ? `${data.pair_id}: ${data.from} → ${data.to}` : ""));
    events.prepend(h("div", {}, `${new Date(e.created_at).toLocaleTimeString()}  ${e.type}${e.stage ? ` [${e.stage}]` : ""}  ${detail}`));
  };

  // What to (re)load depends on what the job has produced so far: each part is fetched once it exists, and again
  // when the job moves on (training curves follow the metrics cursor).
  const refresh = async (force) => {
    job = await get(`/v1/jobs/${jobId}`);
    const key = (k) => `${k}:${job.state}`;
    const once = (k, fn) => { if (force || !loaded[k]) { loaded[k] = true; fn().catch((err) => { loaded[k] = false; if (err.name !== "AbortError") console.error(k, err); }); } };
    drawHeader(); drawTimeline();
    if (job.kind === "eval") { // an evaluation job: no triage, scores or training; its report compares models
      main.querySelectorAll(".realign-only").forEach((el) => { el.hidden = true; });
      document.getElementById("eval-title").textContent = "Evaluation: base (before) vs the evaluated model (after)";
      once(key("eval"), async () => { evalBox.replaceChildren(evalSection((job.metrics || {}).eval, "chart-eval")); });
      once(key("artifacts"), drawArtifacts);
      return;
    }
    drawCategories();
    const stageDone = (s) => (job.progress || []).some((p) => p.stage === s && p.completed_at);
    if (stageDone("triage") || job.state === "awaiting_review") once(key("triage"), drawTriage);
    once(key("scores"), drawScores);
    if (job.stage === "train" || stageDone("train")) loadMetrics().catch(() => {}); else drawCurves();
    once(key("artifacts"), drawArtifacts);
    once(key("eval"), async () => { evalBox.replaceChildren(evalSection((job.metrics || {}).eval, "chart-eval")); });
  };

  (async () => {
    await refresh();
    for (const e of (await get(`/v1/jobs/${jobId}/events?limit=200`)).data) addEvent(e);
    if (!TERMINAL.has(job.state)) {
      let pending = null;
      follow(jobId, (e) => { addEvent(e); if (!pending) pending = setTimeout(() => { pending = null; refresh().catch(() => {}); }, 400); });
      every(3000, () => { if (!TERMINAL.has(job.state)) refresh().catch(() => {}); });
    }
  })().catch((err) => { if (err.name !== "AbortError") main.append(h("p", { class: "error" }, err.status === 404 ? `no job ${jobId}` : err.message)); });
}

// ------------------------------------------------------------------ adapters

function renderAdapters(main) {
  const rows = h("tbody", { id: "adapters-rows" });
  main.append(h("h1", {}, "Adapters"), h("section", { class: "card" }, h("table", { id: "adapters" },
    h("thead", {}, h("tr", {}, ["Name", "Base model", "LoRA", "Job", "Created"].map((c) => h("th", {}, c)))), rows)));
  get("/v1/adapters?limit=100").then((page) => {
    if (!page.data.length) rows.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "no adapters yet: a succeeded job registers one")));
    for (const a of page.data) {
      rows.append(h("tr", { "data-adapter": a.id }, h("td", {}, h("a", { href: `#/adapters/${a.id}` }, a.name)),
        h("td", {}, a.base_model.name_or_path || "–"), h("td", { class: "small" }, a.lora ? `r=${a.lora.r} α=${a.lora.alpha}` : "–"),
        h("td", {}, a.job_id ? h("a", { href: `#/jobs/${a.job_id}` }, a.job_id) : "–"), h("td", { class: "small" }, when(a.created_at))));
    }
  }).catch(failed);
}

function renderAdapter(main, adapterId) {
  main.append(h("p", {}, h("a", { href: "#/adapters" }, "← adapters")));
  (async () => {
    const a = await get(`/v1/adapters/${adapterId}`);
    const models = (await get("/v1/models").catch(() => ({ data: [] }))).data.map((m) => m.id);
    const base = models.includes(a.base_model.name_or_path) ? a.base_model.name_or_path : (models.find((m) => m !== a.name && m !== a.id) || a.base_model.name_or_path);
    const prompt = h("textarea", { id: "playground-prompt", rows: 3 });
    prompt.value = "Quick question. Can you explain inflation rates? We cover it in my personal finance class.";
    const maxTokens = h("input", { type: "text", id: "playground-max-tokens", value: "48", size: 4 });
    const answers = { base: h("pre", { class: "answer", id: "answer-base" }), adapter: h("pre", { class: "answer", id: "answer-adapter" }) };
    const meta = { base: h("div", { class: "small muted" }), adapter: h("div", { class: "small muted" }) };
    const ask = async (side, model) => {
      answers[side].textContent = "…"; const t0 = performance.now();
      try {
        const out = await call("POST", "/v1/chat/completions", { model, messages: [{ role: "user", content: prompt.value }],
                                                                  max_tokens: Number(maxTokens.value) || 48, temperature: 0 });
        answers[side].textContent = out.choices[0].message.content;
        meta[side].textContent = `${model} · ${((performance.now() - t0) / 1000).toFixed(1)} s · ${(out.usage || {}).completion_tokens ?? "?"} tokens`;
      } catch (err) { answers[side].textContent = ""; meta[side].textContent = `error: ${err.detail || err.message}`; meta[side].className = "small error"; }
    };
    const run = h("button", { type: "button", id: "run-playground", onclick: async () => {
      run.disabled = true;
      try { await Promise.all([ask("base", base), ask("adapter", a.name)]); } finally { run.disabled = false; }
    } }, "Run both");
    const provenance = a.provenance || {};
    main.append(
      h("h1", {}, `Adapter ${a.name}`),
      h("section", { class: "card" }, h("h2", {}, "Provenance"),
        h("dl", { class: "kv", id: "adapter-provenance" },
          [["id", a.id], ["job", a.job_id || "–"], ["base model", `${a.base_model.name_or_path || "–"}${a.base_model.revision ? ` @ ${a.base_model.revision}` : ""}`],
           ["LoRA", a.lora ? `r=${a.lora.r}, alpha=${a.lora.alpha}, targets=${[].concat(a.lora.target_modules || []).join(", ")}` : "–"],
           ["weights sha256", a.sha256], ["size", `${(a.size_bytes / 1024).toFixed(1)} KiB`], ["created", when(a.created_at)],
           ...Object.entries(provenance).filter(([, v]) => typeof v !== "object").map(([k, v]) => [k, String(v)])]
            .flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
        h("details", {}, h("summary", {}, "full provenance"), h("pre", {}, JSON.stringify(provenance, null, 2))),
        h("div", { class: "toolbar" },
          h("button", { type: "button", id: "download-adapter", onclick: () => download(`/v1/adapters/${a.id}/download`, `${a.name}.tar.gz`) }, "Download (tar.gz)"),
          h("button", { type: "button", class: "secondary", onclick: () => download(`/v1/adapters/${a.id}/download?format=safetensors`, `${a.name}.safetensors`) }, "weights only (.safetensors)"))),
      h("section", { class: "card" }, h("h2", {}, "Evaluation report"), evalSection(a.eval_report, "chart-adapter-eval")),
      h("section", { class: "card", id: "playground" }, h("h2", {}, "Playground: base vs adapter"),
        h("p", { class: "small muted" }, "One prompt, both models, through the gateway's /v1/chat/completions (temperature 0)."),
        prompt, h("div", { class: "toolbar" }, h("label", {}, "max tokens ", maxTokens), run),
        h("div", { class: "grid2" }, h("div", {}, h("h2", {}, `base: ${base}`), answers.base, meta.base),
          h("div", {}, h("h2", {}, `adapter: ${a.name}`), answers.adapter, meta.adapter))));
  })().catch((err) => { if (err.name !== "AbortError") main.append(h("p", { class: "error" }, err.status === 404 ? `no adapter ${adapterId}` : err.message)); });
}

// ------------------------------------------------------------------ router

function route() {
  if (view) { view.abort.abort(); view.timers.forEach(clearInterval); }
  view = { abort: new AbortController(), timers: [] };
  const main = document.getElementById("main");
  main.replaceChildren();
  const hash = location.hash.replace(/^#/, "") || "/jobs";
  document.getElementById("nav").hidden = !apiKey();
  if (!apiKey() || hash === "/login") { renderLogin(main); return; }
  const parts = hash.split("/").filter(Boolean);
  if (parts[0] === "jobs" && parts[1]) renderJob(main, decodeURIComponent(parts[1]));
  else if (parts[0] === "adapters" && parts[1]) renderAdapter(main, decodeURIComponent(parts[1]));
  else if (parts[0] === "adapters") renderAdapters(main);
  else renderJobs(main);
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  document.getElementById("logout").addEventListener("click", () => logout());
  route();
});
