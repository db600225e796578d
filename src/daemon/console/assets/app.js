// The clipfilterd console: one page over the daemon's APIs, live through /api/live (SSE).
// No build step; uPlot draws the charts. Text from the daemon is always set as text, never HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
const COLOURS = ["#58a6ff", "#3fb950", "#f0883e", "#d2a8ff", "#ff7b72", "#79c0ff", "#e3b341", "#56d4dd"];
const WINDOW_S = 300; // seconds of score timeline shown
const THUMBNAIL_MS = 5000; // a pipeline's latest thumbnail is asked at most this often

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function api(path, options) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  const type = r.headers.get("content-type") || "";
  const body = type.includes("json") ? await r.json() : await r.text();
  if (!r.ok) {
    const message = body && body.error ? body.error : (typeof body === "string" ? body : r.statusText);
    const e = new Error(message);
    e.status = r.status;
    e.body = body;
    throw e;
  }
  return body;
}

const fmtTime = (ms) => (ms === null || ms === undefined) ? "" : new Date(ms).toLocaleString();
const fmtNum = (x, d) => (x === null || x === undefined) ? "" : Number(x).toFixed(d === undefined ? 3 : d);
const fmtRate = (x) => (x === null || x === undefined || !isFinite(x)) ? "–" : x.toFixed(1);

// ---------------------------------------------------------------- navigation

const PAGES = ["pipelines", "events", "search", "labels"];
function show() {
  const page = PAGES.includes(location.hash.slice(1)) ? location.hash.slice(1) : "pipelines";
  for (const p of PAGES) {
    $("#" + p).classList.toggle("active", p === page);
    $("#nav-" + p).classList.toggle("active", p === page);
  }
  if (page === "events") loadEvents();
  if (page === "labels") loadLabels();
  // Charts drawn while hidden have no width.
  for (const t of Object.values(timelines)) resizeChart(t);
}
window.addEventListener("hashchange", show);

// ---------------------------------------------------------------- pipelines

let status = null;      // the latest /status document
let previous = null;    // the one before, with its time, for rates
const timelines = {};   // pipeline -> { labels, points, chart, card }
let pipelineNames = [];

function rate(now, before, dt, f) {
  if (!before || dt <= 0) return null;
  return (f(now) - f(before)) / dt;
}

function pipelineCard(name) {
  let t = timelines[name];
  if (t && t.card) return t;
  t = t || { labels: [], points: [], chart: null };
  timelines[name] = t;
  const card = el("article", { class: "pipeline", id: "pipeline-" + name, "data-pipeline": name },
    el("div", {},
      el("h2", {}, name, " ", el("span", { class: "badge state" }, "")),
      el("img", { class: "latest", alt: "latest inferred frame" }),
      el("dl", { class: "stats" })),
    el("div", { class: "chart" }),
    el("div", { class: "error", hidden: "" }));
  t.card = card;
  $("#pipeline-list").append(card);
  return t;
}

function renderStatus(s, dt) {
  $("#model").textContent = `${s.model.name} · ${s.model.image_provider} · v${s.version}`;
  const names = s.pipelines.map((p) => p.name);
  if (names.join("\n") !== pipelineNames.join("\n")) {
    pipelineNames = names;
    for (const sel of ["#event-pipeline", "#search-pipeline"]) {
      const keep = $(sel).value;
      $(sel).replaceChildren(el("option", { value: "" }, "all"), ...names.map((n) => el("option", { value: n }, n)));
      $(sel).value = keep;
    }
    for (const [name, t] of Object.entries(timelines)) {
      if (!names.includes(name) && t.card) { t.card.remove(); delete timelines[name]; }
    }
  }
  const before = previous ? Object.fromEntries(previous.pipelines.map((p) => [p.name, p])) : {};
  for (const p of s.pipelines) {
    const t = pipelineCard(p.name);
    const card = t.card;
    const badge = card.querySelector(".state");
    badge.textContent = p.state.replace("_", " ") + (p.finished ? " (finished)" : "");
    badge.className = "badge state state-" + p.state;
    const b = before[p.name];
    const rows = [
      ["frames/s", fmtRate(rate(p, b, dt, (x) => x.frames.seen))],
      ["samples/s", fmtRate(rate(p, b, dt, (x) => x.frames.sampled))],
      ["inferences/s", fmtRate(rate(p, b, dt, (x) => x.frames.inferred))],
      ["dropped", p.frames.dropped],
      ["skipped", p.frames.skipped],
      ["events", p.events],
      ["restarts", p.restarts],
      ["provider", s.model.image_provider],
    ];
    card.querySelector(".stats").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-stat": k }, v)]));
    const err = card.querySelector(".error");
    if (p.last_error && p.state !== "running") {
      err.hidden = false;
      err.textContent = `last error (${p.last_error.time}): ${p.last_error.message}`;
    } else {
      err.hidden = true;
    }
    // A new thumbnail when the pipeline inferred again (at most every THUMBNAIL_MS), or when
    // the last one did not load.
    const img = card.querySelector("img.latest");
    const failed = !img.getAttribute("src") || (img.complete && img.naturalWidth === 0);
    const due = Date.now() - (t.thumbAt || 0) >= THUMBNAIL_MS && p.frames.inferred !== t.thumbInferred;
    if (failed || due) {
      t.thumbAt = Date.now();
      t.thumbInferred = p.frames.inferred;
      img.src = `/api/pipelines/${encodeURIComponent(p.name)}/thumbnail?n=${p.frames.inferred}&t=${t.thumbAt}`;
    }
  }
}

