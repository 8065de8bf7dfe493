// charrnn serve: the page. Model output is untrusted text: it only ever reaches the page
// through textContent / text nodes (never innerHTML), and the server's CSP forbids inline script.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

// A character as a label: whitespace made visible.
function showChar(ch) {
  return { "\n": "\u21b5", " ": "\u2423", "\t": "\u21e5", "\r": "\\r" }[ch] ?? ch;
}

function setStatus(id, message, isError = false) {
  const node = $(id);
  node.textContent = message;
  node.classList.toggle("error", isError);
}

async function postJSON(url, body) {
  const response = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

let info = null;

// A labelled run's label (the picker in the header), sent with every generation and every look inside; else null.
function currentLabel() {
  return info && info.labels.length ? $("label").value : null;
}

// ---- tabs ----------------------------------------------------------------------------------
function showView(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.setAttribute("aria-selected", String(tab.dataset.view === name));
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== `view-${name}`;
  if (name === "training") loadTraining();
}

// ---- generate --------------------------------------------------------------------------------
let controller = null;

function numberOrNull(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

async function generate(event) {
  event.preventDefault();
  if (controller) return;
  const body = {
    prime: $("prime").value, length: Number($("length").value), temperature: Number($("temperature").value),
    top_k: numberOrNull("top-k"), top_p: numberOrNull("top-p"), seed: numberOrNull("seed"), greedy: $("greedy").checked,
    label: currentLabel(),
  };
  const output = $("gen-output");
  output.replaceChildren();
  controller = new AbortController();
  $("generate").disabled = true; $("stop").disabled = false; $("to-inspect").disabled = true;
  setStatus("gen-status", "generating\u2026");
  const started = performance.now();
  let first = null, count = 0, ended = "stopped";
  try {
    const response = await fetch("/api/generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new Error(data.error || `HTTP ${response.status}`);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const { name, data } = parseEvent(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
        if (name === "prime") output.append(el("span", { class: "prime" }, data.text));
        else if (name === "text") {
          if (first === null) first = performance.now() - started;
          count += [...data.text].length;
          output.append(document.createTextNode(data.text));
          setStatus("gen-status", `${count} characters; first after ${first.toFixed(0)} ms`);
        } else if (name === "end") ended = data.reason;
        else if (name === "error") throw new Error(data.error);
      }
    }
    setStatus("gen-status", `${ended}: ${count} characters` + (first === null ? "" : `; first after ${first.toFixed(0)} ms`));
  } catch (err) {
    if (err.name === "AbortError") setStatus("gen-status", `stopped after ${count} characters`);
    else setStatus("gen-status", err.message, true);
  } finally {
    controller = null;
    $("generate").disabled = false; $("stop").disabled = true; $("to-inspect").disabled = output.textContent === "";
  }
}

function parseEvent(block) {
  let name = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) name = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  return { name, data: JSON.parse(data || "{}") };
}

// ---- look inside -----------------------------------------------------------------------------
let shown = null; // the last /api/inspect answer

function inspectRequest() {
  return { text: $("inspect-input").value, layer: Number($("layer").value), state: $("state").value, unit: Number($("unit").value),
           label: currentLabel() };
}

async function showUnit() {
  const request = inspectRequest();
  if (!request.text) { setStatus("inspect-status", "type or paste a text first", true); return; }
  setStatus("inspect-status", "reading the text\u2026");
  try {
    shown = await postJSON("/api/inspect", request);
  } catch (err) { setStatus("inspect-status", err.message, true); return; }
  const values = shown.values;
  const scale = Math.max(1e-6, ...values.map(Math.abs));
  const box = $("inspect-text");
  box.replaceChildren();
  shown.chars.forEach((ch, i) => {
    const span = el("span", { "data-index": String(i) }, ch);
    const v = values[i] / (request.state === "h" ? 1 : scale); // h lies in [-1, 1]; c is scaled to its largest
    span.style.backgroundColor = v >= 0 ? `rgba(220, 60, 40, ${Math.min(1, v).toFixed(3)})` : `rgba(40, 100, 220, ${Math.min(1, -v).toFixed(3)})`;
    span.title = `${values[i].toFixed(3)}`;
    box.append(span);
  });
  setStatus("inspect-status", `layer ${shown.layer}, ${shown.state === "c" ? "cell" : "hidden"} state, unit ${shown.unit}: ` +
    `red positive, blue negative (largest |value| ${scale.toFixed(3)})`);
}

