// cbir web page: plain JS, no build step. Talks to the JSON API of the same server.
"use strict";

const $ = (sel) => document.querySelector(sel);
const ACTIVE = ["queued", "running"];
const state = {
  health: null, collection: null, roots: [], followed: null, source: null, pollTimer: null,
  searchSeq: 0, hits: [], query: null, models: [],
  // the model whose partitioned search is on screen (its results go if the partitioning changes)
  shownPartitioned: null,
  view: { items: [], index: 0, seq: 0 },
  dup: { groups: [], decisions: new Map(), seq: 0, ran: false, of: null, stale: false },
  // the active filters, [key, value] in the order added; every search sends them
  filters: [], filterValues: null, searchStale: false,
};

// ---- helpers -------------------------------------------------------------------------
function token() { return sessionStorage.getItem("cbir-token") || ""; }
// a server bound to a non-loopback address wants the token for reads too (health says so)
function readAuth() { return !!(state.health && state.health.read_auth_required); }
// a phone or tablet: no dragging files, a button to choose a photo instead
function touchDevice() { return window.matchMedia("(pointer: coarse)").matches || window.innerWidth < 600; }

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
    else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

// one number format everywhere: whole percents, grouped integers, short sizes and local dates
const pct = (x) => `${Math.round(x)} %`;            // x in 0..100
const pct1 = (x) => pct(100 * x);                   // x in 0..1
const num = (n) => Number(n).toLocaleString();
function bytes(n) {
  if (n == null) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / 1048576).toFixed(1)} MB`;
}
function when(t) {
  if (t == null || t === "") return "";
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  return isNaN(d) ? String(t) : d.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}
function basename(p) { return String(p || "").split(/[\\/]/).filter(Boolean).pop() || String(p || ""); }

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
  return readAuth() ? el("img", { "data-src": url, alt, decoding: "async" })
    : el("img", { src: url, alt, loading: "lazy", decoding: "async" });
}
function loadThumbs(box) {
  box.querySelectorAll("img[data-src]").forEach((img) => { if (lazyThumbs) lazyThumbs.observe(img); else loadThumb(img); });
}
function setImage(img, url) {
  if (!readAuth()) { img.src = url; return Promise.resolve(); }
  img.removeAttribute("src");
  return blobUrl(url).then((u) => { img.src = u; });
}

function download(name, type, text) {
  const u = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a", { href: u, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(u), 10000);
}

// ---- tabs ----------------------------------------------------------------------------
const TABS = ["search", "duplicates", "index", "models"];
function showTab() {
  let name = (location.hash || "#search").slice(1);
  if (name === "maintenance") name = "models";
  const known = TABS.includes(name) ? name : "search";
  document.querySelectorAll("[data-section]").forEach((s) => { s.hidden = s.dataset.section !== known; });
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.tab === known));
  if (known === "models") { loadInfo(); loadModels(); }
  if (known === "index") { loadRoots(); loadJobs(); }
  // one filter bar, shown in the tab that searches: the search box or the duplicates form
  if (known === "duplicates") $("#dup-form").after($("#filters"));
  if (known === "search") $("#search-form").append($("#filters"));
  if (known === "search" && state.searchStale) { state.searchStale = false; if (hasQuery()) submitSearch(); }
  if (known === "duplicates" && state.dup.stale) { state.dup.stale = false; if (state.dup.ran) findDuplicates(null, state.dup.of); }
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
    state.collection = c;
    $("#stats").textContent = c.exists
      ? `${num(c.images)} images · ${c.extractor} · index ${c.index_type || indexBuilding(c) || "not built yet"}`
      : "no collection yet: index a folder to start";
    const empty = !c.exists || !c.images;
    $("#welcome").hidden = !empty;
    $("#search-form").hidden = empty;
  } catch (e) { showError(e); }
  return true;
}

// ---- search --------------------------------------------------------------------------
function setQueryImage(file) {
  const dt = new DataTransfer();
  dt.items.add(file);
  $("#file").files = dt.files;
  $("#q").value = "";
  showQueryChip(URL.createObjectURL(file), file.name, true);
}

function showQueryChip(src, name, isBlob) {
  const img = $("#query-preview");
  if (img.dataset.blob) URL.revokeObjectURL(img.src);
  img.dataset.blob = isBlob ? "1" : "";
  img.src = src;
  $("#query-name").textContent = name;
  $("#query-name").title = name;
  $("#query-chip").hidden = false;
}

function clearQueryImage() {
  $("#file").value = "";
  const img = $("#query-preview");
  if (img.dataset.blob) URL.revokeObjectURL(img.src);
  img.dataset.blob = "";
  img.removeAttribute("src");
  $("#query-chip").hidden = true;
  state.query = null;
}

// a new search: nothing of the previous one stays on screen (results, status, error)
function beginSearch() {
  clearError();
  closeViewer();
  state.searchSeq += 1;
  state.hits = [];
  state.shownPartitioned = null;
  $("#results").replaceChildren();
  revokeBlobs();
  $("#search-status").textContent = "searching…";
  return state.searchSeq;
}
function failSearch(seq, e) {
  if (seq !== state.searchSeq) return;
  state.hits = [];
  $("#results").replaceChildren();
  $("#search-status").textContent = "";
  showError(e);
}

function searchParams() {
  const k = parseInt($("#k").value, 10);
  const minmatch = Math.min(100, Math.max(0, parseFloat($("#minsim").value) || 0));
  if (!(k >= 1 && k <= 1000)) throw new Error("Results must be a whole number between 1 and 1000");
  const rr = $("#rerank").value;
  const model = rr.startsWith("model:") ? rr.slice(6) : null;
  const partitioned = !!model && $("#partitioned").checked && !$("#partitioned").disabled;
  const nprobe = parseInt($("#nprobe").value, 10);
  if (partitioned && !(nprobe >= 1 && nprobe <= 1000)) throw new Error("Classes scanned must be a whole number between 1 and 1000");
  return { k, minmatch, rerank: model ? "none" : rr, model, partitioned, nprobe };
}

// the model search's "partitioned" option: only when that model partitions the collection's
// class-partitioned index (the Models tab's "Use for partitioned search"); else say why not
function updatePartitionControl() {
  const rr = $("#rerank").value;
  const model = rr.startsWith("model:") ? rr.slice(6) : null;
  const used = state.models.find((m) => m.in_use);
  const ok = !!model && !!used && used.name === model;
  const box = $("#partitioned");
  $("#partitioned-label").hidden = !model;
  box.disabled = !ok;
  if (!ok) box.checked = false;
  $("#partitioned-label").title = ok
    ? `candidates only from the collection's class-partitioned index: the tables of the query's most probable classes under model ${model}`
    : "";
  $("#nprobe-label").hidden = !(ok && box.checked);
  const note = $("#partition-note");
  note.hidden = !model || ok;
  note.textContent = !model || ok ? "" : used
    ? `partitioned search: the collection's class-partitioned index is partitioned by model ${used.name}, not ${model} — choose "Use for partitioned search" for ${model} on the Models tab`
    : `partitioned search: no model partitions the collection's index yet — choose "Use for partitioned search" for ${model} on the Models tab`;
}

