// cbir web page: plain JS, no build step. Talks to the JSON API of the same server.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { health: null, followed: null, source: null, pollTimer: null };

// ---- helpers -------------------------------------------------------------------------
function token() { return sessionStorage.getItem("cbir-token") || ""; }
// a server bound to a non-loopback address wants the token for reads too (health says so)
function readAuth() { return !!(state.health && state.health.read_auth_required); }

async function api(method, url, body) {
  const opts = { method, headers: {} };
  if (token()) opts.headers["Authorization"] = "Bearer " + token();
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  let res;
  try { res = await fetch(url, opts); } catch (e) { throw new Error("cannot reach the server (" + e.message + ")"); }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!res.ok) {
    const detail = data && data.detail ? (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)) : text || res.statusText;
    const err = new Error(detail);
    err.status = res.status;
    throw err;
  }
  return data;
}

function showError(err) {
  let msg = err && err.message ? err.message : String(err);
  if (err && err.status === 401) msg += " — enter the API token at the top of the page.";
  $("#error-text").textContent = msg;
  $("#error").hidden = false;
}
function clearError() { $("#error").hidden = true; }

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function pct(x) { return (100 * x).toFixed(2) + " %"; }

// ---- images behind the token ----------------------------------------------------------------
// <img src> and links cannot send an Authorization header, and the server never takes the token
// from the URL (it would end up in logs and history): when reads need the token, images are
// fetched with the header and shown from blob: URLs.
const blobUrls = [];
function revokeBlobs() { while (blobUrls.length) URL.revokeObjectURL(blobUrls.pop()); }

async function blobUrl(url) {
  const res = await fetch(url, { headers: { Authorization: "Bearer " + token() } });
  if (!res.ok) { const err = new Error(`cannot load ${url} (HTTP ${res.status})`); err.status = res.status; throw err; }
  const u = URL.createObjectURL(await res.blob());
  blobUrls.push(u);
  return u;
}

function loadThumb(img) {
  blobUrl(img.dataset.src).then((u) => { img.src = u; }).catch(() => { img.alt += " (not loaded)"; });
}
const lazyThumbs = window.IntersectionObserver ? new IntersectionObserver((entries) => {
  for (const e of entries) if (e.isIntersecting) { lazyThumbs.unobserve(e.target); loadThumb(e.target); }
}, { rootMargin: "300px" }) : null;

function thumb(url, alt) {
  return readAuth() ? el("img", { "data-src": url, alt }) : el("img", { src: url, alt, loading: "lazy" });
}
function loadThumbs(box) {
  box.querySelectorAll("img[data-src]").forEach((img) => { if (lazyThumbs) lazyThumbs.observe(img); else loadThumb(img); });
}

function openImage(ev, url) {
  if (!readAuth()) return; // the link itself opens it
  ev.preventDefault();
  const w = window.open("", "_blank");
  if (!w) { showError(new Error("allow pop-ups for this page to open full-size images")); return; }
  blobUrl(url).then((u) => { w.location = u; }).catch((e) => { w.close(); showError(e); });
}

// ---- tabs ----------------------------------------------------------------------------
function showTab() {
  const name = (location.hash || "#search").slice(1);
  const known = ["search", "index", "maintenance"].includes(name) ? name : "search";
  document.querySelectorAll("[data-section]").forEach((s) => { s.hidden = s.dataset.section !== known; });
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.tab === known));
  if (known === "maintenance") { loadInfo(); loadModels(); }
  if (known === "index") loadJobs();
}

// ---- header: health and collection ---------------------------------------------------------
// false while the page waits for the token it needs for reads
async function loadHealth() {
  try {
    state.health = await api("GET", "/api/health");
    $("#token-form").hidden = !state.health.auth_required;
    $("#token").placeholder = readAuth() ? "needed to use this server" : "needed for changes";
    if (readAuth() && !token()) {
      $("#stats").textContent = "this server needs its API token: enter it at the top of the page";
      return false;
    }
    const c = await api("GET", "/api/collection");
    $("#stats").textContent = c.exists
      ? `${c.images.toLocaleString()} images · ${c.extractor} · index ${c.index_type || "not built yet"}`
      : "no collection yet: index a folder first";
  } catch (e) { showError(e); }
  return true;
}