function onStatus(s) {
  const now = performance.now() / 1000;
  const dt = previous ? now - previous.at : 0;
  renderStatus(s, dt);
  previous = { at: now, pipelines: s.pipelines };
  status = s;
}

// A timeline: x = seconds, then per label its value, its threshold; matched stretches shaded.
function buildChart(t) {
  const host = t.card.querySelector(".chart");
  host.replaceChildren();
  const series = [{}];
  t.labels.forEach((label, i) => {
    const colour = COLOURS[i % COLOURS.length];
    series.push({ label, stroke: colour, width: 1.5, points: { show: false } });
  });
  t.labels.forEach((label, i) => {
    const colour = COLOURS[i % COLOURS.length];
    series.push({ label: label + " threshold", stroke: colour, width: 1, dash: [6, 4], points: { show: false } });
  });
  const shade = (u) => {
    const ctx = u.ctx;
    const xs = u.data[0];
    t.labels.forEach((label, i) => {
      ctx.fillStyle = COLOURS[i % COLOURS.length] + "33";
      let from = null;
      for (let k = 0; k <= t.points.length; k++) {
        const on = k < t.points.length && t.points[k].matched[i];
        if (on && from === null) from = k;
        if (!on && from !== null) {
          const x0 = u.valToPos(xs[from], "x", true);
          const x1 = u.valToPos(xs[Math.min(k, xs.length - 1)], "x", true);
          ctx.fillRect(x0, u.bbox.top, Math.max(x1 - x0, 2), u.bbox.height);
          from = null;
        }
      }
    });
  };
  const width = Math.max(host.clientWidth || t.card.clientWidth - 220, 300);
  t.chart = new uPlot({
    width, height: 200,
    scales: { x: { time: true }, y: { range: [0, 1] } },
    axes: [{ stroke: "#8b949e" }, { stroke: "#8b949e" }],
    series,
    hooks: { drawClear: [shade] },
  }, chartData(t), host);
  host.dataset.points = String(t.points.length);
}

function resizeChart(t) {
  if (!t.chart || !t.card) return;
  const w = t.card.querySelector(".chart").clientWidth;
  if (w > 0 && Math.abs(w - t.chart.width) > 4) t.chart.setSize({ width: w, height: 200 });
}

function chartData(t) {
  const xs = t.points.map((p) => p.t / 1000);
  const data = [xs];
  t.labels.forEach((_, i) => data.push(t.points.map((p) => p.values[i])));
  t.labels.forEach((_, i) => data.push(t.points.map((p) => p.thresholds[i])));
  return data;
}

let redraw = new Set();
function onScores(point) {
  const t = timelines[point.pipeline] || pipelineCard(point.pipeline);
  if (!t.card) pipelineCard(point.pipeline);
  if (t.labels.join("\n") !== point.labels.join("\n")) {
    t.labels = point.labels;
    t.points = [];
    t.chart = null;
  }
  t.points.push(point);
  const oldest = point.t - WINDOW_S * 1000;
  while (t.points.length && t.points[0].t < oldest) t.points.shift();
  redraw.add(point.pipeline);
}

// Charts are redrawn at most every 500 ms, whatever the sample rate.
setInterval(() => {
  for (const name of redraw) {
    const t = timelines[name];
    if (!t || !t.card) continue;
    if (!t.chart) buildChart(t);
    else t.chart.setData(chartData(t));
    t.card.querySelector(".chart").dataset.points = String(t.points.length);
  }
  redraw = new Set();
}, 500);