function hasQuery() {
  return !!((state.query && state.query.type === "id") || $("#file").files[0] || $("#q").value.trim());
}

// one box: a query image (chosen, dropped, pasted, or "similar") wins; else the words
function submitSearch(ev) {
  if (ev) ev.preventDefault();
  if (state.query && state.query.type === "id") return runSearch(state.query.id, state.query.name);
  if ($("#file").files[0]) return runSearch();
  if ($("#q").value.trim()) return runWords();
  showError(new Error(touchDevice() ? "type some words, or choose a photo" : "type some words, or choose, drop or paste a photo"));
}

async function runSearch(byId, byName) {
  const seq = beginSearch();
  let p;
  try { p = searchParams(); } catch (e) { failSearch(seq, e); return; }
  const btn = $("#search-btn");
  btn.disabled = true;
  const fq = filterQuery();
  try {
    if (p.model && fq) throw new Error(`searches re-ranked by model ${p.model} cannot be filtered yet: remove the filters, or set Re-rank to none`);
    let data;
    if (byId) {
      $("#q").value = "";
      $("#file").value = "";
      state.query = { type: "id", id: byId, name: byName || `image ${byId}` };
      showQueryChip(`/api/images/${byId}/thumbnail`, `like ${state.query.name}`, false);
      if (readAuth()) setImage($("#query-preview"), `/api/images/${byId}/thumbnail`).catch(() => {});
      data = p.model
        ? await api("GET", `/api/models/${encodeURIComponent(p.model)}/search?id=${byId}&k=${p.k}${partitionQuery(p)}`)
        : await api("GET", `/api/search?id=${byId}&k=${p.k}&min_match=${p.minmatch}&rerank=${p.rerank}${fq}`);
    } else {
      const f = $("#file").files[0];
      if (!f) throw new Error("choose a photo first");
      state.query = { type: "upload", name: f.name };
      const fd = new FormData();
      fd.append("file", f);
      fd.append("k", String(p.k));
      if (p.partitioned) { fd.append("partitioned", "true"); fd.append("n_partitions", String(p.nprobe)); }
      if (p.model) data = await api("POST", `/api/models/${encodeURIComponent(p.model)}/search`, fd);
      else {
        fd.append("min_match", String(p.minmatch));
        fd.append("rerank", p.rerank);
        data = await api("POST", "/api/search" + (fq ? "?" + fq.slice(1) : ""), fd);
      }
    }
    if (seq !== state.searchSeq) return;
    if (p.model) data.hits = data.hits.filter((h) => h.match == null || h.match >= p.minmatch);
    state.shownPartitioned = p.partitioned ? p.model : null;
    renderHits(data, p);
  } catch (e) { failSearch(seq, e); } finally { btn.disabled = false; }
}

// a partitioned model search (`cbir models search --partitioned --nprobe N`): the candidates
// come from the tables of the query's N most probable classes (and further ones until they
// hold the 100 candidates re-ranked, as unpartitioned)
function partitionQuery(p) {
  return p.partitioned ? `&partitioned=true&n_partitions=${p.nprobe}` : "";
}

function hitCard(h, i, sim, simTitle, extra) {
  return el("div", { class: "hit", "data-id": h.id },
    el("button", { type: "button", class: "open", title: `${h.name} — open`, "aria-label": `open ${h.name}`,
      onclick: () => openViewer(state.hits, i) }, thumb(h.thumbnail_url, h.name)),
    el("div", { class: "meta" },
      el("span", { class: "sim", title: simTitle }, sim),
      el("button", { type: "button", class: "like", title: "find images like this one",
        onclick: () => runSearch(h.id, h.name) }, "similar")),
    el("div", { class: "name", title: h.path }, h.name),
    extra || null);
}

function renderHits(data, p) {
  const box = $("#results");
  state.hits = data.hits;
  const q = data.query.type === "id" ? `images like ${data.query.name}` : data.query.name;
  const part = p.partitioned ? `, partitioned by its classes (${p.nprobe} scanned)` : "";
  const how = p.model ? `, re-ranked by model ${p.model}${part}` : p.rerank !== "none" ? `, re-ranked (${p.rerank})` : "";
  $("#search-status").textContent = data.collection_images === 0
    ? "the collection is empty: index a folder first"
    : `${data.hits.length} result(s) for ${q} in ${num(Math.round(data.took_ms))} ms, from ${num(data.collection_images)} images${how}${filterNote()}`;
  box.replaceChildren(...data.hits.map((h, i) => {
    const title = `match: 0 % = as alike as two random photos here, 100 % = the same image; `
      + `similarity 1/(1+d) ${pct1(h.similarity)}` + (h.model_label ? `; model: ${h.model_label} ${pct1(h.model_prob)}` : "");
    const sim = h.match == null ? pct1(h.similarity) : `${pct(h.match)} match`;
    return hitCard(h, i, sim, title, h.model_label ? el("div", { class: "evidence muted" }, `${h.model_label} ${pct1(h.model_prob)}`) : null);
  }));
  loadThumbs(box);
}

async function runWords() {
  const seq = beginSearch();
  clearQueryImage();
  const q = $("#q").value.trim();
  let p;
  try { p = searchParams(); } catch (e) { failSearch(seq, e); return; }
  const btn = $("#search-btn");
  btn.disabled = true;
  try {
    const data = await api("GET", `/api/scenes?q=${encodeURIComponent(q)}&k=${p.k}${filterQuery()}`);
    if (seq !== state.searchSeq) return;
    renderScene(data);
  } catch (e) {
    failSearch(seq, /no concept model/.test(e.message) ? new Error(e.message + " (on the server: cbir concepts train)") : e);
  } finally { btn.disabled = false; }
}

