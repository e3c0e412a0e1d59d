"use strict";
// The inpainting editor: one canvas shows the current state, strokes are painted over it, and
// each fill the server makes becomes the canvas, so edits stack. The photo is sent once per
// upload; an Inpaint sends a PNG of the strokes and the number of fills the canvas holds, and
// gets back the pixels of the filled box.

const config = JSON.parse(document.getElementById("config").textContent);
const $ = (id) => document.getElementById(id);
const view = $("view"), stage = $("stage"), cursor = $("cursor");
const original = $("original"), image = $("image"), mask = $("mask");
const imageCtx = image.getContext("2d", {willReadFrequently: true});
const maskCtx = mask.getContext("2d");
const status = $("status"), brush = $("brush"), download = $("download");
const methodSelect = $("method"), inpaintButton = $("inpaint");
const STROKE_COLOUR = "#ff00ff";
const DECODE = {premultiplyAlpha: "none", colorSpaceConversion: "none"};

// The photo on the server (null before the first upload) and what the canvas knows of it:
// fills[i] holds the pixels of fill i's box before and after it; `shown` fills are drawn.
let doc = null;
let fills = [];
let shown = 0;
// The editing history: states {version: fills made, strokes: painted since}, `at` the current.
let history = [{version: 0, strokes: []}];
let at = 0;
let generation = 0;   // counts installed photos: answers for an older photo are dropped
let opening = 0;      // counts upload requests: only the latest one is installed
let filling = null;   // the generation an Inpaint is running for, else null
let stroke = null;    // the stroke being painted
let pan = null;       // the drag that pans the view
let spaceHeld = false;
let zoom = {scale: 1, x: 0, y: 0};
window.editorTiming = null;  // {clickSeconds, serverSeconds} of the last fill, for benchmarks

function say(text, kind = "") {
  status.textContent = text;
  status.className = kind;
}

function errorText(err) {
  const text = err instanceof TypeError ? "the server did not answer (is it running?)" : err.message;
  return text.startsWith("Error") ? text : `Error: ${text}`;
}

async function answerOf(response) {
  let body;
  try {
    body = await response.json();
  } catch {
    throw new Error(`the server answered ${response.status} without a message`);
  }
  if (!response.ok) throw new Error(body.error || `the server answered ${response.status}`);
  return body;
}

// ------------------------------------------------------------------------------ methods

for (const m of config.methods) methodSelect.add(new Option(m.toy ? `${m.label} (toy)` : m.label, m.label));
methodSelect.value = config.selected;
for (const name of config.examples) $("example").add(new Option(name, name));
const toys = config.methods.filter((m) => m.toy).map((m) => m.label);
if (toys.length) {
  $("notes").textContent = `Toy: ${toys.join(", ")} (a demo-sized network: its fills are rough` +
    ` on real photos; ${config.selected} is preselected). `;
}

// ------------------------------------------------------------------------------ photos

async function openPhoto(request, label) {
  const mine = ++opening;
  say(`Opening ${label}…`, "busy");
  try {
    const info = await answerOf(await request());
    const response = await fetch(`api/photo/${info.document}`);
    if (!response.ok) await answerOf(response);
    const bitmap = await createImageBitmap(await response.blob(), DECODE);
    if (mine !== opening) return;  // a later upload wins
    if (doc) fetch(`api/photo/${doc.key}`, {method: "DELETE"}).catch(() => {});
    generation++;
    doc = {key: info.document, name: info.name, width: info.width, height: info.height};
    for (const canvas of [original, image, mask]) {
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
    }
    stage.style.width = `${bitmap.width}px`;
    stage.style.height = `${bitmap.height}px`;
    original.getContext("2d").drawImage(bitmap, 0, 0);
    imageCtx.drawImage(bitmap, 0, 0);
    fills = [];
    shown = 0;
    history = [{version: 0, strokes: []}];
    at = 0;
    stroke = null;
    filling = null;
    setBrush(config.brush || Math.max(4, Math.round(Math.max(bitmap.width, bitmap.height) / 30)));
    fit();
    render();
    say(info.message);
  } catch (err) {
    if (mine === opening) say(errorText(err), "error");
  }
}

function uploadFile(file) {
  if (!file) return;
  openPhoto(() => fetch(`api/photo?name=${encodeURIComponent(file.name)}`,
                        {method: "POST", body: file}), file.name);
}