// ---------------------------------------------------------------- events

let events = [];                 // from /api/events
const liveStarts = new Map();    // id -> start event seen live, until the history lists it
let openEvent = null;
let eventsNote = "";

function eventFilter() {
  const q = new URLSearchParams();
  for (const [k, sel] of [["pipeline", "#event-pipeline"], ["label", "#event-label"], ["since", "#event-since"], ["until", "#event-until"]]) {
    const v = $(sel).value.trim();
    if (v) q.set(k, v);
  }
  return q;
}

let loading = null;
async function loadEvents() {
  if (loading) return loading;
  loading = (async () => {
    try {
      const r = await api("/api/events?" + eventFilter().toString());
      events = r.events;
      for (const e of events) liveStarts.delete(e.id);
      eventsNote = "";
    } catch (e) {
      eventsNote = e.message;
    } finally {
      loading = null;
    }
    renderEvents();
  })();
  return loading;
}

function matchesFilter(e) {
  const f = eventFilter();
  return (!f.get("pipeline") || f.get("pipeline") === e.pipeline) && (!f.get("label") || f.get("label") === e.label);
}

function renderEvents() {
  $("#events-note").textContent = eventsNote;
  const rows = [...liveStarts.values()].filter(matchesFilter).concat(events)
    .sort((a, b) => b.start_ms - a.start_ms);
  $("#event-table tbody").replaceChildren(...rows.map((e) => {
    const duration = e.end_ms ? ((e.end_ms - e.start_ms) / 1000).toFixed(1) + " s" : "ongoing";
    const tr = el("tr", { "data-event": e.id, class: openEvent && openEvent.id === e.id ? "open" : null, onclick: () => openDetail(e) },
      el("td", {}, e.has_snapshot ? el("img", { src: `/api/events/${e.id}/snapshot`, alt: "snapshot", loading: "lazy" }) : "–"),
      el("td", {}, e.pipeline),
      el("td", {}, e.label),
      el("td", {}, fmtNum(e.score)),
      el("td", {}, fmtNum(e.probability)),
      el("td", {}, fmtTime(e.start_ms)),
      el("td", {}, e.end_ms ? fmtTime(e.end_ms) : ""),
      el("td", {}, duration),
      el("td", { class: "mark mark-" + (e.review || "") }, e.review ? e.review.replace("_", " ") : ""));
    return tr;
  }));
}

function onEvent(ev) {
  if (ev.state === "start") {
    liveStarts.set(ev.id, {
      id: ev.id, pipeline: ev.pipeline, label: ev.label, start_ms: ev.time_ms, end_ms: null,
      score: ev.score, probability: ev.probability, has_snapshot: ev.has_snapshot, review: null,
    });
    renderEvents();
  }
  // The history has it a moment later (its writer batches every 250 ms).
  setTimeout(loadEvents, 700);
}

async function openDetail(e) {
  openEvent = e;
  renderEvents();
  const aside = $("#event-detail");
  aside.hidden = false;
  $("#detail-title").textContent = `${e.label} on ${e.pipeline} · ${fmtTime(e.start_ms)}`;
  const snap = $("#detail-snapshot");
  snap.hidden = !e.has_snapshot;
  if (e.has_snapshot) snap.src = `/api/events/${e.id}/snapshot`;
  $("#detail-review").textContent = e.review ? "marked " + e.review.replace("_", " ") : "";
  $("#detail-review").className = "mark-" + (e.review || "");
  $("#detail-thumbs").replaceChildren();
  $("#detail-chart").replaceChildren();
  let ctx;
  try {
    ctx = await api(`/api/events/${e.id}/context`);
  } catch (err) {
    $("#detail-thumbs").textContent = err.message;
    return;
  }
  if (openEvent !== e) return;
  const samples = ctx.samples;
  const i = samples.length ? samples[0].labels.indexOf(e.label) : -1;
  const xs = samples.map((s) => s.time_ms / 1000);
  const ys = samples.map((s) => (s.labels.indexOf(e.label) >= 0 ? s.scores[s.labels.indexOf(e.label)] : null));
  if (i >= 0 || ys.some((y) => y !== null)) {
    new uPlot({
      width: Math.max($("#detail-chart").clientWidth, 300), height: 160,
      scales: { x: { time: true } },
      axes: [{ stroke: "#8b949e" }, { stroke: "#8b949e" }],
      series: [{}, { label: e.label + " (cosine)", stroke: COLOURS[0], width: 1.5 }],
      hooks: {
        draw: [(u) => {
          const x = u.valToPos(e.start_ms / 1000, "x", true);
          u.ctx.strokeStyle = "#f85149";
          u.ctx.beginPath(); u.ctx.moveTo(x, u.bbox.top); u.ctx.lineTo(x, u.bbox.top + u.bbox.height); u.ctx.stroke();
        }],
      },
    }, [xs, ys], $("#detail-chart"));
  }
  // About a dozen thumbnails around the start.
  const withThumb = samples.filter((s) => s.has_thumbnail);
  let at = withThumb.findIndex((s) => s.time_ms >= e.start_ms);
  if (at < 0) at = withThumb.length - 1;
  const around = withThumb.slice(Math.max(0, at - 6), at + 6);
  $("#detail-thumbs").replaceChildren(...around.map((s) =>
    el("figure", { class: s === withThumb[at] ? "at" : null, "data-sample": s.id },
      el("img", { src: `/api/thumbnail/${s.id}`, alt: "sample " + s.id, loading: "lazy" }),
      el("figcaption", {}, ((s.time_ms - e.start_ms) / 1000).toFixed(1) + " s"))));
}