function renderScene(data) {
  const box = $("#results");
  state.hits = data.hits;
  const notes = data.notes.length ? ` (${data.notes.join("; ")})` : "";
  $("#search-status").textContent =
    `${data.hits.length} photo(s) showing ${data.query.join(" + ")} in ${num(Math.round(data.took_ms))} ms${notes}${filterNote()}`;
  box.replaceChildren(...data.hits.map((h, i) => {
    const ev = Object.entries(h.evidence).map(([c, e]) =>
      `${c} ${pct1(e.visual)}` + (e.text === null ? "" : ` / tags ${pct1(e.text)}`));
    const score = h.score >= 0 && h.score <= 1 ? `${pct1(h.score)} fit` : h.score.toFixed(2);
    return hitCard(h, i, score, "how well the photo shows all the words (fused relevance)",
      el("div", { class: "evidence muted", title: ev.join(", ") }, ev.join(" · ")));
  }));
  loadThumbs(box);
}

// ---- filter chips ------------------------------------------------------------------------------
// the API's filter parameters (cbir/service/filter_params.py); folder and tag may repeat
const FILTERS = {
  folder: { label: "folder", many: true, show: (v) => basename(v), hint: "a folder of the collection (its sub-folders too)" },
  after: { label: "taken on or after", show: (v) => `taken ≥ ${v}`, hint: "2021, 2021-07 or 2021-07-04 (EXIF date taken)" },
  before: { label: "taken before", show: (v) => `taken < ${v}`, hint: "2021, 2021-07 or 2021-07-04 (EXIF date taken)" },
  camera: { label: "camera", show: (v) => `camera ${v}`, hint: "part of the camera's make or model" },
  min_width: { label: "min. width", show: (v) => `width ≥ ${num(v)} px`, hint: "pixels", number: true },
  min_height: { label: "min. height", show: (v) => `height ≥ ${num(v)} px`, hint: "pixels", number: true },
  tag: { label: "tag", many: true, show: (v) => `tag ${v}`, hint: "the image has this tag (several: all of them)" },
  geotagged: { label: "geotagged", show: (v) => (v === "false" ? "not geotagged" : "geotagged"), hint: "only photos with a GPS position in their EXIF", flag: true },
  // a choice of the filter kind only: it adds the chip geotagged=false
  not_geotagged: { label: "not geotagged", param: "geotagged", value: "false", hint: "only photos without a GPS position in their EXIF", flag: true },
};
const DATE_RE = /^\d{4}([-/:]\d{2}){0,2}$/;

// "&folder=...&camera=..." for a URL that already has a query ("" without filters)
function filterQuery() {
  return state.filters.map(([k, v]) => `&${k}=${encodeURIComponent(v)}`).join("");
}
function filterNote() {
  return state.filters.length ? ` · filtered: ${state.filters.map(([k, v]) => FILTERS[k].show(v)).join(", ")}` : "";
}

function renderFilterChips() {
  $("#filter-chips").replaceChildren(...state.filters.map(([k, v], i) => {
    const text = FILTERS[k].show(v);
    return el("span", { class: "chip filter", "data-key": k, "data-value": v, title: FILTERS[k].flag ? text : `${FILTERS[k].label}: ${v}` },
      el("span", {}, text),
      el("button", { type: "button", "aria-label": `remove the filter ${text}`, title: "remove this filter",
        onclick: () => removeFilter(i) }, "×"));
  }));
}

function addFilter(key, raw) {
  let f = FILTERS[key];
  if (f.param) { raw = f.value; key = f.param; f = FILTERS[key]; }  // "not geotagged": geotagged=false
  let value = f.flag ? (String(raw) === "false" ? "false" : "true") : String(raw == null ? "" : raw).trim();
  if (!value) { showError(new Error(`give a value for the ${f.label} filter (${f.hint})`)); return false; }
  if ((key === "after" || key === "before") && !DATE_RE.test(value)) {
    showError(new Error(`${f.label} takes a date like 2021, 2021-07 or 2021-07-04; got ${value}`)); return false;
  }
  if (f.number) {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 0 || n > 1000000) { showError(new Error(`${f.label} is a whole number of pixels, 0 to 1,000,000`)); return false; }
    value = String(n);
  }
  if (f.many && state.filters.filter(([k]) => k === key).length >= 20) { showError(new Error(`at most 20 ${f.label} filters`)); return false; }
  if (state.filters.some(([k, v]) => k === key && v === value)) return true;  // already there
  clearError();
  state.filters = f.many ? [...state.filters, [key, value]] : [...state.filters.filter(([k]) => k !== key), [key, value]];
  filtersChanged();
  return true;
}

function removeFilter(i) {
  state.filters = state.filters.filter((_, j) => j !== i);
  filtersChanged();
  $("#filter-toggle").focus();
}

// a filter changed: the search in view runs again (its old results go at once), the other tab's later
function filtersChanged() {
  renderFilterChips();
  const onDup = !$("#tab-duplicates").hidden;
  if (onDup) {
    if (state.dup.ran) findDuplicates(null, state.dup.of);
    if (state.hits.length || $("#search-status").textContent) {
      state.hits = [];
      $("#results").replaceChildren();
      $("#search-status").textContent = "";
      state.searchStale = true;
    }
  } else {
    if (hasQuery() && (state.hits.length || $("#search-status").textContent)) submitSearch();
    else { state.hits = []; $("#results").replaceChildren(); $("#search-status").textContent = ""; }
    if (state.dup.ran) {
      state.dup.groups = [];
      state.dup.decisions = new Map();
      $("#dup-groups").replaceChildren();
      $("#dup-csv").disabled = $("#dup-json").disabled = true;
      $("#dup-status").textContent = "";
      state.dup.stale = true;
    }
  }
}

async function loadFilterValues() {
  if (!state.collection || !state.collection.exists) return;
  try { state.filterValues = await api("GET", "/api/filter-values?limit=200"); } catch (e) { state.filterValues = null; }
  fillFilterValue(true);  // keep what was typed meanwhile
}

