// S2SWCLIP inspection page: upload images to /v1/predict, show original | overlay, score and
// verdict. The threshold slider only changes the verdicts here; the model is not re-run.
// Uploads carry the slider's threshold: the server colours each heatmap on a scale centred on it
// (see s2swclip.inference.heatmap) and the card shows that scale as a colour bar with its values.
"use strict";

(function () {
  const $ = (sel) => document.querySelector(sel);
  const state = { threshold: 0.5, maxBatch: 8, items: [], nextId: 0, inflight: 0 };
  const queue = [];          // chunks of items waiting to be sent
  const MAX_CONCURRENT = 2;  // requests in flight from this page
  const MAX_RETRIES = 20;    // answers 503 (queue full) are retried

  // ------------------------------------------------------------------------- bearer token
  // A server started with a token (--token / S2SWCLIP_TOKEN) answers the API 401 without it;
  // the page then asks for it once and keeps it for this tab only (sessionStorage).
  const TOKEN_KEY = "s2swclip-token";
  function authHeaders() {
    const t = sessionStorage.getItem(TOKEN_KEY);
    return t ? { Authorization: "Bearer " + t } : {};
  }
  function api(path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = Object.assign({}, opts.headers || {}, authHeaders());
    return fetch(path, opts);
  }

  const els = {
    tokenForm: $("#token-form"), tokenInput: $("#token-input"),
    info: $("#model-info"), drop: $("#dropzone"), input: $("#file-input"),
    slider: $("#threshold"), number: $("#threshold-value"), note: $("#threshold-note"),
    csv: $("#csv-button"), clear: $("#clear-button"), summary: $("#summary"),
    message: $("#message"), results: $("#results"), template: $("#card-template"),
  };

  // ---------------------------------------------------------------------------- model info
  function showMessage(text) {
    els.message.textContent = text;
    els.message.hidden = !text;
  }

  async function loadModel() {
    try {
      const r = await api("/v1/model");
      if (r.status === 401) {
        els.tokenForm.hidden = false;
        els.info.textContent = "this server needs an access token";
        return;
      }
      if (!r.ok) throw new Error("HTTP " + r.status);
      els.tokenForm.hidden = true;
      const m = await r.json();
      const parts = [
        m.backbone,
        m.weights ? "weights " + basename(String(m.weights)) : "random weights",
        m.prompts ? "prompts " + basename(String(m.prompts)) : null,
        m.image_size + " px",
        m.precision,
        m.device,
      ].filter(Boolean);
      els.info.textContent = parts.join(" · ");
      if (m.references) {  // few-normal-shot mode: known-good reference images in use
        const r = document.createElement("span");
        r.className = "references";
        r.textContent = " · few-shot: " + m.references.count + " reference image" +
          (m.references.count === 1 ? "" : "s") + ", weight " + m.references.few_shot_weight +
          (m.references.few_shot_weight === 1 ? " (references only)" : "");
        els.info.appendChild(r);
      }
      if (m.untrained_prompts) {
        const w = document.createElement("span");
        w.className = "warn";
        w.textContent = " · untrained prompts: scores are not meaningful";
        els.info.appendChild(w);
      }
      if (m.limits && m.limits.max_batch) state.maxBatch = m.limits.max_batch;
      if (typeof m.threshold === "number") {
        setThreshold(m.threshold);
        els.note.textContent = "Server threshold " + m.threshold.toFixed(3) +
          ". Moving the slider updates verdicts here only, without re-running the model.";
      } else {
        els.note.textContent = "No server threshold set. Verdicts update here, without re-running the model.";
      }
    } catch (e) {
      els.info.textContent = "model information unavailable (" + e.message + ")";
    }
  }

  function basename(p) {
    const parts = p.split(/[\\/]/);
    return parts[parts.length - 1];
  }

  // ----------------------------------------------------------------------------- threshold
  function setThreshold(value) {
    let v = Number(value);
    if (!Number.isFinite(v)) return;
    v = Math.min(1, Math.max(0, v));
    state.threshold = v;
    els.slider.value = String(v);
    if (document.activeElement !== els.number) els.number.value = v.toFixed(3);
    renderAll();
  }
  els.slider.addEventListener("input", () => setThreshold(els.slider.value));
  els.number.addEventListener("input", () => {
    if (els.number.value !== "") setThreshold(els.number.value);
  });
  els.number.addEventListener("change", () => { els.number.value = state.threshold.toFixed(3); });

  // -------------------------------------------------------------------------------- upload
  function addFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    showMessage("");
    const fresh = files.map((file) => {
      const item = {
        id: state.nextId++, file, name: file.name || "image", status: "pending",
        score: null, error: null, url: URL.createObjectURL(file), overlay: null, timing: null, heatmap: null,
      };
      item.card = makeCard(item);
      els.results.appendChild(item.card);
      state.items.push(item);
      return item;
    });
    for (let i = 0; i < fresh.length; i += state.maxBatch) queue.push(fresh.slice(i, i + state.maxBatch));
    renderAll();
    pump();
  }

  function pump() {
    while (state.inflight < MAX_CONCURRENT && queue.length) {
      const chunk = queue.shift();
      state.inflight++;
      send(chunk, 0).finally(() => { state.inflight--; pump(); });
    }
  }

  async function send(chunk, attempt) {
    const live = chunk.filter((it) => state.items.includes(it));
    if (!live.length) return;
    const form = new FormData();
    for (const it of live) form.append("files", it.file, it.name);
    let r, body;
    try {
      const profile = window.s2swProfile && window.s2swProfile.name;  // profiles.js: the selected profile
      r = await api("/v1/predict?threshold=" + encodeURIComponent(state.threshold.toFixed(6)) +
                    (profile ? "&profile=" + encodeURIComponent(profile) : ""), { method: "POST", body: form });
      body = await r.json().catch(() => ({}));
    } catch (e) {
      fail(live, "network error: " + e.message);
      return;
    }
    if (r.status === 503 && attempt < MAX_RETRIES) {
      const wait = 1000 * Number(r.headers.get("Retry-After") || 1);
      for (const it of live) setDetail(it, "server busy, retrying…");
      await new Promise((res) => setTimeout(res, wait));
      return send(chunk, attempt + 1);
    }
    if (Array.isArray(body.results)) {
      body.results.forEach((res, i) => {
        const it = live[res.index !== undefined ? res.index : i];
        if (!it) return;
        if (res.ok) {
          it.status = "scored";
          it.score = res.score;
          it.timing = res.timing_ms || null;
          it.overlay = res.overlay_png ? "data:image/png;base64," + res.overlay_png : null;
          it.heatmap = res.heatmap || null;
          it.profile = body.profile ? body.profile + " v" + body.profile_version : null;
        } else {
          it.status = "failed";
          it.error = res.error || "not scored";
        }
        render(it);
      });
      renderSummary();
      return;
    }
    fail(live, body.detail || ("HTTP " + r.status));
    if (body.detail) showMessage(body.detail);
  }

  function fail(items, message) {
    for (const it of items) { it.status = "failed"; it.error = message; render(it); }
    renderSummary();
  }

  // ------------------------------------------------------------------------------- drawing
  function makeCard(item) {
    const card = els.template.content.firstElementChild.cloneNode(true);
    card.dataset.id = String(item.id);
    card.querySelector(".name").textContent = item.name;
    card.querySelector(".name").title = item.name;
    const orig = card.querySelector("img.original");
    orig.alt = "original " + item.name;
    orig.addEventListener("error", () => {  // the browser cannot show it (not an image, TIFF, ...)
      const box = document.createElement("div");
      box.className = "noimg";
      box.textContent = "no preview";
      orig.replaceWith(box);
    }, { once: true });
    orig.src = item.url;
    return card;
  }

  function setDetail(item, text) {
    item.card.querySelector(".detail").textContent = text;
  }

  function verdictOf(item) {
    if (item.status === "failed") return "error";
    if (item.status !== "scored") return "pending";
    return item.score > state.threshold ? "anomalous" : "normal";
  }

  function render(item) {
    const card = item.card;
    const v = verdictOf(item);
    card.classList.toggle("pending", item.status === "pending");
    card.classList.toggle("failed", item.status === "failed");
    card.classList.toggle("anomalous", v === "anomalous");
    const badge = card.querySelector(".verdict");
    badge.className = "verdict " + v;
    badge.textContent = { anomalous: "anomalous", normal: "normal", error: "error", pending: "scoring…" }[v];
    const slot = card.querySelector(".overlay-slot");
    if (item.overlay && !card.querySelector("img.overlay")) {
      const img = document.createElement("img");
      img.className = "overlay";
      img.alt = "anomaly heatmap of " + item.name;
      img.src = item.overlay;
      slot.replaceWith(img);
    } else if (item.status === "failed" && slot) {
      slot.textContent = "—";
    }
    renderColorbar(card.querySelector(".cbar"), item.overlay ? item.heatmap : null);
    const fill = card.querySelector(".fill");
    const mark = card.querySelector(".mark");
    const bar = card.querySelector(".bar");
    const s = item.score;
    fill.style.width = s === null ? "0%" : (100 * Math.min(1, Math.max(0, s))).toFixed(1) + "%";
    mark.style.left = (100 * state.threshold).toFixed(1) + "%";
    bar.setAttribute("aria-label", s === null ? "no score" :
      "score " + s.toFixed(4) + ", threshold " + state.threshold.toFixed(3));
    card.querySelector(".score").textContent = s === null ? "–" : s.toFixed(4);
    if (item.status === "failed") {
      setDetail(item, item.error);
    } else if (item.status === "scored" && item.timing) {
      const t = item.timing;
      setDetail(item, (item.profile ? "profile " + item.profile + " · " : "") + "model " +
        Math.round(t.inference) + " ms (batch of " + t.batch_size + "), request " + Math.round(t.request_total) + " ms");
    }
  }

  // the overlay's colour scale: jet ramp from lo to hi (per-layer map scale), threshold marked
  function renderColorbar(cbar, h) {
    if (!cbar) return;
    cbar.hidden = !h;
    if (!h) return;
    const fmt = (v) => Number(v).toFixed(3);
    cbar.querySelector(".cbar-lo").textContent = fmt(h.lo);
    cbar.querySelector(".cbar-hi").textContent = fmt(h.hi);
    const mark = cbar.querySelector(".cbar-mark");
    const t = cbar.querySelector(".cbar-t");
    const span = h.hi - h.lo;
    const on = typeof h.threshold === "number" && span > 0 && h.threshold >= h.lo && h.threshold <= h.hi;
    mark.hidden = !on;
    t.textContent = on ? "T " + fmt(h.threshold) : "";
    if (on) mark.style.left = (100 * (h.threshold - h.lo) / span).toFixed(2) + "%";
    const how = { threshold: "centred on the threshold", full: "whole range", image: "this image's own range",
                  run: "the run's range" }[h.source] || h.source;
    cbar.title = "heatmap colours: " + (h.unit || "map value") + ", " + fmt(h.lo) + " (dark blue) to " +
      fmt(h.hi) + " (dark red), " + how;
  }

  function renderSummary() {
    const n = state.items.length;
    els.csv.disabled = !state.items.some((it) => it.status !== "pending");
    els.clear.disabled = n === 0;
    if (!n) { els.summary.textContent = "No images yet."; return; }
    const count = { anomalous: 0, normal: 0, error: 0, pending: 0 };
    for (const it of state.items) count[verdictOf(it)]++;
    els.summary.replaceChildren();
    const add = (text, cls) => {
      const b = document.createElement("b");
      if (cls) b.className = cls;
      b.textContent = text;
      els.summary.appendChild(b);
    };
    els.summary.append(n + (n === 1 ? " image: " : " images: "));
    add(count.anomalous + " anomalous", "bad");
    els.summary.append(", ");
    add(count.normal + " normal", "good");
    if (count.error) els.summary.append(", " + count.error + " failed");
    if (count.pending) els.summary.append(", " + count.pending + " scoring…");
  }

  function renderAll() {
    for (const it of state.items) render(it);
    renderSummary();
  }

  // ----------------------------------------------------------------------------------- CSV
  function csvCell(v) {
    const s = v === null || v === undefined ? "" : String(v);
    const safe = /^[=+\-@\t\r]/.test(s) ? "'" + s : s;  // no formulas when opened in a spreadsheet
    return /[",\n\r]/.test(safe) ? '"' + safe.replace(/"/g, '""') + '"' : safe;
  }

  function downloadCsv() {
    const rows = [["file", "score", "threshold", "verdict", "error"]];
    for (const it of state.items) {
      if (it.status === "pending") continue;
      const v = verdictOf(it);
      rows.push([it.name, it.score === null ? "" : it.score.toFixed(6), state.threshold.toFixed(6),
                 v === "error" ? "" : v, it.error || ""]);
    }
    const text = rows.map((r) => r.map(csvCell).join(",")).join("\r\n") + "\r\n";
    const blob = new Blob([text], { type: "text/csv;charset=utf-8" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "s2swclip_results.csv";
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }

  function clearAll() {
    for (const it of state.items) URL.revokeObjectURL(it.url);
    state.items = [];
    queue.length = 0;
    els.results.replaceChildren();
    showMessage("");
    renderSummary();
  }

  // -------------------------------------------------------------------------------- wiring
  els.input.addEventListener("change", () => { addFiles(els.input.files); els.input.value = ""; });
  ["dragenter", "dragover"].forEach((ev) => els.drop.addEventListener(ev, (e) => {
    e.preventDefault();
    els.drop.classList.add("dragover");
  }));
  ["dragleave", "drop"].forEach((ev) => els.drop.addEventListener(ev, (e) => {
    e.preventDefault();
    els.drop.classList.remove("dragover");
  }));
  els.drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); els.input.click(); }
  });
  // a file dropped next to the drop zone must not make the browser navigate away
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => { e.preventDefault(); addFiles(e.dataTransfer && e.dataTransfer.files); });
  els.csv.addEventListener("click", downloadCsv);
  els.clear.addEventListener("click", clearAll);

  setThreshold(els.slider.value);
  els.tokenForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = els.tokenInput.value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    els.tokenInput.value = "";
    loadModel();
  });
  loadModel();
})();