async function review(verdict) {
  const e = openEvent;
  if (!e) return;
  try {
    await api("/api/review", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ event: e.id, label: e.label, verdict }),
    });
    e.review = verdict;
    $("#detail-review").textContent = "marked " + verdict.replace("_", " ");
    $("#detail-review").className = "mark-" + verdict;
    await loadEvents();
  } catch (err) {
    $("#detail-review").textContent = err.message;
    $("#detail-review").className = "problems";
  }
}

$("#mark-tp").addEventListener("click", () => review("true_positive"));
$("#mark-fp").addEventListener("click", () => review("false_positive"));
$("#event-filter").addEventListener("submit", (ev) => { ev.preventDefault(); loadEvents(); });

// ---------------------------------------------------------------- search

$("#search-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const q = new URLSearchParams();
  const text = $("#search-text").value.trim();
  const file = $("#search-image").files[0];
  if (text) q.set("q", text);
  if ($("#search-pipeline").value) q.set("pipeline", $("#search-pipeline").value);
  if ($("#search-since").value.trim()) q.set("since", $("#search-since").value.trim());
  $("#search-note").textContent = "searching…";
  $("#search-results").replaceChildren();
  try {
    const found = file
      ? await api("/api/search?" + q.toString(), { method: "POST", body: file })
      : await api("/api/search?" + q.toString());
    $("#search-note").textContent = `${found.ranges.length} ranges · ${found.scanned} samples scanned in ${found.took_ms.toFixed(0)} ms`;
    $("#search-results").replaceChildren(...found.ranges.map((r) => {
      const st = (x) => (x === null || x === undefined ? "" : x.toFixed(1) + " s");
      // Opens the events of that stretch (a few seconds either side).
      const open = () => {
        $("#event-pipeline").value = r.pipeline;
        $("#event-label").value = "";
        $("#event-since").value = new Date(r.start_ms - 5000).toISOString();
        $("#event-until").value = new Date(r.end_ms + 5000).toISOString();
        location.hash = "#events";
        loadEvents();
      };
      return el("div", { class: "result", title: "the events of this stretch", onclick: open, "data-pipeline": r.pipeline, "data-start": r.start_stream_time, "data-end": r.end_stream_time },
        r.thumbnail ? el("img", { src: r.thumbnail, alt: "best sample" }) : null,
        el("div", {}, el("b", {}, r.pipeline), " · score ", fmtNum(r.best_score)),
        el("div", { class: "range" }, fmtTime(r.start_ms), " → ", fmtTime(r.end_ms)),
        el("div", { class: "stream-range" }, "stream ", st(r.start_stream_time), " – ", st(r.end_stream_time)));
    }));
  } catch (err) {
    $("#search-note").textContent = err.message;
  }
});

// ---------------------------------------------------------------- labels

let labelSets = [];
async function loadLabels() {
  try {
    labelSets = (await api("/api/labels")).pipelines;
  } catch (err) {
    $("#labels-result").textContent = err.message;
    return;
  }
  const sel = $("#labels-pipeline");
  const keep = sel.value;
  sel.replaceChildren(...labelSets.map((p) => el("option", { value: p.pipeline }, p.pipeline)));
  if (keep && labelSets.some((p) => p.pipeline === keep)) sel.value = keep;
  showLabels();
}