// the value box and the suggestions for the kind of filter chosen (``keep``: the value typed)
function fillFilterValue(keep) {
  const key = $("#filter-kind").value;
  const f = FILTERS[key];
  const fv = state.filterValues;
  const input = $("#filter-value");
  if (!keep || input.dataset.kind !== key) input.value = "";
  input.dataset.kind = key;
  input.type = f.number ? "number" : "text";
  input.placeholder = f.number ? "1024" : key === "after" || key === "before" ? "2021-07" : "";
  if (f.number) { input.min = "0"; input.max = "1000000"; } else { input.removeAttribute("min"); input.removeAttribute("max"); }
  $("#filter-value-label").hidden = !!f.flag;
  let options = [];  // [value, label]
  if (fv) {
    if (key === "folder") options = fv.folders.map((d) => [d.path, `${d.name} · ${num(d.count)}`]);
    if (key === "camera") options = fv.cameras.map((c) => [c.value, `${c.value} · ${num(c.count)}`]);
    if (key === "tag") options = fv.tags.map((t) => [t.tag, `${t.tag} · ${num(t.count)}`]);
    if ((key === "after" || key === "before") && fv.taken.first) {
      const y0 = Number(fv.taken.first.slice(0, 4)), y1 = Number(fv.taken.last.slice(0, 4));
      for (let y = Math.max(y0, y1 - 7); y <= y1; y++) options.push([String(key === "before" ? y + 1 : y), String(key === "before" ? y + 1 : y)]);
    }
  }
  if (f.number) options = [640, 1024, 1920, 3000].map((n) => [String(n), `${num(n)} px`]);
  $("#filter-options").replaceChildren(...options.map(([v, l]) => el("option", { value: v, label: l })));
  const top = key === "folder" && fv ? [...fv.folders].sort((a, b) => b.count - a.count).slice(0, 8).map((d) => [d.path, `${d.name} · ${num(d.count)}`]) : options.slice(0, 8);
  $("#filter-suggest").replaceChildren(...top.map(([v, l]) =>
    el("button", { type: "button", class: "chip", title: v, "data-value": v, onclick: () => { if (addFilter(key, v)) closeFilterPanel(); } }, l)));
  let note = f.hint;
  if (fv && (key === "after" || key === "before") && fv.taken.first) note += ` · photos here were taken ${fv.taken.first} to ${fv.taken.last}`;
  if (fv && ["after", "before", "camera", "geotagged", "not_geotagged"].includes(key)) {
    if (key === "geotagged") note += ` · ${num(fv.geotagged)} of ${num(fv.images)} are`;
    if (key === "not_geotagged") note += ` · ${num(fv.images - fv.geotagged)} of ${num(fv.images)} are`;
    if (fv.without_metadata) note += ` · ${num(fv.without_metadata)} image(s) have no metadata stored yet (re-index their folder)`;
  }
  if (fv && !options.length && ["folder", "camera", "tag"].includes(key)) note += " · none in this collection";
  $("#filter-note").textContent = note;
}

function openFilterPanel() {
  $("#filter-panel").hidden = false;
  $("#filter-toggle").setAttribute("aria-expanded", "true");
  fillFilterValue();
  loadFilterValues();
  $("#filter-kind").focus();
}
function closeFilterPanel() {
  $("#filter-panel").hidden = true;
  $("#filter-toggle").setAttribute("aria-expanded", "false");
}

// ---- the viewer (lightbox) --------------------------------------------------------------------
function openViewer(items, index) {
  state.view = { items, index, seq: state.view.seq + 1 };
  const dlg = $("#viewer");
  if (!dlg.open) dlg.showModal();
  renderViewer();
}

function closeViewer() {
  const dlg = $("#viewer");
  if (dlg.open) dlg.close();
}

function moveViewer(step) {
  const v = state.view;
  const i = v.index + step;
  if (i < 0 || i >= v.items.length) return;
  v.index = i;
  v.seq += 1;
  renderViewer();
}

async function renderViewer() {
  const v = state.view;
  const h = v.items[v.index];
  const seq = v.seq;
  const img = $("#viewer-img");
  img.removeAttribute("src");
  img.alt = h.name || basename(h.path);
  $("#viewer-name").textContent = h.name || basename(h.path);
  $("#viewer-pos").textContent = `${v.index + 1} of ${v.items.length}`;
  $("#viewer-prev").disabled = v.index === 0;
  $("#viewer-next").disabled = v.index >= v.items.length - 1;
  $("#viewer-open").href = h.image_url;
  const score = h.match != null ? [["match", pct(h.match)]] : [];
  $("#viewer-meta").replaceChildren(...[["path", h.path], ...score].flatMap(([k, x]) => [el("dt", {}, k), el("dd", {}, x)]));
  setImage(img, h.image_url).catch((e) => { if (seq === state.view.seq) showError(e); });
  try {
    const m = await api("GET", `/api/images/${h.id}/meta`);
    if (seq !== state.view.seq) return;
    const chips = (xs) => xs.length ? el("span", { class: "chips" }, ...xs.map((x) => el("span", { class: "chip small" }, x))) : "—";
    const rows = [["path", m.path], ...score,
      ["size", `${m.width && m.height ? `${num(m.width)} × ${num(m.height)} px · ` : ""}${bytes(m.size)}`],
      ["indexed", when(m.indexed_at)],
      ["labels", chips(m.labels.map((l) => `${l.label} ${pct1(l.prob)}`))],
      ["tags", chips(m.tags)]];
    $("#viewer-meta").replaceChildren(...rows.flatMap(([k, x]) => [el("dt", {}, k), el("dd", { "data-field": k }, x)]));
  } catch (e) { if (seq === state.view.seq) showError(e); }
}

function viewerSimilar() {
  const h = state.view.items[state.view.index];
  location.hash = "#search";
  runSearch(h.id, h.name);
}

function viewerDuplicates() {
  const h = state.view.items[state.view.index];
  closeViewer();
  location.hash = "#duplicates";
  findDuplicates(null, h);
}

