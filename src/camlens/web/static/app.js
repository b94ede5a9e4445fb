// The camlens page: upload an image, show each explained class's map over it.  The overlay is blended in the
// browser (the heatmap PNG drawn over the image at the slider's opacity), so the slider needs no new request.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, result: null, busy: false, again: false };

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function addOption(select, value, text, selected = false) {
  const option = document.createElement("option");
  option.value = value;
  option.textContent = text;
  option.selected = selected;
  select.append(option);
}

async function loadInfo() {
  try {
    const response = await fetch("/api/info");
    const info = await response.json();
    const arch = info.arch !== info.model ? ` (${info.arch})` : "";
    $("model").textContent = `${info.model}${arch} · ${info.classes.length} classes`;
    for (const m of info.methods) addOption($("method"), m.name, m.name, m.name === info.default_method);
    for (const layer of info.layers) addOption($("layer"), layer, layer);
    $("target-hint").textContent = `instead of top-k: ${info.targets}`;
    const top = Math.min(info.limits.max_topk, info.classes.length);
    $("topk").max = top;
    if (Number($("topk").value) > top) $("topk").value = top;
  } catch (err) {
    setStatus(`cannot reach the server: ${err.message}`, true);
  }
}

function opacity() {
  return Number($("opacity").value) / 100;
}

function applyOpacity() {
  document.documentElement.style.setProperty("--opacity", String(opacity()));
  $("opacity-value").textContent = `${$("opacity").value}%`;
}

function applyBoxes() {
  $("results").classList.toggle("no-box", !$("boxes").checked);
}

function chooseFile(file) {
  if (!file) return;
  state.file = file;
  $("file-name").textContent = file.name;
  explain();
}

async function explain() {
  if (!state.file) return;
  if (state.busy) {
    state.again = true; // settings changed while a request was running: run once more when it is done
    return;
  }
  state.busy = true;
  setStatus("Explaining...");
  const form = new FormData();
  form.append("file", state.file);
  const params = new URLSearchParams({ method: $("method").value, topk: $("topk").value, layer: $("layer").value });
  const target = $("target").value.trim();
  if (target) params.set("target", target);
  try {
    const started = performance.now();
    const response = await fetch(`/api/explain?${params}`, { method: "POST", body: form });
    const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (!response.ok) {
      clearResults(); // the old results belong to another image: do not leave them under this one's error
      setStatus(body.error || `HTTP ${response.status}`, true);
    } else {
      state.result = body;
      render(body);
      const ms = Math.round(performance.now() - started);
      const nothing = body.explained.length ? "" : " · the target explains nothing in this image (no matching box or label)";
      setStatus(`${body.method} at ${body.layer} · ${body.image_size[0]}×${body.image_size[1]} px · ${ms} ms${nothing}`);
    }
  } catch (err) {
    clearResults();
    setStatus(`request failed: ${err.message}`, true);
  } finally {
    state.busy = false;
    if (state.again) {
      state.again = false;
      explain();
    }
  }
}

function percent(score) {
  return `${(100 * score).toFixed(1)}%`;
}

// A constant map has no region above 20% of its max: the API gives the empty box [0, 0, 0, 0].
function hasBox(e) {
  return e.box[2] > e.box[0] && e.box[3] > e.box[1];
}

function clearResults() {
  state.result = null;
  $("prediction-list").replaceChildren();
  $("predictions").hidden = true;
  $("results").replaceChildren();
}

function render(res) {
  const list = $("prediction-list");
  list.replaceChildren();
  for (const p of res.predictions) {
    const item = document.createElement("li");
    const label = document.createElement("span");
    label.className = "pred-label";
    label.textContent = p.label;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(0.5, 100 * p.score)}%`;
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = percent(p.score);
    item.append(label, bar, pct);
    list.append(item);
  }
  $("predictions").hidden = res.predictions.length === 0;

  const [width, height] = res.image_size;
  const cards = res.explained.map((e) => {
    const card = $("card-template").content.firstElementChild.cloneNode(true);
    card.querySelector(".photo").src = res.image;
    card.querySelector(".overlay").src = e.heatmap;
    const box = card.querySelector(".box");
    if (hasBox(e)) {
      const [x0, y0, x1, y1] = e.box;
      Object.assign(box.style, {
        left: `${(100 * x0) / width}%`, top: `${(100 * y0) / height}%`,
        width: `${(100 * (x1 - x0)) / width}%`, height: `${(100 * (y1 - y0)) / height}%`,
      });
    } else {
      box.remove();
    }
    card.querySelector(".label").textContent = e.label;
    // a probability as a percentage; a target's raw score (a logit, a sum over pixels) as it is
    const score = e.score === null ? "" : e.score >= 0 && e.score <= 1 ? percent(e.score) : e.score.toFixed(3);
    card.querySelector(".score").textContent = score;
    const boxText = hasBox(e) ? `box [${e.box.map((v) => Math.round(v)).join(", ")}]` : "no box";
    card.querySelector(".meta").textContent = `class ${e.class} · map ${e.map_size[0]}×${e.map_size[1]} · ${boxText}`;
    card.querySelector(".download").addEventListener("click", () => download(res, e));
    return card;
  });
  $("results").replaceChildren(...cards);
}

function loadImage(src) {
  const img = new Image();
  img.src = src;
  return img.decode().then(() => img);
}

// The PNG as shown: image, heatmap at the current opacity, and the box when it is switched on.
async function download(res, e) {
  const [w, h] = res.display_size;
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const [photo, heat] = await Promise.all([loadImage(res.image), loadImage(e.heatmap)]);
  ctx.drawImage(photo, 0, 0, w, h);
  ctx.globalAlpha = opacity();
  ctx.drawImage(heat, 0, 0, w, h);
  ctx.globalAlpha = 1;
  if (hasBox(e) && $("boxes").checked) {
    const sx = w / res.image_size[0];
    const sy = h / res.image_size[1];
    const [x0, y0, x1, y1] = e.box;
    ctx.strokeStyle = "#39ff14";
    ctx.lineWidth = Math.max(2, Math.round(w / 200));
    ctx.strokeRect(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy);
  }
  canvas.toBlob((blob) => {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `camlens-${res.method}-${e.class}-${e.label.replace(/[^\w.-]+/g, "_")}.png`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }, "image/png");
}

function setup() {
  $("file").addEventListener("change", () => chooseFile($("file").files[0]));
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (ev) => {
      ev.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    chooseFile(ev.dataTransfer.files[0]);
  });
  for (const id of ["method", "layer", "topk", "target"]) $(id).addEventListener("change", explain);
  $("opacity").addEventListener("input", applyOpacity);
  $("boxes").addEventListener("change", applyBoxes);
  applyOpacity();
  applyBoxes();
  loadInfo();
}

setup();