function showLabels() {
  const p = labelSets.find((x) => x.pipeline === $("#labels-pipeline").value);
  if (!p) return;
  const editable = !!p.file;
  $("#labels-file").textContent = editable ? p.file : "inline prompts in the configuration (not editable here): " + p.prompts.join(", ");
  $("#labels-text").value = editable ? (p.text || "") : "";
  $("#labels-text").disabled = !editable;
  for (const b of ["#labels-check", "#labels-backtest", "#labels-save"]) $(b).disabled = !editable;
  $("#labels-result").replaceChildren();
  $("#labels-backtest-result").replaceChildren();
}
$("#labels-pipeline").addEventListener("change", showLabels);

function showProblems(errors) {
  $("#labels-result").replaceChildren(el("ul", { class: "problems" }, errors.map((e) =>
    el("li", { "data-line": e.line }, [
      e.line ? `line ${e.line}` : null,
      e.column ? `, column ${e.column}` : null,
      e.field ? ` (${e.field})` : null,
      e.line || e.field ? ": " : null,
      e.message,
    ].filter(Boolean).join("")))));
}

async function checkLabels() {
  const name = $("#labels-pipeline").value;
  const r = await api(`/api/labels/${encodeURIComponent(name)}/check`, { method: "POST", body: $("#labels-text").value });
  if (r.ok) $("#labels-result").replaceChildren(el("p", { class: "ok" }, "valid: " + r.summary));
  else showProblems(r.errors);
  return r.ok;
}

$("#labels-check").addEventListener("click", () => checkLabels().catch((e) => { $("#labels-result").textContent = e.message; }));

$("#labels-backtest").addEventListener("click", async () => {
  const name = $("#labels-pipeline").value;
  const out = $("#labels-backtest-result");
  out.replaceChildren(el("p", { class: "note" }, "replaying the history…"));
  try {
    if (!(await checkLabels())) { out.replaceChildren(); return; }
    const hours = Number($("#labels-hours").value) || 2;
    const r = await api(`/api/backtest?pipeline=${encodeURIComponent(name)}&since=${hours}h`, { method: "POST", body: $("#labels-text").value });
    const s = r.summary;
    out.replaceChildren(
      el("h3", {}, "Backtest"),
      el("p", { id: "backtest-summary" }, `${r.episodes.length} episodes with this set, ${r.live.length} live; same ${s.same}, changed ${s.changed}, added ${s.added}, removed ${s.removed} (${r.samples} samples)`),
      el("ul", {}, r.differences.map((d) => {
        const e = d.new || d.live;
        return el("li", { class: "diff-" + d.difference },
          `${d.difference}: ${d.label} at ${e.start.time}` + (e.seconds !== null ? ` for ${e.seconds.toFixed(1)} s` : ""));
      })));
  } catch (err) {
    out.replaceChildren(el("p", { class: "problems" }, err.message));
  }
});

$("#labels-save").addEventListener("click", async () => {
  const name = $("#labels-pipeline").value;
  try {
    const r = await api(`/api/labels/${encodeURIComponent(name)}`, { method: "PUT", body: $("#labels-text").value });
    $("#labels-result").replaceChildren(el("p", { class: "ok", id: "labels-saved" }, `saved ${r.file}: the pipeline reloads it`));
  } catch (err) {
    if (err.body && err.body.errors) showProblems(err.body.errors);
    else $("#labels-result").textContent = err.message;
  }
});

// ---------------------------------------------------------------- live

async function loadTimeline() {
  try {
    const r = await api("/api/timeline");
    for (const p of r.points) onScores(p);
  } catch (err) { /* the stream fills them */ }
}

let source = null;
function connect() {
  if (source) source.close();
  source = new EventSource("/api/live");
  const state = $("#live-state");
  source.onopen = () => { state.textContent = "live"; state.className = "badge live-on"; };
  source.onerror = () => { state.textContent = "reconnecting"; state.className = "badge live-off"; };
  source.addEventListener("status", (m) => onStatus(JSON.parse(m.data)));
  source.addEventListener("scores", (m) => onScores(JSON.parse(m.data)));
  source.addEventListener("event", (m) => onEvent(JSON.parse(m.data)));
}

// A page left (or kept in the back/forward cache) must not hold its stream: browsers allow six
// connections per server, and a stream kept open takes one for good.
window.addEventListener("pagehide", () => { if (source) { source.close(); source = null; } });
window.addEventListener("pageshow", (e) => { if (e.persisted) connect(); });

show();
loadTimeline().then(connect);
loadEvents();