// ---- duplicates ----------------------------------------------------------------------------
async function findDuplicates(ev, of) {
  if (ev) ev.preventDefault();
  clearError();
  const seq = ++state.dup.seq;
  state.dup.ran = true;
  state.dup.of = of || null;
  state.dup.stale = false;
  state.dup.groups = [];
  state.dup.decisions = new Map();
  $("#dup-groups").replaceChildren();
  $("#dup-csv").disabled = $("#dup-json").disabled = true;
  const t = parseFloat($("#dup-threshold").value);
  if (!(t >= 0.5 && t <= 1)) { $("#dup-status").textContent = ""; showError(new Error("the threshold is a similarity between 0.5 and 1")); return; }
  $("#dup-status").textContent = "looking for duplicates…";
  try {
    const q = `threshold=${t}&near=${$("#dup-near").checked}` + (of ? `&id=${of.id}` : "") + filterQuery();
    const data = await api("GET", `/api/duplicates?${q}`);
    if (seq !== state.dup.seq) return;
    state.dup.groups = data.groups;
    const saved = savedDecisions();
    for (const g of data.groups) for (const m of g.members)
      state.dup.decisions.set(m.id, saved[m.id] || (m.keeper ? "keep" : "mark"));
    const what = of ? `copies of ${of.name}` : "duplicates";
    $("#dup-status").textContent = data.groups.length
      ? `${num(data.total_groups)} group(s) of ${what}, ${num(data.images_in_groups)} images (threshold ${t}, ${num(Math.round(data.took_ms))} ms)`
        + (data.total_groups > data.groups.length ? `; showing the ${data.groups.length} largest` : "") + filterNote()
      : `no ${what} at threshold ${t}${filterNote()}`;
    renderDuplicates();
  } catch (e) {
    if (seq !== state.dup.seq) return;
    $("#dup-status").textContent = "";
    showError(e);
  }
}

function renderDuplicates() {
  const box = $("#dup-groups");
  box.replaceChildren(...state.dup.groups.map((g) => {
    const items = g.members.map((m) => ({ ...m, match: null }));
    return el("div", { class: "dup-group card", "data-group": g.group },
      el("h3", {}, `Group ${g.group} · ${g.kind === "exact" ? "identical files" : "near copies"} · ${g.members.length} images`),
      el("div", { class: "dup-row" }, ...g.members.map((m, i) => dupCard(m, items, i))));
  }));
  loadThumbs(box);
  const any = state.dup.groups.length > 0;
  $("#dup-csv").disabled = $("#dup-json").disabled = !any;
}

// keep / mark choices survive a reload and a new duplicates run: kept in this browser per
// collection, by image id (ids are never reused in a collection). Nothing is sent anywhere.
function decisionsKey() {
  return `cbir.duplicates.decisions:${(state.collection && state.collection.collection) || ""}`;
}

function savedDecisions() {
  try {
    const d = JSON.parse(localStorage.getItem(decisionsKey()) || "{}");
    return d && typeof d === "object" ? d : {};
  } catch { return {}; }
}

function saveDecision(id, decision) {
  const d = savedDecisions();
  d[id] = decision;
  try { localStorage.setItem(decisionsKey(), JSON.stringify(d)); } catch { /* storage full or off: the choice still holds until reload */ }
}

function dupCard(m, items, i) {
  const decision = state.dup.decisions.get(m.id);
  const set = (d) => { state.dup.decisions.set(m.id, d); saveDecision(m.id, d); renderDuplicates(); };
  return el("div", { class: `dup-card ${decision}`, "data-id": m.id },
    el("button", { type: "button", class: "open", title: `${m.name} — open`, "aria-label": `open ${m.name}`,
      onclick: () => openViewer(items, i) }, thumb(m.thumbnail_url, m.name)),
    el("div", { class: "name", title: m.path }, m.name),
    el("div", { class: "muted small" }, `${m.width && m.height ? `${m.width} × ${m.height} · ` : ""}${bytes(m.size)}`),
    el("div", { class: "muted small" }, m.keeper ? "suggested keeper" : `similarity ${pct1(m.similarity ?? 0)}`),
    el("div", { class: "toggle", role: "group", "aria-label": `decision for ${m.name}` },
      el("button", { type: "button", class: "keep", "aria-pressed": String(decision === "keep"), onclick: () => set("keep") }, "keep"),
      el("button", { type: "button", class: "mark", "aria-pressed": String(decision === "mark"), onclick: () => set("mark") }, "mark")));
}

function dupRows() {
  const rows = [];
  for (const g of state.dup.groups) for (const m of g.members) {
    rows.push({ group: g.group, kind: g.kind, decision: state.dup.decisions.get(m.id) === "keep" ? "keep" : "remove",
      suggested_keeper: m.keeper, similarity: m.similarity, id: m.id, path: m.path, width: m.width,
      height: m.height, size: m.size });
  }
  return rows;
}