// ---- search --------------------------------------------------------------------------
function setQueryFile(file) {
  const dt = new DataTransfer();
  dt.items.add(file);
  $("#file").files = dt.files;
  previewQuery();
}

function previewQuery() {
  const f = $("#file").files[0];
  const img = $("#query-preview");
  if (!f) { img.hidden = true; return; }
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(f);
  img.hidden = false;
  $("#drop-text").textContent = f.name + " — drop another image or click to change";
}

async function runSearch(byId) {
  clearError();
  const k = parseInt($("#k").value, 10);
  const minmatch = Math.min(100, Math.max(0, parseFloat($("#minsim").value) || 0));
  if (!(k >= 1 && k <= 1000)) { showError(new Error("K must be a whole number between 1 and 1000")); return; }
  let data;
  const btn = $("#search-btn");
  btn.disabled = true;
  $("#search-status").textContent = "searching…";
  try {
    if (byId) {
      data = await api("GET", `/api/search?id=${byId}&k=${k}&min_match=${minmatch}`);
    } else {
      const f = $("#file").files[0];
      if (!f) throw new Error("choose or drop a query image first");
      const fd = new FormData();
      fd.append("file", f);
      fd.append("k", String(k));
      fd.append("min_match", String(minmatch));
      data = await api("POST", "/api/search", fd);
    }
    renderHits(data);
  } catch (e) {
    $("#search-status").textContent = "";
    showError(e);
  } finally { btn.disabled = false; }
}

function renderHits(data) {
  const box = $("#results");
  box.replaceChildren();
  revokeBlobs();
  const q = data.query.type === "id" ? `images like ${data.query.name}` : data.query.name;
  $("#search-status").textContent = data.collection_images === 0
    ? "the collection is empty: index a folder first (Index tab)"
    : `${data.hits.length} result(s) for ${q} in ${Math.round(data.took_ms)} ms, from ${data.collection_images.toLocaleString()} images`;
  for (const h of data.hits) {
    const card = el("div", { class: "hit", "data-id": h.id },
      el("a", { class: "open", href: h.image_url, target: "_blank", rel: "noopener", title: h.path,
        onclick: (ev) => openImage(ev, h.image_url) },
        thumb(h.thumbnail_url, h.name)),
      el("div", { class: "meta" },
        el("span", { class: "sim", title: `match: 0 % = as alike as two random photos here, 100 % = the same image; `
          + `similarity 1/(1+d) ${pct(h.similarity)}, distance ${h.distance.toFixed(4)}` },
           h.match == null ? pct(h.similarity) : `${h.match.toFixed(0)} % match`),
        el("button", { type: "button", class: "like", title: "find images like this one",
          onclick: () => runSearch(h.id) }, "similar")),
      el("div", { class: "name", title: h.path }, `#${h.rank} ${h.name}`));
    box.append(card);
  }
  loadThumbs(box);
}

async function runScene(ev) {
  if (ev) ev.preventDefault();
  clearError();
  const q = $("#scene-q").value.trim();
  const k = parseInt($("#k").value, 10);
  if (!q) { showError(new Error("type one or more concepts, e.g. sky water")); return; }
  if (!(k >= 1 && k <= 1000)) { showError(new Error("K must be a whole number between 1 and 1000")); return; }
  const btn = $("#scene-btn");
  btn.disabled = true;
  $("#search-status").textContent = "searching…";
  try {
    const data = await api("GET", `/api/scenes?q=${encodeURIComponent(q)}&k=${k}`);
    renderScene(data);
  } catch (e) {
    $("#search-status").textContent = "";
    showError(/no concept model/.test(e.message)
      ? new Error(e.message + " (on the server: cbir concepts train)") : e);
  } finally { btn.disabled = false; }
}