function showPrediction(event) {
  const span = event.target.closest("span[data-index]");
  if (!span || !shown) return;
  for (const old of document.querySelectorAll("#inspect-text span.current")) old.classList.remove("current");
  span.classList.add("current");
  const i = Number(span.dataset.index);
  const rows = shown.predictions[i].map(([ch, p]) =>
    el("tr", {}, el("td", {}, el("code", {}, showChar(ch))), el("td", {}, p.toFixed(3)),
      el("td", {}, (() => { const bar = el("div", { class: "bar" }); bar.style.width = `${(p * 100).toFixed(1)}%`; return bar; })())));
  $("prediction").replaceChildren(
    el("p", {}, "after ", el("code", {}, showChar(shown.chars[i])), ` (position ${i}, activation ${shown.values[i].toFixed(3)}):`),
    el("table", { class: "top5" }, ...rows));
}

async function findUnits() {
  const text = $("inspect-input").value;
  setStatus("inspect-status", "ranking units\u2026");
  let result;
  try { result = await postJSON("/api/units", { text, top: 5, label: currentLabel() }); } catch (err) { setStatus("inspect-status", err.message, true); return; }
  const box = $("units");
  box.replaceChildren(el("h3", { class: "units-title" }, "Units that track features of this text (Pearson r with each feature, strongest |r| first; click one to colour the text by it)"));
  for (const feature of result.features) {
    const units = result.by_feature[feature] || [];
    const group = el("div", { class: "feature" }, el("h3", {}, feature));
    box.append(group);
    if (!units.length) { group.append(el("p", { class: "muted" }, "absent from this text")); continue; }
    const table = el("table", {}, el("tr", {}, el("th", {}, "layer"), el("th", {}, "state"), el("th", {}, "unit"), el("th", {}, "r")));
    for (const u of units) {
      const row = el("tr", { class: "pick" }, el("td", {}, u.layer), el("td", {}, u.state), el("td", {}, u.unit), el("td", {}, u.r.toFixed(3)));
      row.addEventListener("click", () => { $("layer").value = u.layer; $("state").value = u.state; $("unit").value = u.unit; showUnit(); });
      table.append(row);
    }
    group.append(table);
  }
  setStatus("inspect-status", "ranked; click a unit to colour the text by it");
}

// ---- training --------------------------------------------------------------------------------
async function loadTraining() {
  try {
    const metrics = await (await fetch("/api/metrics")).json();
    drawChart(metrics);
    setStatus("train-status", metrics.rows ? `${metrics.rows} rows in metrics.jsonl; hover a validation point for its value`
                                           : "no metrics.jsonl in this run");
  } catch (err) { setStatus("train-status", err.message, true); }
  const box = $("samples");
  if (box.childElementCount) return;
  box.append(el("p", { class: "muted" }, "drawing samples\u2026"));
  try {
    const data = await (await fetch("/api/samples")).json();
    box.replaceChildren(...(data.samples || []).flatMap((s, i) => [
      ...(data.labels ? [el("p", { class: "muted" }, `label ${data.labels[i]}`)] : []), el("pre", { class: "output sample" }, s)]));
    if (data.error) box.append(el("p", { class: "status error" }, data.error));
  } catch (err) { box.replaceChildren(el("p", { class: "status error" }, err.message)); }
}

// The loss chart: an SVG drawn here (no library, no network), with "nice" ticks (1, 2, 2.5 or 5 times a
// power of ten), grid lines, both axes titled with their units, nats/char on the left and bits/char on the right.
const LN2 = Math.log(2);