function csvCell(v) {
  const s = v == null ? "" : String(v);
  // quote; and keep a spreadsheet from reading a cell as a formula
  return /^[=+\-@]/.test(s) || /[",\n\r]/.test(s) ? `"${(/^[=+\-@]/.test(s) ? "'" : "") + s.replace(/"/g, '""')}"` : s;
}

function exportDuplicates(kind) {
  const rows = dupRows();
  if (kind === "json") {
    download("cbir-duplicates.json", "application/json", JSON.stringify({ threshold: parseFloat($("#dup-threshold").value),
      filters: state.filters.map(([key, value]) => ({ key, value })), images: rows }, null, 2));
  } else {
    const cols = ["group", "kind", "decision", "suggested_keeper", "similarity", "id", "path", "width", "height", "size"];
    download("cbir-duplicates.csv", "text/csv", [cols.join(","), ...rows.map((r) => cols.map((c) => csvCell(r[c])).join(","))].join("\n") + "\n");
  }
}

// ---- jobs ------------------------------------------------------------------------------
async function loadRoots() {
  try {
    const r = await api("GET", "/api/roots");
    state.roots = r.roots;
    const text = r.roots.length ? r.roots.join(", ") : "none — indexing from this page is off (start the server with --allow-root DIR)";
    $("#roots").textContent = text;
    $("#welcome-roots").textContent = text;
    $("#roots-list").replaceChildren(...r.roots.map((x) => el("option", { value: x })));
    if (r.roots.length && !$("#welcome-folder").value) $("#welcome-folder").placeholder = r.roots[0];
  } catch (e) { if (e.status !== 401) showError(e); }
}

const UNITS = { index: "files", rebuild: "files", train: "epochs", clear: "steps" };
// one wording for the live panel and the jobs table, so they never disagree
function jobProgress(job) {
  const unit = UNITS[job.kind] || "steps";
  const of = job.total ? `${num(job.done)} of ${num(job.total)} ${unit}` : "";
  switch (job.status) {
    case "succeeded": return `100 % — done${of ? ": " + of : ""}`;
    case "queued": return "waiting for the previous job";
    case "running": return job.total ? `${pct(job.percent)} — ${of}` : (job.message || "starting…");
    default: return `${job.status}${of ? " at " + of : ""}`;  // never a percentage: it did not finish
  }
}
function jobTarget(job) {
  const p = job.params || {};
  if (job.kind === "rebuild" && "partition_model" in p)  // started by a change of partitioning model
    return p.partition_model ? `for model ${p.partition_model}` : "for the extractor's classes";
  return job.kind === "train" ? `model ${p.name || ""}` : p.path ? basename(p.path) : "";
}
// no saved index, and a job of this server is making it: say so (never "not built" meanwhile)
function indexBuilding(c) {
  return c.index_job ? (c.index_job.kind === "index" ? "being built" : "being rebuilt") : "";
}
// the maintenance line says how a job it started ended (the job panel shows its progress)
function reportJobEnd(job, what) {
  const wait = async () => {
    try {
      const j = await api("GET", `/api/jobs/${job.id}`);
      if (ACTIVE.includes(j.status)) { setTimeout(wait, 300); return; }
      $("#maint-status").textContent = `${what}: ${j.status} — ${j.message}`;
      loadInfo(); loadHealth();
    } catch (e) { showError(e); }
  };
  wait();
}

function renderJob(job) {
  $("#job-panel").hidden = false;
  $("#job-title").textContent = `${job.kind} ${jobTarget(job)}`.trim();
  const badge = $("#job-status");
  badge.textContent = job.status;
  badge.className = "badge " + job.status;
  const bar = $("#progress");
  bar.classList.toggle("stopped", !ACTIVE.includes(job.status) && job.status !== "succeeded");
  if (job.status === "running" && !job.total) bar.removeAttribute("value");   // reading: indeterminate
  else bar.value = job.status === "succeeded" ? 100 : Math.min(job.percent, ACTIVE.includes(job.status) ? 100 : 99);
  // the message of a stopped job often repeats its status: "cancelled; work already committed is kept…"
  const note = (job.message || "").replace(new RegExp(`^${job.status}[;:,]?\\s*`), "");
  const msg = (job.status === "running" && job.total) || !["succeeded", "running", "queued"].includes(job.status)
    ? (note ? ` · ${note}` : "") : "";
  $("#progress-text").textContent = jobProgress(job) + msg;
  $("#job-cancel").hidden = !ACTIVE.includes(job.status);
  const details = $("#job-errors");
  details.hidden = !job.error_count;
  if (job.error_count) {
    details.querySelector("summary").textContent = `${job.error_count} file(s) could not be indexed`;
    details.querySelector("ul").replaceChildren(...job.errors.map((e) => el("li", {}, `${e.path}: ${e.reason}`)));
  }
  // the table shows the same job from the same data
  const row = document.querySelector(`#jobs tr[data-id="${job.id}"]`);
  if (row) row.replaceWith(jobRow(job));
}

function stopFollowing() {
  if (state.source) { state.source.close(); state.source = null; }
  if (state.pollTimer) { clearTimeout(state.pollTimer); state.pollTimer = null; }
}

function followJob(id) {
  stopFollowing();
  state.followed = id;
  const done = (job) => {
    if (state.followed !== id) return true;
    renderJob(job);
    if (!ACTIVE.includes(job.status)) {
      stopFollowing();
      loadJobs(); loadHealth(); loadInfo();
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

async function startIndex(path) {
  clearError();
  try {
    const job = await api("POST", "/api/index-jobs", { path });
    renderJob(job);
    followJob(job.id);
    loadJobs();
  } catch (e) { showError(e); }
}

function jobRow(j) {
  return el("tr", { "data-id": j.id },
    el("td", { "data-label": "Kind" }, j.kind),
    el("td", { class: "path", "data-label": "Folder" }, j.params.path || (j.kind === "train" ? j.params.name : jobTarget(j)) || ""),
    el("td", { "data-label": "Status" }, el("span", { class: "badge " + j.status }, j.status)),
    el("td", { "data-label": "Progress" }, jobProgress(j)),
    el("td", { class: "msg", "data-label": "Message" }, j.message),
    el("td", { "data-label": "" }, ["failed", "cancelled", "interrupted"].includes(j.status) && !j.params.uploaded
      ? el("button", { type: "button", class: "secondary", onclick: () => retryJob(j.id) }, "Run again") : null));
}

async function loadJobs() {
  try {
    const { jobs } = await api("GET", "/api/jobs?limit=15");
    $("#jobs tbody").replaceChildren(...jobs.map(jobRow));
    // a job that is still active when the page (re)loads is followed again
    const active = jobs.find((j) => ACTIVE.includes(j.status));
    if (active && state.followed !== active.id) { renderJob(active); followJob(active.id); }
  } catch (e) { if (e.status !== 401) showError(e); }
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

// ---- collection maintenance -------------------------------------------------------------------
async function loadInfo() {
  try {
    const c = await api("GET", "/api/collection");
    const rows = c.exists
      ? [["collection", c.collection], ["images", num(c.images)], ["failed files", num(c.errors)], ["extractor", c.extractor],
         ["index", c.index_type ? `${c.index_type} (${c.index_up_to_date ? "up to date" : "will sync on next search"})`
           : indexBuilding(c) ? `${indexBuilding(c)} by a ${c.index_job.kind} job` : "not built (will sync on next search)"],
         ["class partitions", c.partition_model ? `model ${c.partition_model}`
           : c.class_partitioned_available ? "the extractor's classes" : "none (no model in use)"],
         ["disk", bytes((c.catalog_bytes || 0) + (c.index_bytes || 0))]]
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
    renderJob(job);
    followJob(job.id);
    reportJobEnd(job, kind);
  } catch (e) { showError(e); }
}

// ---- models ---------------------------------------------------------------------------------
async function loadModels() {
  const box = $("#models");
  const can = state.health && state.health.training_available;
  $("#train-form").hidden = !can;
  if (!can) {
    state.models = [];
    fillModelChoices();
    box.replaceChildren(el("p", { class: "muted" }, "Model training is not available in this build."));
    return;
  }
  try {
    const { models } = await api("GET", "/api/models");
    state.models = models;
    fillModelChoices();
    if (!models.length) { box.replaceChildren(el("p", { class: "muted" }, "No trained models yet: train one from a folder with one sub-folder of photos per class.")); return; }
    const head = ["Name", "Classes", "Head", "Epochs", "Validation accuracy", "Trained by", "Trained", ""];
    box.replaceChildren(el("div", { class: "table-wrap" }, el("table", { class: "stack" },
      el("thead", {}, el("tr", {}, ...head.map((c) => el("th", {}, c)))),
      el("tbody", {}, ...models.map((m) => {
        const inUse = m.in_use ? el("span", { class: "badge in-use", title: "its classes partition the collection's class-partitioned index" }, "in use") : null;
        const name = m.error ? el("span", {}, m.name, el("br"), el("span", { class: "badge failed", title: m.error }, "damaged"))
          : el("span", {}, m.name, inUse);
        const cells = [name, m.classes ?? "", m.head || "", m.epochs ?? "",
          m.val_accuracy == null ? "—" : pct1(m.val_accuracy), m.trained_by || "", when(m.trained_at)];
        return el("tr", { "data-model": m.name }, ...cells.map((c, i) => el("td", { "data-label": head[i] }, c)),
          el("td", { class: "actions", "data-label": "" },
            el("button", { type: "button", class: "secondary", onclick: () => showCurves(m.name) }, "curves"),
            el("button", { type: "button", class: "secondary", onclick: () => showLabels(m.name) }, "labels"),
            el("button", { type: "button", class: "secondary", onclick: () => searchWithModel(m.name) }, "search with it"),
            m.error ? null : m.in_use
              ? el("button", { type: "button", class: "secondary use", onclick: (ev) => usePartitionModel(null, ev.target) }, "Stop using")
              : el("button", { type: "button", class: "secondary use", title: "partition the collection's class-partitioned index by this model's classes (cbir models use)",
                onclick: (ev) => usePartitionModel(m.name, ev.target) }, "Use for partitioned search"),
            el("button", { type: "button", class: "danger", onclick: () => deleteModel(m.name) }, "delete")));
      })))));
  } catch (e) { box.replaceChildren(el("p", { class: "muted" }, e.message)); }
}

function fillModelChoices() {
  const group = $("#rerank-models");
  const keep = $("#rerank").value;
  group.replaceChildren(...state.models.map((m) => el("option", { value: "model:" + m.name }, m.name + (m.in_use ? " (in use)" : ""))));
  group.hidden = !state.models.length;
  $("#rerank").value = [...$("#rerank").options].some((o) => o.value === keep) ? keep : "none";
  updatePartitionControl();
}

// "Use for partitioned search" (PUT /api/partition-model, as `cbir models use NAME`), or
// "Stop using" (name null, `cbir models use --none`)
async function usePartitionModel(name, btn) {
  clearError();
  if (btn) btn.disabled = true;
  try {
    const out = await api("PUT", "/api/partition-model", { model: name });
    const now = name ? `model ${name} now partitions the index` : "no model partitions the index now";
    $("#maint-status").textContent = `${now}: ${out.note}`;
    if (out.job) {  // the rebuild that saves the index again: its progress like any job's
      renderJob(out.job);
      followJob(out.job.id);
      reportJobEnd(out.job, `${now}; index rebuild`);
      loadJobs();
    }
    // results of a partitioned search by another partitioning are out of date: run it again
    // (unpartitioned if its model is no longer in use) when the search tab shows again
    if (state.shownPartitioned && state.shownPartitioned !== name) {
      state.shownPartitioned = null;
      state.hits = [];
      $("#results").replaceChildren();
      $("#search-status").textContent = "";
      state.searchStale = true;
    }
  } catch (e) { showError(e); }
  await loadModels();
  loadInfo();
  loadHealth();
}

function searchWithModel(name) {
  $("#rerank").value = "model:" + name;
  updatePartitionControl();
  location.hash = "#search";
  clearError();
  if (state.query && state.query.type === "id") runSearch(state.query.id, state.query.name);
  else if ($("#file").files[0]) runSearch();
  else $("#search-status").textContent = `searches by photo are now re-ranked by model ${name}: choose a photo or press "similar" on one`;
}

async function deleteModel(name) {
  if (!confirm(`Delete model ${name}?`)) return;
  try {
    const out = await api("DELETE", `/api/models/${encodeURIComponent(name)}`);
    $("#curves").replaceChildren(); $("#labels").replaceChildren(); loadModels();
    if (out.job) {  // it partitioned the index: the rebuild with the extractor's classes
      renderJob(out.job);
      followJob(out.job.id);
      reportJobEnd(out.job, `model ${name} deleted; index rebuild`);
      loadJobs();
    }
    loadInfo(); loadHealth();
  } catch (e) { showError(e); }
}

function showCurves(name) {
  clearError();
  const box = $("#curves");
  const img = el("img", { class: "curves", alt: `training curves of ${name}: loss, accuracy and epochs against time` });
  img.addEventListener("error", () => showError(new Error(`the curves of ${name} could not be drawn (see the server log)`)));
  box.replaceChildren(el("h3", {}, `Training curves of ${name}`), img,
    el("p", { class: "muted small" }, "The same plot as ", el("code", {}, `cbir models curves ${name} --out curves.png`), "."));
  setImage(img, `/api/models/${encodeURIComponent(name)}/curves.png?t=${Date.now()}`).catch(showError);
}

async function showLabels(name, label) {
  clearError();
  const box = $("#labels");
  box.replaceChildren(el("h3", {}, `Labels of the collection by ${name}`), el("p", { class: "muted" }, "labelling…"));
  try {
    const q = label ? `&label=${encodeURIComponent(label)}` : "";
    const data = await api("GET", `/api/models/${encodeURIComponent(name)}/labels?limit=36${q}`);
    const chips = Object.entries(data.counts).sort((a, b) => b[1] - a[1]).map(([c, n]) =>
      el("button", { type: "button", class: "chip" + (c === label ? " on" : ""), "aria-pressed": String(c === label),
        onclick: () => showLabels(name, c === label ? null : c) }, `${c} · ${num(n)}`));
    const items = data.rows.map((r) => ({ ...r, match: null }));
    const grid = el("div", { class: "grid" }, ...data.rows.map((r, i) => el("div", { class: "hit", "data-id": r.id },
      el("button", { type: "button", class: "open", "aria-label": `open ${r.name}`, onclick: () => openViewer(items, i) }, thumb(r.thumbnail_url, r.name)),
      el("div", { class: "meta" }, el("span", { class: "sim" }, `${r.label} ${pct1(r.prob)}`)),
      el("div", { class: "name", title: r.path }, r.name))));
    box.replaceChildren(el("h3", {}, `Labels of the collection by ${name}`),
      el("p", { class: "muted" }, `${num(data.total)} image(s)${label ? ` labelled ${label}` : ""}`
        + (data.total > data.rows.length ? `, the ${data.rows.length} most confident shown` : "")
        + "; nothing is written to the collection. Pick a class:"),
      el("div", { class: "chips" }, ...chips), grid);
    loadThumbs(grid);
  } catch (e) { box.replaceChildren(); showError(e); }
}

async function startTraining(ev) {
  ev.preventDefault();
  clearError();
  const body = { path: $("#train-folder").value.trim(), options: { epochs: parseInt($("#train-epochs").value, 10) || 30 } };
  if ($("#train-name").value.trim()) body.name = $("#train-name").value.trim();
  const patience = parseInt($("#train-patience").value, 10);
  if (patience > 0) body.options.patience = patience;
  try {
    const job = await api("POST", "/api/train-jobs", body);
    renderJob(job);
    followJob(job.id);
  } catch (e) { showError(e); }
}

// ---- wiring ---------------------------------------------------------------------------
function firstImage(list) {
  for (const item of list || []) {
    const f = item.getAsFile ? (item.kind === "file" ? item.getAsFile() : null) : item;
    if (f && f.type.startsWith("image/")) return f;
  }
  return null;
}

function init() {
  $("#error-close").addEventListener("click", clearError);
  $("#token").value = token();
  $("#token").addEventListener("change", (e) => {
    sessionStorage.setItem("cbir-token", e.target.value.trim());
    if (readAuth()) { clearError(); start(); }
  });
  $("#token-form").addEventListener("submit", (e) => e.preventDefault());
  window.addEventListener("hashchange", showTab);

  // the one search box: words, or a photo chosen, dropped anywhere on the search tab, or pasted
  const touch = touchDevice();
  $("#pick-text").textContent = touch ? "Choose a photo" : "Photo…";
  $("#q").placeholder = touch ? "Words, e.g. sky water boats" : "Words (sky water boats) — or drop or paste a photo";
  const tab = $("#tab-search");
  let depth = 0;
  tab.addEventListener("dragenter", (e) => { e.preventDefault(); depth += 1; $("#drop-hint").hidden = false; });
  tab.addEventListener("dragover", (e) => e.preventDefault());
  tab.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) $("#drop-hint").hidden = true; });
  tab.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    $("#drop-hint").hidden = true;
    const f = firstImage(e.dataTransfer.files);
    if (f) { setQueryImage(f); runSearch(); } else showError(new Error("drop an image file (JPEG, PNG, …)"));
  });
  document.addEventListener("paste", (e) => {
    if ($("#tab-search").hidden) return;
    const f = firstImage(e.clipboardData && e.clipboardData.items);
    if (f) { e.preventDefault(); setQueryImage(f); runSearch(); }
  });
  $("#file").addEventListener("change", () => {
    const f = $("#file").files[0];
    if (!f) return;
    $("#q").value = "";
    state.query = null;
    showQueryChip(URL.createObjectURL(f), f.name, true);
    runSearch();
  });
  $("#q").addEventListener("input", () => { if ($("#q").value.trim() && !$("#query-chip").hidden) clearQueryImage(); });
  $("#query-clear").addEventListener("click", () => { clearQueryImage(); $("#q").focus(); });
  $("#search-form").addEventListener("submit", submitSearch);
  $("#rerank").addEventListener("change", updatePartitionControl);
  $("#partitioned").addEventListener("change", updatePartitionControl);

  // the viewer
  $("#viewer-close").addEventListener("click", closeViewer);
  $("#viewer-prev").addEventListener("click", () => moveViewer(-1));
  $("#viewer-next").addEventListener("click", () => moveViewer(1));
  $("#viewer-similar").addEventListener("click", viewerSimilar);
  $("#viewer-dups").addEventListener("click", viewerDuplicates);
  $("#viewer-open").addEventListener("click", (ev) => {
    if (!readAuth()) return;  // the link itself opens it
    ev.preventDefault();
    const w = window.open("", "_blank");
    if (!w) { showError(new Error("allow pop-ups for this page to open full-size images")); return; }
    blobUrl($("#viewer-open").href).then((u) => { w.location = u; }).catch((e) => { w.close(); showError(e); });
  });
  $("#viewer").addEventListener("keydown", (e) => {
    if (e.key === "ArrowLeft") moveViewer(-1);
    if (e.key === "ArrowRight") moveViewer(1);
  });
  $("#viewer").addEventListener("click", (e) => { if (e.target === $("#viewer")) closeViewer(); });

  $("#dup-form").addEventListener("submit", (e) => findDuplicates(e));

  // filter chips
  $("#filter-toggle").addEventListener("click", () => { if ($("#filter-panel").hidden) openFilterPanel(); else closeFilterPanel(); });
  $("#filter-kind").addEventListener("change", () => { fillFilterValue(); $("#filter-value").focus(); });
  const add = () => { if (addFilter($("#filter-kind").value, $("#filter-value").value)) closeFilterPanel(); };
  $("#filter-add").addEventListener("click", add);
  // Enter adds the filter (the box sits in the search form: it must not submit a search)
  $("#filter-value").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); add(); } });
  $("#filter-panel").addEventListener("keydown", (e) => { if (e.key === "Escape") { closeFilterPanel(); $("#filter-toggle").focus(); } });
  $("#dup-csv").addEventListener("click", () => exportDuplicates("csv"));
  $("#dup-json").addEventListener("click", () => exportDuplicates("json"));

  $("#index-form").addEventListener("submit", (e) => { e.preventDefault(); startIndex($("#folder").value.trim()); });
  $("#welcome-form").addEventListener("submit", (e) => { e.preventDefault(); startIndex($("#welcome-folder").value.trim()); });
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
  loadHealth().then((ready) => {
    showTab();
    if (ready) { loadRoots(); loadJobs(); if (state.health && state.health.training_available) loadModels(); }
  });
}

document.addEventListener("DOMContentLoaded", init);