$("photo").addEventListener("change", (e) => {
  uploadFile(e.target.files[0]);
  e.target.value = "";  // the same file can be chosen again
});
$("example").addEventListener("change", (e) => {
  const name = e.target.value;
  if (name) openPhoto(() => fetch(`api/example?name=${encodeURIComponent(name)}`, {method: "POST"}), name);
});
// A mask file (white = hole, the photo's size) adds its holes as one stroke.
async function addMaskFile(file) {
  if (!doc) return say("Error: upload a photo or pick an example first", "error");
  try {
    const bitmap = await createImageBitmap(file, DECODE);
    if (bitmap.width !== doc.width || bitmap.height !== doc.height) {
      throw new Error(`mask '${file.name}' is ${bitmap.width}x${bitmap.height} but the photo is ` +
                      `${doc.width}x${doc.height}: the mask must have the photo's size`);
    }
    const canvas = document.createElement("canvas");
    canvas.width = mask.width;
    canvas.height = mask.height;
    const ctx = canvas.getContext("2d", {willReadFrequently: true});
    ctx.imageSmoothingEnabled = false;  // nearest, as the server scales strokes
    ctx.drawImage(bitmap, 0, 0, mask.width, mask.height);
    const pixels = ctx.getImageData(0, 0, mask.width, mask.height), d = pixels.data;
    const box = [Infinity, Infinity, -Infinity, -Infinity];
    for (let i = 0; i < d.length; i += 4) {
      const hole = d[i] + d[i + 1] + d[i + 2] >= 3 * 128 && d[i + 3] >= 128;
      d[i] = d[i + 1] = d[i + 2] = 255;
      d[i + 3] = hole ? 255 : 0;
      if (hole) {
        const x = (i / 4) % mask.width, y = Math.floor(i / 4 / mask.width);
        box[0] = Math.min(box[0], x);
        box[1] = Math.min(box[1], y);
        box[2] = Math.max(box[2], x + 1);
        box[3] = Math.max(box[3], y + 1);
      }
    }
    if (box[0] === Infinity) throw new Error(`mask '${file.name}' has no white pixel (white = hole)`);
    ctx.putImageData(pixels, 0, 0);
    const s = state();
    push({version: s.version, strokes: [...s.strokes, {image: canvas, box}]});
    say(`Mask '${file.name}' added: press Inpaint.`);
    if ($("auto").checked) inpaint();
  } catch (err) {
    say(errorText(err), "error");
  }
}

$("mask-file").addEventListener("change", (e) => {
  if (e.target.files[0]) addMaskFile(e.target.files[0]);
  e.target.value = "";
});
view.addEventListener("dragover", (e) => e.preventDefault());
view.addEventListener("drop", (e) => {
  e.preventDefault();
  uploadFile(e.dataTransfer.files[0]);
});

// ------------------------------------------------------------------------------ drawing

function state() {
  return history[at];
}

// A stroke: {size, points} painted with the brush, or {image, box} from a mask file (its holes
// opaque white, `box` their bounds).
function paint(ctx, s, colour) {
  if (s.image) {
    s.tinted = s.tinted || {};
    if (!s.tinted[colour]) {
      const tinted = document.createElement("canvas");
      tinted.width = s.image.width;
      tinted.height = s.image.height;
      const t = tinted.getContext("2d");
      t.fillStyle = colour;
      t.fillRect(0, 0, tinted.width, tinted.height);
      t.globalCompositeOperation = "destination-in";
      t.drawImage(s.image, 0, 0);
      s.tinted[colour] = tinted;
    }
    ctx.drawImage(s.tinted[colour], 0, 0);
    return;
  }
  ctx.strokeStyle = ctx.fillStyle = colour;
  ctx.lineWidth = s.size;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  const [x0, y0] = s.points[0];
  if (s.points.length === 1) {
    ctx.arc(x0, y0, s.size / 2, 0, 2 * Math.PI);
    ctx.fill();
    return;
  }
  ctx.moveTo(x0, y0);
  for (const [x, y] of s.points.slice(1)) ctx.lineTo(x, y);
  ctx.stroke();
}

function showVersion(version) {
  while (shown > version) {
    const f = fills[--shown];
    imageCtx.putImageData(f.before, f.x, f.y);
  }
  while (shown < version) {
    const f = fills[shown++];
    imageCtx.putImageData(f.after, f.x, f.y);
  }
}

