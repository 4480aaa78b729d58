// Product profiles on the inspection page (shown when the service runs with --profiles DIR):
// a selector (uploads are then scored with that profile: /v1/predict?profile=NAME), the
// profile's reference thumbnails and threshold, and the "new product" flow: good images ->
// bank built (progress from /v1/profiles/NAME/progress) -> test parts on the main drop zone ->
// optional calibration at a false-alarm rate -> save (or discard).
"use strict";

(function () {
  const $ = (sel) => document.querySelector(sel);
  const TOKEN_KEY = "s2swclip-token";  // the same session token as app.js
  const els = {
    section: $("#profiles"), select: $("#profile-select"), info: $("#profile-info"), thumbs: $("#profile-thumbs"),
    newButton: $("#new-profile-button"), form: $("#new-profile"), name: $("#np-name"), drop: $("#np-drop"),
    files: $("#np-files"), count: $("#np-count"), build: $("#np-build"), progress: $("#np-progress"),
    status: $("#np-status"), cal: $("#np-cal"), fpr: $("#np-fpr"), calibrate: $("#np-calibrate"),
    save: $("#np-save"), discard: $("#np-discard"), threshold: $("#threshold-value"),
  };
  window.s2swProfile = { name: null };
  let goodFiles = [];
  let draft = null;  // name of the profile being made in the new-product flow

  function api(path, options) {
    const opts = Object.assign({}, options || {});
    const t = sessionStorage.getItem(TOKEN_KEY);
    opts.headers = Object.assign({}, opts.headers || {}, t ? { Authorization: "Bearer " + t } : {});
    return fetch(path, opts);
  }
  async function json(r) { return r.json().catch(() => ({})); }
  const enc = encodeURIComponent;

  // ------------------------------------------------------------------------------ selector
  async function loadProfiles(selected) {
    const r = await api("/v1/profiles");
    if (!r.ok) { els.section.hidden = true; return; }  // 404: no --profiles; 401: app.js asks for the token
    const body = await json(r);
    els.section.hidden = false;
    const keep = selected !== undefined ? selected : els.select.value;
    els.select.replaceChildren(new Option("none: the service's model", ""));
    for (const p of body.profiles) els.select.add(new Option(p.name + " (v" + p.version + ")", p.name));
    for (const [name, problem] of Object.entries(body.unusable || {})) {
      const o = new Option(name + " (unusable)", "");
      o.disabled = true;
      o.title = problem;
      els.select.add(o);
    }
    els.select.value = body.profiles.some((p) => p.name === keep) ? keep : "";
    await choose(els.select.value);
  }

  async function choose(name) {
    window.s2swProfile = { name: name || null };
    els.thumbs.replaceChildren();
    if (!name) { els.info.textContent = "Uploads are scored with the service's model."; return; }
    const r = await api("/v1/profiles/" + enc(name));
    if (!r.ok) { els.info.textContent = (await json(r)).detail || "HTTP " + r.status; return; }
    const p = await json(r);
    const cal = p.calibration;
    const thr = typeof p.threshold === "number" ? "threshold " + p.threshold.toFixed(4) +
      (cal ? " (calibrated on " + cal.n + " good images, false-alarm rate ≤ " + cal.bound.toFixed(3) +
             (cal.stale ? "; references changed since: recalibrate" : "") + ")" : "") : "no threshold";
    els.info.textContent = "Profile " + p.name + " · version " + p.version + " · " + p.references +
      " reference image" + (p.references === 1 ? "" : "s") + " · few-shot weight " + p.few_shot_weight + " · " + thr;
    els.info.dataset.version = String(p.version);
    (p.thumbnails || []).forEach((b64, i) => {
      const img = document.createElement("img");
      img.src = "data:image/png;base64," + b64;
      img.alt = "reference " + (i + 1) + " of " + p.name;
      els.thumbs.appendChild(img);
    });
    if (typeof p.threshold === "number") {  // the slider follows the profile's threshold
      els.threshold.value = p.threshold.toFixed(6);
      els.threshold.dispatchEvent(new Event("input"));
      $("#threshold-note").textContent = "Threshold of profile " + p.name + ": " + p.threshold.toFixed(4) +
        ". Moving the slider updates verdicts here only, without re-running the model.";
    }
  }
  els.select.addEventListener("change", () => choose(els.select.value));

  // ------------------------------------------------------------------------ new product flow
  function setGood(files) {
    goodFiles = Array.from(files || []).filter((f) => !f.type || f.type.startsWith("image/"));
    els.count.textContent = goodFiles.length + " good image" + (goodFiles.length === 1 ? "" : "s") + " ready";
  }
  function stage(busy) {
    els.build.disabled = busy || draft !== null;
    els.calibrate.disabled = busy || draft === null;
    els.save.disabled = busy || draft === null;
    els.discard.disabled = busy || draft === null;
  }

  async function build() {
    const name = els.name.value.trim();
    if (!name || !goodFiles.length) { els.status.textContent = "give a name and drop good images first"; return; }
    const form = new FormData();
    form.append("name", name);
    for (const f of goodFiles) form.append("files", f, f.name);
    stage(true);
    els.progress.hidden = false;
    els.progress.removeAttribute("value");  // indeterminate while uploading
    els.status.textContent = "uploading " + goodFiles.length + " images…";
    let done = false;
    const poll = async () => {
      while (!done) {
        const r = await api("/v1/profiles/" + enc(name) + "/progress").catch(() => null);
        if (r && r.ok) {
          const p = await json(r);
          if (p.total) {
            els.progress.max = p.total;
            els.progress.value = p.done;
            els.status.textContent = "building the bank: " + p.done + " of " + p.total + " images";
          }
        }
        await new Promise((res) => setTimeout(res, 150));
      }
    };
    poll();
    const r = await api("/v1/profiles", { method: "POST", body: form }).catch((e) => ({ ok: false, e }));
    done = true;
    els.progress.hidden = true;
    const body = r.json ? await json(r) : { detail: "network error" };
    if (!r.ok) { els.status.textContent = body.detail || "HTTP " + r.status; stage(false); return; }
    draft = name;
    els.status.textContent = "bank built: " + body.references + " references (version " + body.version +
      "). Drop test parts above to check it.";
    stage(false);
    await loadProfiles(name);
  }

  async function calibrate() {
    const files = Array.from(els.cal.files || []);
    if (!files.length) { els.status.textContent = "choose good images to calibrate with"; return; }
    const form = new FormData();
    form.append("fpr", String(els.fpr.value || "0.05"));
    for (const f of files) form.append("files", f, f.name);
    stage(true);
    els.status.textContent = "calibrating on " + files.length + " images…";
    const r = await api("/v1/profiles/" + enc(draft) + "/calibration", { method: "POST", body: form });
    const body = await json(r);
    els.status.textContent = r.ok ? "threshold " + body.threshold.toFixed(4) + " (version " + body.version + ")"
                                  : (body.detail || "HTTP " + r.status);
    stage(false);
    await loadProfiles(draft);
  }

  function finish(message) {
    draft = null;
    goodFiles = [];
    els.form.hidden = true;
    els.form.reset();
    els.count.textContent = "a few images of good parts";
    els.status.textContent = message;
    stage(false);
  }

  els.newButton.addEventListener("click", () => { els.form.hidden = false; els.name.focus(); stage(false); });
  els.files.addEventListener("change", () => setGood(els.files.files));
  ["dragenter", "dragover"].forEach((ev) => els.drop.addEventListener(ev, (e) => {
    e.preventDefault(); e.stopPropagation(); els.drop.classList.add("dragover");
  }));
  ["dragleave", "drop"].forEach((ev) => els.drop.addEventListener(ev, (e) => {
    e.preventDefault(); e.stopPropagation(); els.drop.classList.remove("dragover");
    if (ev === "drop") setGood(e.dataTransfer && e.dataTransfer.files);
  }));
  els.build.addEventListener("click", build);
  els.calibrate.addEventListener("click", calibrate);
  els.save.addEventListener("click", () => {
    const v = els.info.dataset.version;
    finish("profile " + draft + " saved (version " + v + ")");
    els.info.textContent += " · saved";
  });
  els.discard.addEventListener("click", async () => {
    await api("/v1/profiles/" + enc(draft), { method: "DELETE" });
    finish("");
    await loadProfiles("");
  });
  $("#token-form").addEventListener("submit", () => setTimeout(() => loadProfiles(), 0));
  loadProfiles();
})();