function renderScene(data) {
  const box = $("#results");
  box.replaceChildren();
  revokeBlobs();
  const notes = data.notes.length ? ` (${data.notes.join("; ")})` : "";
  $("#search-status").textContent =
    `${data.hits.length} scene(s) showing ${data.query.join(" + ")} in ${Math.round(data.took_ms)} ms${notes}`;
  for (const h of data.hits) {
    const ev = Object.entries(h.evidence).map(([c, e]) =>
      `${c} ${Math.round(100 * e.visual)}%` + (e.text === null ? "" : ` / tags ${Math.round(100 * e.text)}%`));
    const card = el("div", { class: "hit", "data-id": h.id },
      el("a", { class: "open", href: h.image_url, target: "_blank", rel: "noopener", title: h.path,
        onclick: (ev) => openImage(ev, h.image_url) },
        thumb(h.thumbnail_url, h.name)),
      el("div", { class: "meta" },
        el("span", { class: "sim", title: "fused relevance r(Q, image)" }, h.score.toFixed(3)),
        el("button", { type: "button", class: "like", title: "find images like this one",
          onclick: () => runSearch(h.id) }, "similar")),
      el("div", { class: "name", title: ev.join(", ") }, `#${h.rank} ${h.name}`),
      el("div", { class: "evidence muted" }, ev.join(" · ")));
    box.append(card);
  }
  loadThumbs(box);
}

// ---- indexing jobs ----------------------------------------------------------------------
async function loadRoots() {
  try {
    const r = await api("GET", "/api/roots");
    $("#roots").textContent = r.roots.length ? r.roots.join(", ") : "none — start the server with --allow-root DIR";
    const dl = $("#roots-list");
    dl.replaceChildren(...r.roots.map((x) => el("option", { value: x })));
    if (r.roots.length && !$("#folder").value) $("#folder").value = r.roots[0];
    $("#index-btn").disabled = r.roots.length === 0;
  } catch (e) { showError(e); }
}

function renderJob(job) {
  $("#job-panel").hidden = false;
  const what = job.kind === "train" ? ` ${job.params.name}` : job.params.path ? " " + job.params.path : "";
  $("#job-title").textContent = job.kind + what;
  const st = $("#job-status");
  st.textContent = job.status;
  st.className = "badge " + job.status;
  $("#job-cancel").hidden = !["queued", "running"].includes(job.status);
  $("#progress").value = job.percent;
  const count = job.total ? ` (${job.done} of ${job.total})` : "";
  $("#progress-text").textContent = `${job.percent.toFixed(0)} %${count} — ${job.message}`;
  const details = $("#job-errors");
  details.hidden = job.error_count === 0;
  if (job.error_count) {
    details.querySelector("summary").textContent = `${job.error_count} file(s) could not be indexed`;
    details.querySelector("ul").replaceChildren(...job.errors.map((e) => el("li", {}, `${e.path}: ${e.reason}`)));
  }
}

function stopFollowing() {
  if (state.source) { state.source.close(); state.source = null; }
  if (state.pollTimer) { clearTimeout(state.pollTimer); state.pollTimer = null; }
}

function followJob(id) {
  stopFollowing();
  state.followed = id;
  const done = (job) => {
    renderJob(job);
    if (!["queued", "running"].includes(job.status)) {
      stopFollowing();
      loadJobs(); loadHealth();
      if (job.kind === "train") loadModels();
      if (job.status === "failed") showError(new Error(`job ${job.kind} failed: ${job.message}`));
      return true;
    }
    return false;
  };
  const poll = async () => {
    try { if (done(await api("GET", `/api/jobs/${id}`))) return; } catch (e) { showError(e); }
    state.pollTimer = setTimeout(poll, 1000);
  };
  // EventSource cannot send the Authorization header: poll when reads need the token
  if (window.EventSource && !readAuth()) {
    const src = new EventSource(`/api/jobs/${id}/events`);
    state.source = src;
    src.addEventListener("job", (ev) => done(JSON.parse(ev.data)));
    src.onerror = () => { if (state.source === src) { src.close(); state.source = null; poll(); } };
  } else poll();
}