function render() {
  const s = state();
  showVersion(s.version);
  maskCtx.clearRect(0, 0, mask.width, mask.height);
  for (const st of s.strokes) paint(maskCtx, st, STROKE_COLOUR);
  const busy = filling !== null;
  $("undo").disabled = !doc || busy || at === 0;
  $("redo").disabled = !doc || busy || at === history.length - 1;
  inpaintButton.disabled = busy;
  download.classList.toggle("disabled", !doc);
  if (doc) {
    download.href = `api/download/${doc.key}?version=${s.version}`;
    download.download = `${doc.name}${s.version ? "_inpainted" : ""}.png`;
  }
}

function push(next) {
  history.length = at + 1;
  history.push(next);
  at++;
  render();
}

function undo() {
  if (filling === null && at > 0) {
    at--;
    render();
  }
}

function redo() {
  if (filling === null && at < history.length - 1) {
    at++;
    render();
  }
}

function setBrush(size) {
  brush.value = Math.round(Math.min(+brush.max, Math.max(+brush.min, size)));
}

function setBefore(on) {
  document.body.classList.toggle("before", on);
  $("before").setAttribute("aria-pressed", String(on));
}

// ------------------------------------------------------------------------------ inpainting

// The strokes' box (x, y, width, height) in the canvas, with a pixel to spare.
function strokesBox(strokes) {
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const s of strokes) {
    if (s.image) {
      [x0, y0, x1, y1] = [Math.min(x0, s.box[0]), Math.min(y0, s.box[1]),
                          Math.max(x1, s.box[2]), Math.max(y1, s.box[3])];
      continue;
    }
    for (const [x, y] of s.points) {
      x0 = Math.min(x0, x - s.size / 2);
      y0 = Math.min(y0, y - s.size / 2);
      x1 = Math.max(x1, x + s.size / 2);
      y1 = Math.max(y1, y + s.size / 2);
    }
  }
  x0 = Math.max(0, Math.floor(x0) - 1);
  y0 = Math.max(0, Math.floor(y0) - 1);
  x1 = Math.min(mask.width, Math.ceil(x1) + 1);
  y1 = Math.min(mask.height, Math.ceil(y1) + 1);
  return [x0, y0, Math.max(1, x1 - x0), Math.max(1, y1 - y0)];
}

// A PNG of the strokes (white on black) inside their box: all an Inpaint sends.
function maskPng(strokes, [x, y, w, h]) {
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, w, h);
  ctx.translate(-x, -y);
  for (const s of strokes) paint(ctx, s, "#fff");
  return new Promise((done) => canvas.toBlob(done, "image/png"));
}

async function pixelsOf(base64, width, height) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const bitmap = await createImageBitmap(new Blob([bytes], {type: "image/png"}), DECODE);
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  ctx.drawImage(bitmap, 0, 0);
  return ctx.getImageData(0, 0, width, height);
}

async function inpaint() {
  if (!doc) return say("Error: upload a photo or pick an example first", "error");
  if (filling !== null) return;
  const s = state();
  if (!s.strokes.length) {
    return say("Error: nothing to fill: paint over what should go, then press Inpaint", "error");
  }
  const mine = generation, key = doc.key, method = methodSelect.value;
  const started = performance.now();
  filling = mine;
  render();
  say(`Filling with ${method}…`, "busy");
  try {
    const box = strokesBox(s.strokes);
    const body = await maskPng(s.strokes, box);
    const info = await answerOf(await fetch(
      `api/inpaint/${key}?version=${s.version}&x=${box[0]}&y=${box[1]}` +
      `&method=${encodeURIComponent(method)}`,
      {method: "POST", body, headers: {"Content-Type": "image/png"}}));
    const [x, y, w, h] = info.box;
    const after = await pixelsOf(info.patch, w, h);
    if (mine !== generation) return;  // another photo came meanwhile
    showVersion(s.version);
    fills.length = s.version;
    fills.push({x, y, before: imageCtx.getImageData(x, y, w, h), after});
    filling = null;
    push({version: info.version, strokes: []});
    const seconds = (performance.now() - started) / 1000;
    window.editorTiming = {clickSeconds: seconds, serverSeconds: info.serverSeconds};
    say(`${info.message}, ${seconds.toFixed(2)} s from the click.`);
  } catch (err) {
    if (mine === generation) say(errorText(err), "error");
  } finally {
    if (filling === mine) {
      filling = null;
      render();
    }
  }
}

// ------------------------------------------------------------------------------ view

function applyZoom() {
  stage.style.transform = `translate(${zoom.x}px, ${zoom.y}px) scale(${zoom.scale})`;
}