function niceStep(span, count) {
  const raw = span / Math.max(1, count), power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw * 0.999);
  return step || 10 * power;
}

function ticks(lo, hi, count, minStep = 0) {
  if (!(hi > lo)) { hi = lo + 1; lo = lo - 1; }
  const step = Math.max(minStep, niceStep(hi - lo, count)), values = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) values.push(Number(v.toPrecision(12)));
  return { values, step };
}

function decimals(step) {
  return Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9) + (String(step).includes("2.5") ? 1 : 0)));
}

function iterLabels(values, step) {
  // one unit for the whole axis: 1,500 and 2,000; 50k and 100k; 1.5M and 2M
  const top = values[values.length - 1];
  const [scale, suffix] = top >= 1e6 && step >= 1e5 ? [1e6, "M"] : top >= 1e5 && step >= 1e3 ? [1e3, "k"] : [1, ""];
  return values.map((v) => (v === 0 ? "0" : `${(v / scale).toLocaleString("en-US", { maximumFractionDigits: 2 })}${suffix}`));
}

function drawChart({ train, val }) {
  const ns = "http://www.w3.org/2000/svg", W = 760, H = 340;
  const m = { left: 64, right: 64, top: 34, bottom: 48 };   // room for tick labels and axis titles
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "training and validation loss against iterations");
  const add = (tag, attrs, text, parent = svg) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    parent.append(node); return node;
  };
  const points = train.concat(val);
  if (!points.length) {
    add("text", { x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle" }, "no loss recorded yet");
    $("chart").replaceChildren(svg);
    return;
  }
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const xt = ticks(0, Math.max(...xs, 1), 8, 1);    // iterations are whole numbers
  const yt0 = ticks(Math.min(...ys), Math.max(...ys), 6);
  const y0 = Math.floor(Math.min(...ys) / yt0.step) * yt0.step, y1 = Math.ceil(Math.max(...ys) / yt0.step) * yt0.step;
  const yt = ticks(y0, y1 > y0 ? y1 : y0 + yt0.step, 6);
  const [x0, x1] = [0, xt.values[xt.values.length - 1] < Math.max(...xs) ? xt.values[xt.values.length - 1] + xt.step
                                                                             : xt.values[xt.values.length - 1]];
  const [ylo, yhi] = [yt.values[0], yt.values[yt.values.length - 1]];
  const sx = (x) => m.left + (x - x0) / ((x1 - x0) || 1) * (W - m.left - m.right);
  const sy = (y) => H - m.bottom - (y - ylo) / ((yhi - ylo) || 1) * (H - m.top - m.bottom);
  const [left, right, top, bottom] = [m.left, W - m.right, m.top, H - m.bottom];

  const grid = add("g", { class: "grid" }), axes = add("g", { class: "axes" });
  for (const v of yt.values) {
    const y = sy(v).toFixed(1);
    add("line", { x1: left, y1: y, x2: right, y2: y }, undefined, grid);
    add("line", { x1: left - 5, y1: y, x2: left, y2: y, class: "tick" }, undefined, axes);
    add("text", { x: left - 8, y, dy: "0.32em", "text-anchor": "end", class: "tick-label y" }, v.toFixed(decimals(yt.step)), axes);
  }
  const xValues = xt.values.concat(x1 > xt.values[xt.values.length - 1] ? [x1] : []), xLabels = iterLabels(xValues, xt.step);
  xValues.forEach((v, k) => {
    const x = sx(v).toFixed(1);
    add("line", { x1: x, y1: top, x2: x, y2: bottom }, undefined, grid);
    add("line", { x1: x, y1: bottom, x2: x, y2: bottom + 5, class: "tick" }, undefined, axes);
    add("text", { x, y: bottom + 18, "text-anchor": "middle", class: "tick-label x" }, xLabels[k], axes);
  });
  // the same losses in bits per character, on the right
  const bt = ticks(ylo / LN2, yhi / LN2, 6);
  for (const b of bt.values.filter((b) => b * LN2 >= ylo - 1e-9 && b * LN2 <= yhi + 1e-9)) {
    const y = sy(b * LN2).toFixed(1);
    add("line", { x1: right, y1: y, x2: right + 5, y2: y, class: "tick" }, undefined, axes);
    add("text", { x: right + 8, y, dy: "0.32em", "text-anchor": "start", class: "tick-label bits" }, b.toFixed(decimals(bt.step)), axes);
  }
  add("line", { x1: left, y1: bottom, x2: right, y2: bottom, class: "axis" }, undefined, axes);
  add("line", { x1: left, y1: top, x2: left, y2: bottom, class: "axis" }, undefined, axes);
  add("line", { x1: right, y1: top, x2: right, y2: bottom, class: "axis" }, undefined, axes);
  add("text", { x: (left + right) / 2, y: H - 8, "text-anchor": "middle", class: "axis-title x" }, "iteration (optimizer steps)", axes);
  add("text", { x: 0, y: 0, transform: `translate(16 ${(top + bottom) / 2}) rotate(-90)`, "text-anchor": "middle",
                class: "axis-title y" }, "loss (nats per character)", axes);
  add("text", { x: 0, y: 0, transform: `translate(${W - 14} ${(top + bottom) / 2}) rotate(90)`, "text-anchor": "middle",
                class: "axis-title bits" }, "bits per character", axes);

  const path = (series) => series.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
  if (train.length) add("polyline", { class: "train", points: path(train) });
  if (val.length) add("polyline", { class: "val", points: path(val) });
  for (const [x, y] of val) {
    const dot = add("circle", { cx: sx(x).toFixed(1), cy: sy(y).toFixed(1), r: 3.5, class: "val-point" });
    add("title", {}, `iteration ${x.toLocaleString("en-US")}: validation ${y.toFixed(4)} nats/char (${(y / LN2).toFixed(4)} bits/char)`, dot);
  }
  const legend = add("g", { class: "legend", transform: `translate(${right - 210} ${top - 14})` });
  add("line", { x1: 0, y1: 0, x2: 22, y2: 0, class: "train" }, undefined, legend);
  add("text", { x: 28, y: 0, dy: "0.32em", class: "legend-train" }, "train", legend);
  add("line", { x1: 80, y1: 0, x2: 102, y2: 0, class: "val" }, undefined, legend);
  add("circle", { cx: 91, cy: 0, r: 3.5, class: "val-point" }, undefined, legend);
  add("text", { x: 108, y: 0, dy: "0.32em", class: "legend-val" }, "validation", legend);
  $("chart").replaceChildren(svg);
}

// ---- start -----------------------------------------------------------------------------------
async function start() {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showView(tab.dataset.view));
  $("gen-form").addEventListener("submit", generate);
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("to-inspect").addEventListener("click", () => {
    $("inspect-input").value = Array.from($("gen-output").textContent).slice(0, info.limits.inspect_chars).join("");
    showView("inspect");
    showUnit();
  });
  $("show").addEventListener("click", showUnit);
  $("find-units").addEventListener("click", findUnits);
  $("inspect-text").addEventListener("mouseover", showPrediction);
  info = await (await fetch("/api/info")).json();
  $("model-info").textContent = `${info.run}: ${info.layers}\u00d7${info.hidden} ${info.cell}, ${info.vocab.length} characters, --impl ${info.impl}`;
  if (info.labels.length) {  // a run trained with labels: everything it writes or reads is under the one picked here
    $("label").replaceChildren(...info.labels.map((name) => el("option", { value: name }, name)));
    $("label-field").hidden = false;
  }
  $("layer").replaceChildren(...Array.from({ length: info.layers }, (_, k) => el("option", { value: String(k) }, k)));
  $("state").replaceChildren(...info.states.map((s) => el("option", { value: s }, s === "c" ? "cell (c)" : "hidden (h)")));
  $("unit").max = String(info.hidden - 1);
  $("length").max = String(info.limits.length);
  document.body.dataset.ready = "1";
}

start();