async function startIndex(ev) {
  ev.preventDefault();
  clearError();
  try {
    const job = await api("POST", "/api/index-jobs", { path: $("#folder").value.trim() });
    renderJob(job);
    followJob(job.id);
    loadJobs();
  } catch (e) { showError(e); }
}

async function loadJobs() {
  try {
    const { jobs } = await api("GET", "/api/jobs?limit=15");
    const body = $("#jobs tbody");
    body.replaceChildren(...jobs.map((j) => el("tr", {},
      el("td", {}, j.kind),
      el("td", { class: "path" }, j.params.path || ""),
      el("td", {}, el("span", { class: "badge " + j.status }, j.status)),
      el("td", {}, j.total ? `${j.percent.toFixed(0)} % (${j.done}/${j.total})` : `${j.percent.toFixed(0)} %`),
      el("td", {}, j.message),
      el("td", {}, ["failed", "cancelled", "interrupted"].includes(j.status) && !j.params.uploaded
        ? el("button", { type: "button", class: "secondary", onclick: () => retryJob(j.id) }, "Run again") : null))));
    // a job that is still active when the page (re)loads is followed again
    const active = jobs.find((j) => ["running", "queued"].includes(j.status));
    if (active && state.followed !== active.id) { renderJob(active); followJob(active.id); }
  } catch (e) { showError(e); }
}

async function retryJob(id) {
  clearError();
  try { const job = await api("POST", `/api/jobs/${id}/retry`); renderJob(job); followJob(job.id); loadJobs(); }
  catch (e) { showError(e); }
}

async function cancelJob() {
  if (!state.followed) return;
  try { renderJob(await api("POST", `/api/jobs/${state.followed}/cancel`)); } catch (e) { showError(e); }
}

// ---- maintenance ------------------------------------------------------------------------
async function loadInfo() {
  try {
    const c = await api("GET", "/api/collection");
    const rows = c.exists
      ? [["collection", c.collection], ["images", c.images], ["failed files", c.errors], ["extractor", c.extractor],
         ["index", `${c.index_type || "not built"} (${c.index_up_to_date ? "up to date" : "will sync on next search"})`],
         ["disk", `${((c.catalog_bytes + c.index_bytes) / 1048576).toFixed(1)} MB`]]
      : [["collection", `${c.collection} (not created yet)`]];
    $("#info").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  } catch (e) { showError(e); }
}

async function maintenance(kind) {
  clearError();
  if (kind === "clear" && !confirm("Remove every image from the collection? Files on disk are not touched.")) return;
  try {
    const body = kind === "clear" ? { confirm: true }
      : { index_type: $("#rebuild-type").value || null, rescan: $("#rebuild-rescan").checked };
    const job = await api("POST", `/api/index/${kind}`, body);
    $("#maint-status").textContent = `${kind} started…`;
    const wait = async () => {
      const j = await api("GET", `/api/jobs/${job.id}`);
      if (["queued", "running"].includes(j.status)) { setTimeout(wait, 500); return; }
      $("#maint-status").textContent = `${kind}: ${j.status} — ${j.message}`;
      if (j.status === "failed") showError(new Error(j.message));
      loadInfo(); loadHealth();
    };
    wait();
  } catch (e) { showError(e); }
}

async function loadModels() {
  const box = $("#models");
  const can = state.health && state.health.training_available;
  $("#train-form").hidden = !can;
  if (!can) {
    box.replaceChildren(el("p", { class: "muted" }, "Model training is not available in this build."));
    return;
  }
  try {
    const { models } = await api("GET", "/api/models");
    if (!models.length) { box.replaceChildren(el("p", { class: "muted" }, "No trained models yet.")); return; }
    const cols = ["name", "classes", "epochs", "val_accuracy", "trained_by", "trained_at"];
    box.replaceChildren(el("div", { class: "table-wrap" }, el("table", {},
      el("thead", {}, el("tr", {}, ...cols.map((c) => el("th", {}, c)), el("th", {}, ""))),
      el("tbody", {}, ...models.map((m) => el("tr", {}, ...cols.map((c) => el("td", {}, m[c] ?? "")),
        el("td", {}, el("button", { type: "button", class: "secondary", onclick: () => showCurves(m.name) }, "curves"),
          " ", el("button", { type: "button", class: "danger", onclick: () => deleteModel(m.name) }, "delete"))))))));
  } catch (e) { box.replaceChildren(el("p", { class: "muted" }, e.message)); }
}