function fit() {
  if (!doc) return;
  const r = view.getBoundingClientRect();
  const scale = Math.min(r.width / image.width, r.height / image.height);
  zoom = {scale, x: (r.width - image.width * scale) / 2, y: (r.height - image.height * scale) / 2};
  applyZoom();
}

function zoomAt(cx, cy, factor) {
  const scale = Math.min(64, Math.max(0.02, zoom.scale * factor));
  const k = scale / zoom.scale;
  zoom = {scale, x: cx - (cx - zoom.x) * k, y: cy - (cy - zoom.y) * k};
  applyZoom();
}

function canvasPoint(e) {
  const r = mask.getBoundingClientRect();
  return [(e.clientX - r.left) * mask.width / r.width, (e.clientY - r.top) * mask.height / r.height];
}

function moveCursor(e) {
  const r = view.getBoundingClientRect();
  const d = brush.value * zoom.scale;
  Object.assign(cursor.style, {
    display: doc && !pan && !spaceHeld ? "block" : "none", width: `${d}px`, height: `${d}px`,
    left: `${e.clientX - r.left - d / 2}px`, top: `${e.clientY - r.top - d / 2}px`,
  });
}

view.addEventListener("wheel", (e) => {
  e.preventDefault();
  const r = view.getBoundingClientRect();
  zoomAt(e.clientX - r.left, e.clientY - r.top, Math.exp(-e.deltaY * 0.002));
  moveCursor(e);
}, {passive: false});

view.addEventListener("pointerdown", (e) => {
  if (!doc || stroke || pan) return;  // a second finger does not start another stroke
  if (e.button === 1 || (e.button === 0 && spaceHeld)) {
    e.preventDefault();
    pan = {x: e.clientX, y: e.clientY, zx: zoom.x, zy: zoom.y};
    view.setPointerCapture(e.pointerId);
    return;
  }
  if (e.button !== 0 || filling !== null || document.body.classList.contains("before")) return;
  view.setPointerCapture(e.pointerId);
  stroke = {size: +brush.value, points: [canvasPoint(e)]};
  paint(maskCtx, stroke, STROKE_COLOUR);
});

view.addEventListener("pointermove", (e) => {
  moveCursor(e);
  if (pan) {
    zoom.x = pan.zx + e.clientX - pan.x;
    zoom.y = pan.zy + e.clientY - pan.y;
    applyZoom();
  } else if (stroke) {
    const last = stroke.points[stroke.points.length - 1];
    stroke.points.push(canvasPoint(e));
    paint(maskCtx, {size: stroke.size, points: [last, stroke.points[stroke.points.length - 1]]},
          STROKE_COLOUR);
  }
});

function endPointer() {
  pan = null;
  if (!stroke) return;
  const s = state();
  push({version: s.version, strokes: [...s.strokes, stroke]});
  stroke = null;
  if ($("auto").checked) inpaint();
}
view.addEventListener("pointerup", endPointer);
view.addEventListener("pointercancel", endPointer);
view.addEventListener("pointerleave", () => { cursor.style.display = "none"; });
window.addEventListener("resize", fit);

// ------------------------------------------------------------------------------ controls

inpaintButton.addEventListener("click", inpaint);
$("undo").addEventListener("click", undo);
$("redo").addEventListener("click", redo);
$("before").addEventListener("click", () => setBefore(!document.body.classList.contains("before")));
// A clicked button keeps no focus: Enter and Space are the editor's keys, not its.
for (const b of document.querySelectorAll("button")) b.addEventListener("click", () => b.blur());

window.addEventListener("keydown", (e) => {
  if (e.target.tagName === "SELECT") return;
  const key = e.key.toLowerCase();
  if (e.ctrlKey || e.metaKey) {
    if (key === "z") e.shiftKey ? redo() : undo();
    else if (key === "y") redo();
    else return;
  } else if (key === "[") {
    setBrush(Math.min(brush.value - 1, brush.value / 1.25));
  } else if (key === "]") {
    setBrush(Math.max(+brush.value + 1, brush.value * 1.25));
  } else if (key === "enter") {
    inpaint();
  } else if (key === "b") {
    if (!e.repeat) setBefore(true);
  } else if (key === " ") {
    spaceHeld = true;
    view.classList.add("panning");
  } else if (key === "f") {
    fit();
  } else {
    return;
  }
  e.preventDefault();
});

window.addEventListener("keyup", (e) => {
  const key = e.key.toLowerCase();
  if (key === "b") setBefore(false);
  if (key === " ") {
    spaceHeld = false;
    view.classList.remove("panning");
  }
});

render();