async function deleteModel(name) {
  if (!confirm(`Delete model ${name}?`)) return;
  try { await api("DELETE", `/api/models/${encodeURIComponent(name)}`); loadModels(); } catch (e) { showError(e); }
}

async function showCurves(name) {
  try {
    const m = await api("GET", `/api/models/${encodeURIComponent(name)}`);
    const series = Object.entries(m.curves || {})
      .filter(([k, v]) => k !== "epoch" && Array.isArray(v) && v.filter((x) => typeof x === "number").length > 1)
      .map(([k, v]) => [k === "seconds" ? "elapsed training time (s)" : k, v.filter((x) => typeof x === "number")]);
    const box = $("#curves");
    box.replaceChildren(el("h3", {}, `Training curves of ${name}`));
    for (const [label, values] of series) box.append(el("p", {}, `${label} by epoch`), plot(values));
    if (!series.length) box.append(el("p", { class: "muted" }, "this model has no curves"));
  } catch (e) { showError(e); }
}

function plot(values) {
  const W = 560, H = 180, P = 28;
  const lo = Math.min(...values), hi = Math.max(...values), span = hi - lo || 1;
  const pts = values.map((v, i) => `${P + (i * (W - 2 * P)) / (values.length - 1)},${H - P - ((v - lo) * (H - 2 * P)) / span}`);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "curve");
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", pts.join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#2f5fd0");
  line.setAttribute("stroke-width", "2");
  svg.append(line);
  for (const [y, v] of [[P - 8, hi], [H - P + 16, lo]]) {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", "2"); t.setAttribute("y", String(y)); t.setAttribute("font-size", "11");
    t.textContent = v.toPrecision(3);
    svg.append(t);
  }
  return svg;
}

async function startTraining(ev) {
  ev.preventDefault();
  clearError();
  const body = { path: $("#train-folder").value.trim(), options: { epochs: parseInt($("#train-epochs").value, 10) || 30 } };
  if ($("#train-name").value.trim()) body.name = $("#train-name").value.trim();
  try {
    const job = await api("POST", "/api/train-jobs", body);
    renderJob(job);
    followJob(job.id);
  } catch (e) { showError(e); }
}

// ---- wiring ---------------------------------------------------------------------------
function init() {
  $("#error-close").addEventListener("click", clearError);
  $("#token").value = token();
  $("#token").addEventListener("change", (e) => {
    sessionStorage.setItem("cbir-token", e.target.value.trim());
    if (readAuth()) { clearError(); start(); }
  });
  $("#token-form").addEventListener("submit", (e) => e.preventDefault());
  window.addEventListener("hashchange", showTab);

  const drop = $("#drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const f = e.dataTransfer.files[0];
    if (f) { setQueryFile(f); runSearch(); }
  });
  $("#file").addEventListener("change", () => { previewQuery(); if ($("#file").files[0]) runSearch(); });
  $("#search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(); });
  $("#scene-form").addEventListener("submit", runScene);

  $("#index-form").addEventListener("submit", startIndex);
  $("#job-cancel").addEventListener("click", cancelJob);
  $("#train-form").addEventListener("submit", startTraining);
  $("#clear-btn").addEventListener("click", () => maintenance("clear"));
  $("#rebuild-btn").addEventListener("click", () => maintenance("rebuild"));

  fetch("/openapi.json").then((r) => r.json()).then((spec) => {
    const types = (spec.components.schemas.IndexType || {}).enum || [];
    $("#rebuild-type").append(...types.map((t) => el("option", { value: t }, t)));
  }).catch(() => {});

  start();
}

function start() {
  loadHealth().then((ready) => { showTab(); if (ready) { loadRoots(); loadJobs(); } });
}

document.addEventListener("DOMContentLoaded", init);
