// featuremap explorer: one static page over the explorer's HTTP API (plain JavaScript, canvas).
// Maps arrive as uint8 with each map's [min, max] (featuremap.quantize) and are drawn through
// ImageData with 256-entry colour tables (colormaps.js): a diverging scale centred on zero for
// maps with negative values, viridis from min to max otherwise, as the library's figures.
"use strict";

/* ------------------------------------------------------------------------------------------ */
/* Small helpers                                                                              */
/* ------------------------------------------------------------------------------------------ */

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

/** A number in at most `digits` significant digits, short: 0.0123, -1.77, 1.2e-5, 12,345. */
function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (x === 0) return "0";
  const a = Math.abs(x);
  if (a >= 1e5 || a < 1e-3) return x.toExponential(Math.max(0, digits - 2)).replace("e+", "e");
  if (a >= 1000) return Math.round(x).toLocaleString("en-US");
  return String(Number(x.toPrecision(digits)));
}

const shapeText = (s) => (s && s.length ? s.join(" x ") : "–");
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

/* ------------------------------------------------------------------------------------------ */
/* The API: JSON or binary maps messages; one-line errors                                      */
/* ------------------------------------------------------------------------------------------ */

const CLIENT = Array.from(crypto.getRandomValues(new Uint8Array(8)),
  (b) => b.toString(16).padStart(2, "0")).join("");

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

let busyCount = 0;
function busy(delta) {
  busyCount += delta;
  $("busy").hidden = busyCount <= 0;
  document.body.dataset.busy = busyCount > 0 ? "1" : "0";
}

/** b"FMAP", uint32 LE header length, JSON header, then raw uint8 blocks (header.sizes). */
function decodeMessage(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < 8 || String.fromCharCode(...bytes.subarray(0, 4)) !== "FMAP") {
    throw new ApiError(0, "the server sent something that is not a maps message");
  }
  const n = new DataView(buffer).getUint32(4, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  const blocks = [];
  let at = 8 + n;
  for (const size of header.sizes || []) { blocks.push(bytes.subarray(at, at + size)); at += size; }
  return { header, blocks };
}

async function api(path, body, { signal, filename } = {}) {
  const init = { method: body === undefined ? "GET" : "POST", headers: { "X-Client": CLIENT }, signal };
  if (body instanceof Blob) {
    init.body = body;
    init.headers["Content-Type"] = "application/octet-stream";
    init.headers["X-Filename"] = encodeURIComponent(filename || "upload").slice(0, 200);
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  busy(+1);
  try {
    let res;
    try { res = await fetch(path, init); } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "the explorer's server does not answer (is it still running?)");
    }
    const type = res.headers.get("content-type") || "";
    if (!res.ok) {
      let message = `${res.status} ${res.statusText}`;
      try { message = (await res.json()).error || message; } catch (_) { /* not JSON */ }
      throw new ApiError(res.status, message);
    }
    if (type.startsWith("application/octet-stream")) return decodeMessage(await res.arrayBuffer());
    return await res.json();
  } finally { busy(-1); }
}

/* Errors: one line in the error bar; the view keeps what it showed. */
let errorOwner = null;
function showError(message, owner = null) {
  $("error-text").textContent = message;
  $("error").hidden = false;
  errorOwner = owner;
}
function clearError(owner) {
  if (owner === undefined || owner === errorOwner) { $("error").hidden = true; errorOwner = null; }
}

/* Timings of every request (sent -> answered -> drawn), for benchmarks: window.fmStats. */
const fmStats = { client: CLIENT, timings: [], ready: null, requests: 0 };
window.fmStats = fmStats;

/**
 * One request channel per control group (a slider's requests): at most one request in flight
 * and the newest one pending; values in between are dropped. A new request starts no sooner
 * than `gap` ms after the previous one started, so a quick drag sends a handful, not a backlog.
 * A request whose context changed (another image, filter bank, layer) is aborted. Requests
 * carry the channel's name and an increasing `seq`: the server answers 409 to one a newer
 * request superseded while it waited.
 */
class Channel {
  constructor(name, { gap = 250, follow = true } = {}) {
    Object.assign(this, { name, gap, follow, seq: 0, inflight: null, pending: null,
      lastStart: -1e9, timer: 0, doneKey: null, sent: 0 });
  }

  submit(job, { now = false, force = false } = {}) {
    if (this.inflight && this.inflight.ctx !== job.ctx) this.abortInflight();
    if (force) this.doneKey = null;
    if (this.inflight && this.inflight.key === job.key) { this.pending = null; return; }
    if (!this.inflight && !this.pending && job.key === this.doneKey) return;
    this.pending = job;
    if (now) { this.lastStart = -1e9; clearTimeout(this.timer); this.timer = 0; }
    this.pump();
  }

  abortInflight() {
    if (this.inflight) { this.inflight.ctrl.abort(); this.inflight = null; }
  }

  cancel() {
    this.abortInflight();
    this.pending = null;
    clearTimeout(this.timer);
    this.timer = 0;
  }

  pump() {
    if (this.inflight || !this.pending || this.timer) return;
    const wait = this.lastStart + this.gap - performance.now();
    if (wait > 0) { this.timer = setTimeout(() => { this.timer = 0; this.pump(); }, wait); return; }
    const job = this.pending;
    this.pending = null;
    if (job.key === this.doneKey) return;
    const ctrl = new AbortController();
    const seq = ++this.seq;
    this.inflight = { key: job.key, ctx: job.ctx, ctrl };
    this.lastStart = performance.now();
    this.sent += 1;
    fmStats.requests += 1;
    const body = this.follow ? { ...job.body, channel: this.name, seq } : job.body;
    const t0 = performance.now();
    if (job.stale) job.stale.classList.add("stale");
    api(job.path, body, { signal: ctrl.signal }).then((result) => {
      if (!this.inflight || this.inflight.ctrl !== ctrl) return;
      const t1 = performance.now();
      this.doneKey = job.key;
      clearError(this.name);
      job.draw(result);
      const t2 = performance.now();
      fmStats.timings.push({ path: job.path, channel: this.name, seq, answered: t1 - t0, drawn: t2 - t0 });
      if (fmStats.timings.length > 500) fmStats.timings.shift();
    }).catch((err) => {
      if (err.name === "AbortError" || err.status === 409) return;
      if (!this.inflight || this.inflight.ctrl !== ctrl) return;
      this.doneKey = null;
      if (job.fail) job.fail(err); else showError(err.message, this.name);
    }).finally(() => {
      if (this.inflight && this.inflight.ctrl === ctrl) {
        this.inflight = null;
        if (job.stale && !this.pending) job.stale.classList.remove("stale");
      }
      this.pump();
    });
  }
}

/* ------------------------------------------------------------------------------------------ */
/* Colour: honest scales, lookup tables, colour bars                                           */
/* ------------------------------------------------------------------------------------------ */

/** The library's rule (featuremap.plot.scale): negative values -> RdBu_r centred on zero. */
function scaleOf(lo, hi) {
  if (lo < 0) {
    const m = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
    return { cmap: "RdBu_r", vmin: -m, vmax: m };
  }
  return { cmap: "viridis", vmin: lo, vmax: hi > lo ? hi : lo + 1 };
}

function rangesScale(ranges) {
  let lo = Infinity, hi = -Infinity;
  for (const [a, b] of ranges) { lo = Math.min(lo, a); hi = Math.max(hi, b); }
  return scaleOf(lo, hi);
}

/** 256 packed RGBA colours: byte v of a map with range [mn, mx] under `scale`; `alpha` a
 * number (0..255) or "ramp" (transparent at the scale's bottom, for heat over an image). */
function lutFor(mn, mx, scale, alpha = 255) {
  const table = COLORMAPS[scale.cmap];
  const lut = new Uint32Array(256);
  const span = scale.vmax - scale.vmin;
  for (let v = 0; v < 256; v++) {
    const value = mn + (mx - mn) * v / 255;
    const i = Math.max(0, Math.min(255, Math.round((value - scale.vmin) / span * 255)));
    const a = alpha === "ramp" ? Math.round(40 + 200 * Math.min(1, i / 160)) * (i > 2) : alpha;
    lut[v] = ((a << 24) | (table[3 * i + 2] << 16) | (table[3 * i + 1] << 8) | table[3 * i]) >>> 0;
  }
  return lut;
}

function colorOf(value, scale) {
  const table = COLORMAPS[scale.cmap];
  const i = Math.max(0, Math.min(255, Math.round((value - scale.vmin) / (scale.vmax - scale.vmin) * 255)));
  return [table[3 * i], table[3 * i + 1], table[3 * i + 2]];
}

function paint(canvas, bytes, w, h, lut) {
  if (canvas.width !== w) canvas.width = w;
  if (canvas.height !== h) canvas.height = h;
  const ctx = canvas.getContext("2d");
  let img = canvas._img;
  if (!img || img.width !== w || img.height !== h) img = canvas._img = ctx.createImageData(w, h);
  const out = new Uint32Array(img.data.buffer);
  const n = w * h;
  for (let i = 0; i < n; i++) out[i] = lut[bytes[i]];
  ctx.putImageData(img, 0, 0);
}

/** The gradient of a colour table as an image URL (made once per table). */
const gradients = {};
function gradientUrl(cmap) {
  if (!gradients[cmap]) {
    const c = document.createElement("canvas");
    c.width = 256; c.height = 1;
    const ctx = c.getContext("2d");
    const img = ctx.createImageData(256, 1);
    const t = COLORMAPS[cmap];
    for (let i = 0; i < 256; i++) img.data.set([t[3 * i], t[3 * i + 1], t[3 * i + 2], 255], 4 * i);
    ctx.putImageData(img, 0, 0);
    gradients[cmap] = c.toDataURL();
  }
  return gradients[cmap];
}

/** A colour bar: the gradient and its numbers (ends; zero on a diverging scale, else the
 * middle, when `mid`). update(scale) changes it in place. */
function colorbar(scale, { label = "", big = false, mid = true } = {}) {
  const bar = el("div", { class: big ? "cbar big" : "cbar" });
  if (label) bar.append(el("div", { class: "label", text: label }));
  const img = el("img", { alt: "", draggable: "false" });
  const lo = el("span", { style: "left:0" });
  const middle = el("span", { style: "left:50%;transform:translateX(-50%)" });
  const hi = el("span", { style: "right:0" });
  bar.append(img, el("div", { class: "ticks" }, lo, mid ? middle : null, hi));
  bar.update = (sc) => {
    const url = gradientUrl(sc.cmap);
    if (img.getAttribute("src") !== url) img.src = url;
    lo.textContent = fmt(sc.vmin);
    hi.textContent = fmt(sc.vmax);
    middle.textContent = sc.cmap === "RdBu_r" ? "0" : fmt((sc.vmin + sc.vmax) / 2);
  };
  bar.update(scale);
  return bar;
}

function setBar(holder, scale, options) {
  holder.replaceChildren(scale ? colorbar(scale, options) : "");
}

/* ------------------------------------------------------------------------------------------ */
/* Map grids: one canvas per map, a title, a colour bar per map or one shared                  */
/* ------------------------------------------------------------------------------------------ */

const GRIDS = [];

class MapGrid {
  constructor(root, hover, { onPick, tileFor } = {}) {
    Object.assign(this, { root, hover, onPick, tileFor, tiles: [], data: null, selected: -1, sharedBar: null });
    GRIDS.push(this);
  }

  /** Size the tiles to the grid's width (after a resize). */
  fit() {
    if (!this.data || this.tileFor || !this.root.clientWidth) return;
    this.root.style.setProperty("--tile", `${defaultTile(this.data.depth, this.root.clientWidth)}px`);
  }

  /** data: {bytes, depth, height, width, ranges, names, titles?}; tiles are reused. */
  set(data, shared) {
    if (!this.data) this.root.replaceChildren();
    this.data = data;
    const { depth, height, width, ranges } = data;
    const sharedScale = shared && depth ? rangesScale(ranges) : null;
    const tile = this.tileFor ? this.tileFor(depth, height, width) : defaultTile(depth, this.root.clientWidth);
    this.root.style.setProperty("--tile", `${tile}px`);
    if (sharedScale) {
      if (!this.sharedBar) {
        this.sharedBar = el("div", { class: "sharedbar", style: "grid-column:1/-1" },
          colorbar(sharedScale, { label: "one scale for all maps", big: true }));
        this.root.prepend(this.sharedBar);
      }
      this.sharedBar.firstChild.update(sharedScale);
    } else if (this.sharedBar) { this.sharedBar.remove(); this.sharedBar = null; }
    while (this.tiles.length > depth) this.tiles.pop().node.remove();
    while (this.tiles.length < depth) this.tiles.push(this.makeTile(this.tiles.length));
    const plane = height * width;
    const mid = tile >= 110;
    for (let d = 0; d < depth; d++) {
      const t = this.tiles[d];
      const [mn, mx] = ranges[d];
      const scale = sharedScale || scaleOf(mn, mx);
      paint(t.canvas, data.bytes.subarray(d * plane, (d + 1) * plane), width, height, lutFor(mn, mx, scale));
      const title = data.titles ? data.titles[d] : data.names[d];
      if (t.name.textContent !== title) { t.name.textContent = title; t.name.title = title; }
      if (sharedScale) { if (t.bar) { t.bar.remove(); t.bar = null; } } else {
        if (!t.bar || t.bar.mid !== mid) {
          const bar = colorbar(scale, { mid });
          bar.mid = mid;
          if (t.bar) t.bar.replaceWith(bar); else t.node.append(bar);
          t.bar = bar;
        } else t.bar.update(scale);
      }
      t.node.classList.toggle("selected", d === this.selected);
    }
  }

  /** Empty the grid, with an optional message in its place. */
  clear(message = "") {
    this.tiles = [];
    this.sharedBar = null;
    this.data = null;
    this.root.replaceChildren(message ? el("p", { class: "muted grid-message", text: message }) : "");
  }

  makeTile(d) {
    const canvas = el("canvas");
    const name = el("div", { class: "name" });
    const node = el("div", { class: "tile" }, name, canvas);
    canvas.addEventListener("mousemove", (e) => this.hoverAt(d, canvas, e));
    canvas.addEventListener("mouseleave", () => { this.hover.innerHTML = "&nbsp;"; });
    canvas.addEventListener("click", (e) => {
      const [y, x] = this.position(canvas, e);
      if (this.onPick) this.onPick(d, y, x);
    });
    this.root.append(node);
    return { node, canvas, name, bar: null };
  }

  position(canvas, e) {
    const r = canvas.getBoundingClientRect();
    const { height, width } = this.data;
    const y = Math.min(height - 1, Math.max(0, Math.floor((e.clientY - r.top) / r.height * height)));
    const x = Math.min(width - 1, Math.max(0, Math.floor((e.clientX - r.left) / r.width * width)));
    return [y, x];
  }

  value(d, y, x) {
    const { height, width, ranges, bytes } = this.data;
    const [mn, mx] = ranges[d];
    return mn + (mx - mn) * bytes[d * height * width + y * width + x] / 255;
  }

  hoverAt(d, canvas, e) {
    const [y, x] = this.position(canvas, e);
    this.hover.textContent = `${this.data.names[d]}  row ${y}, col ${x}:  ≈ ${fmt(this.value(d, y, x), 4)}`;
  }

  select(d) {
    this.selected = d;
    this.tiles.forEach((t, i) => t.node.classList.toggle("selected", i === d));
  }
}

/** A square-ish grid: ceil(sqrt(n)) columns across the available width, 64..240 px a tile. */
function defaultTile(depth, available) {
  const cols = Math.max(1, Math.ceil(Math.sqrt(depth)));
  const fit = Math.floor(((available || 500) - 8 * (cols - 1)) / cols) - 1;
  return Math.max(64, Math.min(240, fit));
}

/* ------------------------------------------------------------------------------------------ */
/* Pictures: images, overlays, boxes                                                           */
/* ------------------------------------------------------------------------------------------ */

const pictureCache = new Map();
function picture(url) {
  if (!pictureCache.has(url)) {
    pictureCache.set(url, new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => { pictureCache.delete(url); reject(new ApiError(0, `could not load ${url}`)); };
      img.src = url;
    }));
    if (pictureCache.size > 40) pictureCache.delete(pictureCache.keys().next().value);
  }
  return pictureCache.get(url);
}

const imageUrl = (id) => `/api/images/${encodeURIComponent(id)}.png`;
const inputUrl = (id, model) => `/api/input/${encodeURIComponent(id)}.png?model=${encodeURIComponent(model)}`;

/** Size a canvas to its CSS width (times the pixel ratio) with the aspect h/w. */
function fitCanvas(canvas, h, w) {
  const css = canvas.clientWidth || canvas.parentElement.clientWidth || 300;
  const ratio = Math.min(2, window.devicePixelRatio || 1);
  canvas.width = Math.round(css * ratio);
  canvas.height = Math.round(css * ratio * h / w);
  return canvas.getContext("2d");
}

/** A (h, w) uint8 map as an offscreen canvas through `lut`. */
function mapCanvas(bytes, h, w, lut) {
  const c = document.createElement("canvas");
  paint(c, bytes, w, h, lut);
  return c;
}

/** Draw `img` then `layer` (a canvas) upsampled over it, semi-transparent. */
function drawOverlay(canvas, img, layer, { alpha = 0.55, smooth = true, h, w } = {}) {
  const ctx = fitCanvas(canvas, h || img.naturalHeight, w || img.naturalWidth);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  if (layer) {
    ctx.globalAlpha = alpha;
    ctx.imageSmoothingEnabled = smooth;
    ctx.drawImage(layer, 0, 0, canvas.width, canvas.height);
    ctx.globalAlpha = 1;
  }
  return ctx;
}

/** A box [y0, x0, y1, x1) in an (h, w) picture drawn on `canvas` (end exclusive). */
function drawBox(canvas, box, h, w, color = "#ff2d2d") {
  const ctx = canvas.getContext("2d");
  const sy = canvas.height / h, sx = canvas.width / w;
  const [y0, x0, y1, x1] = box;
  const lw = Math.max(2, canvas.width / 180);
  ctx.lineWidth = lw;
  ctx.strokeStyle = "#ffffff";
  ctx.strokeRect(x0 * sx - lw, y0 * sy - lw, (x1 - x0) * sx + 2 * lw, (y1 - y0) * sy + 2 * lw);
  ctx.strokeStyle = color;
  ctx.strokeRect(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy);
}

/** Labels (h, w) uint8 as colours (CATEGORICAL), optionally over an image. */
function labelColour(i) {
  const j = (i % 16) * 3;
  return [CATEGORICAL[j], CATEGORICAL[j + 1], CATEGORICAL[j + 2]];
}
function labelLut(alpha = 255, background = -1) {
  const lut = new Uint32Array(256);
  for (let v = 0; v < 256; v++) {
    const [r, g, b] = v === background ? [236, 236, 236] : labelColour(background >= 0 ? v - 1 : v);
    lut[v] = ((alpha << 24) | (b << 16) | (g << 8) | r) >>> 0;
  }
  return lut;
}
function legend(holder, names, colourOf, shares) {
  holder.replaceChildren(...names.map((n, i) => {
    const [r, g, b] = colourOf(i);
    const share = shares && shares[n] !== undefined ? ` ${(100 * shares[n]).toFixed(1)}%` : "";
    return el("span", {}, el("i", { style: `background:rgb(${r},${g},${b})` }), n + share);
  }));
}

function setNotes(list, notes) {
  const items = [...new Set((notes || []).filter(Boolean))];
  list.replaceChildren(...items.map((n) => el("li", { text: n })));
  list.hidden = items.length === 0;
}

/* ------------------------------------------------------------------------------------------ */
/* State: everything a view shows lives in the URL fragment (a permalink reopens it)           */
/* ------------------------------------------------------------------------------------------ */

const DEFAULTS = {
  v: "lab", m: "", i: "",
  src: "bank", f: "sobel,gabor:4", ll: "", d: "", s: "", p: "", pm: "", dl: "", ch: "luminance",
  ss: "224", sh: "0", at: "",
  nl: "", nk: "16", nc: "", nsh: "0", nch: "", nat: "",
  wl: "", ws: "", wp: "", wd: "", wo: "", wall: "0",
  cl: "", cm: "grad-cam", k: "4", sl: "",
  chl: "", chc: "", chk: "9", chv: "1", chs: "128", cho: "channel", chd: "0", chf: "", chdet: "0",
};
const S = { ...DEFAULTS };

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  for (const k of Object.keys(DEFAULTS)) S[k] = params.has(k) ? params.get(k) : DEFAULTS[k];
  if (!VIEWS[S.v]) S.v = "lab";
}
let hashTimer = 0;
function writeHash() {
  clearTimeout(hashTimer);
  hashTimer = setTimeout(() => {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(S)) if (v !== DEFAULTS[k] || k === "v" || k === "m" || k === "i") params.set(k, v);
    const text = "#" + params.toString().replace(/%2C/g, ",").replace(/%3A/g, ":");
    if (text !== location.hash) history.replaceState(null, "", text);
  }, 60);
}
function setState(changes) { Object.assign(S, changes); writeHash(); }
const num = (v) => (v === "" || v === null || v === undefined ? null : Number(v));

/* ------------------------------------------------------------------------------------------ */
/* Shared: info, models, images, layer tables                                                  */
/* ------------------------------------------------------------------------------------------ */

const G = { info: null, images: new Map(), layers: new Map() };

async function layersOf(model) {
  if (!G.layers.has(model)) {
    const p = api(`/api/layers?model=${encodeURIComponent(model)}`).then((t) => {
      const parents = [];
      const rows = t.rows.map((r) => {
        const depth = (r[0].length - r[0].trimStart().length) / 2;
        const name = r[0].trim();
        parents.length = depth;
        const parent = depth ? parents[depth - 1] : "";
        parents[depth] = name;
        const short = parent && name.startsWith(parent + ".") ? name.slice(parent.length + 1) : name;
        const shape = r[2] === "-" ? null : r[2].split(" x ").map(Number);
        return { name, short, depth, type: r[1], shapeText: r[2], shape, params: r[3],
          kernel: r[4], stride: r[5], padding: r[6], dilation: r[7], total: r[8], field: r[9],
          maps: !!shape && shape.length === 3 };
      });
      return { ...t, rows };
    });
    p.catch(() => G.layers.delete(model));
    G.layers.set(model, p);
  }
  return G.layers.get(model);
}

function imageLabel(im) {
  return `${im.name} (${im.width} x ${im.height})`;
}

function rememberImage(im) {
  G.images.set(im.id, im);
  fillImageSelect();
}

function fillImageSelect() {
  const sel = $("image");
  sel.replaceChildren();
  const yours = el("optgroup", { label: "Loaded" });
  for (const im of G.images.values()) yours.append(el("option", { value: im.id, text: imageLabel(im) }));
  sel.append(yours);
  const samples = el("optgroup", { label: "Sample photos" });
  for (const [name, about] of Object.entries(G.info.samples)) {
    const id = `sample-${name}`;
    if (!G.images.has(id)) samples.append(el("option", { value: id, title: about, text: `sample:${name} (${about})` }));
  }
  sel.append(samples);
  sel.value = S.i;
}

/** Make sure the server holds image `id` (samples and scenes are made again on demand). */
async function ensureImage(id) {
  if (G.images.has(id)) return G.images.get(id);
  let im;
  if (id.startsWith("sample-")) im = await api("/api/images/sample", { name: id.slice(7) });
  else if (/^scene-\d+$/.test(id)) im = await api("/api/images/scene", { seed: Number(id.slice(6)) });
  else {
    const img = await picture(imageUrl(id)).catch(() => {
      throw new ApiError(404, `image '${id}' is not on this server (it may have been dropped): upload it again.`);
    });
    im = { id, name: id === G.info.image ? "start image" : id, width: img.naturalWidth, height: img.naturalHeight };
  }
  rememberImage(im);
  return im;
}

async function chooseImage(id) {
  try {
    const im = await ensureImage(id);
    setState({ i: im.id, at: "", nat: "" });
    $("image").value = im.id;
    const scene = /^scene-(\d+)$/.exec(im.id);
    if (scene) $("seed").value = scene[1];
    $("image-info").textContent = `${im.width} x ${im.height} px${im.has_truth ? ", with a true label mask" : ""}`;
    sharedChanged();
  } catch (err) { showError(err.message); $("image").value = S.i; }
}

async function upload(file) {
  if (!file) return;
  try {
    const im = await api("/api/images", file, { filename: file.name });
    try { im.name = decodeURIComponent(im.name); } catch (_) { /* shown as sent */ }
    rememberImage(im);
    await chooseImage(im.id);
  } catch (err) { showError(err.message); }
}

function setModelInfo(weights) {
  $("model-info").textContent = weights ? `${S.m} weights: ${weights}` : "";
  $("model-info").title = $("model-info").textContent;
}

function sharedChanged() {
  for (const v of Object.values(VIEWS)) v.stale = true;
  VIEWS[S.v].show();
}

/* ------------------------------------------------------------------------------------------ */
/* The arithmetic of one value (patch x kernel = products), from an explanation's to_dict()     */
/* ------------------------------------------------------------------------------------------ */

function numberGrid(values, { padded, title, diverging = true }) {
  const flat = values.flat();
  let lo = Math.min(...flat), hi = Math.max(...flat);
  const scale = diverging || lo < 0 ? scaleOf(Math.min(lo, 0) - (lo === hi && lo === 0 ? 1 : 0), hi) : scaleOf(lo, hi);
  const rows = values.length, cols = values[0].length;
  const wrap = el("div", { class: "gridwrap" });
  if (rows <= 7 && cols <= 7) {
    const table = el("table", { class: "gridnum" });
    for (let i = 0; i < rows; i++) {
      const tr = el("tr");
      for (let j = 0; j < cols; j++) {
        const v = values[i][j];
        const [r, g, b] = colorOf(v, scale);
        const dark = 0.299 * r + 0.587 * g + 0.114 * b < 140;
        const pad = padded && padded[i] && padded[i][j];
        tr.append(el("td", { class: pad ? "pad" : "", title: pad ? "padding" : null,
          style: `background-color:rgb(${r},${g},${b});color:${dark ? "#fff" : "#111"}`, text: fmt(v, 2) }));
      }
      table.append(tr);
    }
    wrap.append(table);
  } else {
    const cell = Math.max(4, Math.min(10, Math.floor(100 / Math.max(rows, cols))));
    const c = el("canvas", { class: "gridcanvas", width: cols * cell, height: rows * cell });
    const ctx = c.getContext("2d");
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) {
        const [r, g, b] = colorOf(values[i][j], scale);
        ctx.fillStyle = `rgb(${r},${g},${b})`;
        ctx.fillRect(j * cell, i * cell, cell, cell);
        if (padded && padded[i] && padded[i][j]) {
          ctx.strokeStyle = "rgba(0,0,0,.45)";
          ctx.beginPath(); ctx.moveTo(j * cell, (i + 1) * cell); ctx.lineTo((j + 1) * cell, i * cell); ctx.stroke();
        }
      }
    }
    c.addEventListener("mousemove", (e) => {
      const r = c.getBoundingClientRect();
      const i = Math.min(rows - 1, Math.floor((e.clientY - r.top) / r.height * rows));
      const j = Math.min(cols - 1, Math.floor((e.clientX - r.left) / r.width * cols));
      c.title = `row ${i}, col ${j}: ${fmt(values[i][j], 4)}${padded && padded[i] && padded[i][j] ? " (padding)" : ""}`;
    });
    wrap.append(c);
  }
  wrap.append(el("div", { class: "gt", text: `${title} ${rows}x${cols}` }));
  return wrap;
}

function renderExplain(holder, e, { maxChannels = 3 } = {}) {
  const [c, y, x] = e.at;
  const st = e.settings;
  const pad = st.padding;
  const rows = e.rows, cols = e.cols;
  const nodes = [
    el("div", { class: "line" }, el("b", { text: `${e.map_name}` }), `, row ${y}, col ${x} of an output ${shapeText(st.output_shape)}`),
    el("div", { class: "line muted" }, `stride ${st.stride.join(", ")}, padding top/bottom ${pad[0].join("/")} left/right ${pad[1].join("/")} (${st.padding_mode}), dilation ${st.dilation.join(", ")}${st.groups > 1 ? `, groups ${st.groups}` : ""}`),
    el("div", { class: "line" }, `input rows ${rows[0]}..${rows[rows.length - 1]}, cols ${cols[0]}..${cols[cols.length - 1]}`,
      e.padded.flat().some(Boolean) ? el("span", { class: "muted", text: " (hatched cells: padding)" }) : ""),
  ];
  const n = e.channels.length;
  const order = [...Array(n).keys()].sort((a, b) => Math.abs(e.contributions[b]) - Math.abs(e.contributions[a]));
  const chanName = (i) => (e.channel_names && e.channel_names[i]) || `input channel ${e.channels[i]}`;
  if (n > 1) {
    const top = order.slice(0, 8);
    const m = Math.max(...top.map((i) => Math.abs(e.contributions[i]))) || 1;
    const bars = el("div", { class: "bars" });
    for (const i of top) {
      const v = e.contributions[i];
      const wpc = 50 * Math.abs(v) / m;
      bars.append(el("span", { text: chanName(i) }),
        el("span", { class: "bar" }, el("i", { style: `${v >= 0 ? "left:50%;background:#c0392b" : `right:50%;background:#2c6fb7`};width:${wpc}%` })),
        el("span", { class: "num", text: fmt(v, 3) }));
    }
    nodes.push(el("div", { class: "chan", text: `what each input channel adds (${Math.min(8, n)} largest of ${n})` }), bars);
  }
  for (const i of order.slice(0, maxChannels)) {
    nodes.push(el("div", { class: "chan", text: `${chanName(i)}: patch x kernel = products (sum ${fmt(e.contributions[i], 4)})` }),
      el("div", { class: "eq" },
        numberGrid(e.patch[i], { padded: e.padded, title: "patch", diverging: false }),
        el("span", { class: "op", text: "×" }),
        numberGrid(e.kernel[i], { title: "kernel" }),
        el("span", { class: "op", text: "=" }),
        numberGrid(e.products[i], { padded: e.padded, title: "products" })));
  }
  if (n > maxChannels) {
    const rest = order.slice(maxChannels).reduce((s, i) => s + e.contributions[i], 0);
    nodes.push(el("div", { class: "line muted", text: `the other ${n - maxChannels} channels add ${fmt(rest, 4)}` }));
  }
  const total = e.contributions.reduce((s, v) => s + v, 0);
  nodes.push(el("div", { class: "sum mono", text: `sum of products ${fmt(total, 6)} + bias ${fmt(e.bias, 6)} = ${fmt(e.value, 6)}` }));
  for (const line of e.context || []) nodes.push(el("div", { class: "line muted", text: line }));
  holder.replaceChildren(...nodes);
}

/* ------------------------------------------------------------------------------------------ */
/* Sliders                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/** Wire a range input: `onValue(v)` on every movement; the <output> shows `text(v)`. */
function slider(id, onValue) {
  const input = $(id);
  const out = $(`${id}-out`);
  input.addEventListener("input", () => { out.textContent = input.value; onValue(Number(input.value)); });
  return {
    input,
    show(value, text, max) {
      if (max !== undefined && max !== null) input.max = max;
      if (value !== undefined && value !== null) input.value = value;
      out.textContent = text !== undefined ? text : input.value;
    },
  };
}

/** How many filters a spec makes (sobel, prewitt, scharr: 2; gabor:N, random:N), or null. */
function bankSize(spec) {
  let n = 0;
  for (const part of spec.split(",")) {
    const [name, arg] = part.trim().toLowerCase().split(":");
    if (!name || !G.info || !(name in G.info.filters)) return null;
    if (name === "gabor") n += arg ? parseInt(arg, 10) : 4;
    else if (name === "random") n += arg ? parseInt(arg, 10) : 1;
    else n += /\(2 filters\)/.test(G.info.filters[name]) ? 2 : 1;
    if (!Number.isFinite(n)) return null;
  }
  return n;
}

/* ------------------------------------------------------------------------------------------ */
/* View 1: the convolution lab                                                                 */
/* ------------------------------------------------------------------------------------------ */

const lab = {
  ch: new Channel("lab"),
  atCh: new Channel("lab-at", { gap: 100 }),
  fieldCh: new Channel("lab-field", { follow: false }),
  last: null,
  total: null,
  explained: null,
  field: null,

  init() {
    this.grid = new MapGrid($("lab-grid"), $("lab-hover"), { onPick: (d, y, x) => this.pick(d, y, x) });
    const change = (k) => (v) => { setState({ [k]: String(v), at: S.at }); this.refresh(); };
    this.sliders = {
      depth: slider("lab-depth", change("d")),
      stride: slider("lab-stride", change("s")),
      padding: slider("lab-padding", (v) => { setState({ p: String(v) }); $("lab-padkind").value = "number"; this.refresh(); }),
      dilation: slider("lab-dilation", change("dl")),
    };
    $("lab-padkind").addEventListener("change", (e) => {
      const k = e.target.value;
      setState({ p: k === "number" ? $("lab-padding").value : k });
      this.refresh(true);
    });
    $("lab-padmode").addEventListener("change", (e) => { setState({ pm: e.target.value }); this.refresh(true); });
    $("lab-channels").addEventListener("change", (e) => { setState({ ch: e.target.value, at: "" }); this.refresh(true); });
    $("lab-short").addEventListener("change", (e) => { setState({ ss: e.target.value, at: "" }); this.refresh(true); });
    $("lab-shared").addEventListener("change", (e) => { setState({ sh: e.target.checked ? "1" : "0" }); this.redraw(); });
    let typing = 0;
    $("lab-filters").addEventListener("input", (e) => {
      clearTimeout(typing);
      typing = setTimeout(() => { if (e.target.value.trim()) { setState({ f: e.target.value.trim(), d: "", at: "" }); this.refresh(true); } }, 350);
    });
    for (const r of document.querySelectorAll("input[name=lab-src]")) {
      r.addEventListener("change", () => {
        setState({ src: r.value, d: "", s: "", p: "", pm: "", dl: "", at: "" });
        this.show();
      });
    }
    $("lab-layer").addEventListener("change", (e) => {
      setState({ ll: e.target.value, src: "layer", d: "", s: "", p: "", pm: "", dl: "", at: "" });
      this.show();
    });
  },

  fillFilterNames() {
    const holder = $("lab-filter-names");
    holder.replaceChildren("names: ");
    Object.entries(G.info.filters).forEach(([name, help], i) => {
      if (i) holder.append(", ");
      holder.append(el("a", { href: "#", title: help, text: name, onclick: (e) => {
        e.preventDefault();
        const input = $("lab-filters");
        input.value = (input.value.trim() ? input.value.trim() + "," : "") + name;
        input.dispatchEvent(new Event("input"));
      } }));
    });
  },

  async fillLayers() {
    const t = await layersOf(S.m);
    const convs = t.rows.filter((r) => r.type === "Conv2d" && r.shape);
    const sel = $("lab-layer");
    sel.replaceChildren(...convs.map((r) => el("option", { value: r.name, text: `${r.name}  (${r.shapeText})` })));
    if (!convs.some((r) => r.name === S.ll)) S.ll = convs.length ? convs[0].name : "";
    sel.value = S.ll;
    this.convs = convs;
    this.layersFor = S.m;
    return convs;
  },

  layerMode() { return S.src === "layer"; },

  body() {
    const p = S.p === "same" || S.p === "valid" ? S.p : S.p === "" ? null : [Number(S.p)];
    const b = {
      image: S.i, stride: S.s ? [Number(S.s)] : null, padding: p, padding_mode: S.pm || null,
      dilation: S.dl ? [Number(S.dl)] : null, depth: S.d ? Number(S.d) : null,
    };
    if (this.layerMode()) Object.assign(b, { model: S.m, layer: S.ll });
    else Object.assign(b, { filters: S.f, channels: S.ch, short_side: Number(S.ss) });
    return b;
  },

  ctx() {
    return this.layerMode() ? `layer|${S.i}|${S.m}|${S.ll}` : `bank|${S.i}|${S.f}|${S.ch}|${S.ss}`;
  },

  async show() {
    const layer = this.layerMode();
    document.querySelector(`input[name=lab-src][value=${layer ? "layer" : "bank"}]`).checked = true;
    $("lab-filters").value = S.f;
    $("lab-filters").disabled = layer;
    $("lab-layer").disabled = !layer;
    for (const id of ["lab-channels", "lab-short"]) $(id).disabled = layer;
    $("lab-channels").value = S.ch;
    $("lab-short").value = S.ss;
    $("lab-shared").checked = S.sh === "1";
    if (layer || this.layersFor !== S.m) {
      try { await this.fillLayers(); } catch (err) { if (layer) { showError(err.message); return; } }
    }
    this.refresh();
  },

  refresh(now = false) {
    if (this.layerMode() && !S.ll) {
      showError(`${S.m} has no Conv2d layer to take filters from: pick a filter bank or another model.`, "lab");
      return;
    }
    const body = this.body();
    this.ch.submit({ path: "/api/lab", body, key: JSON.stringify(body), ctx: this.ctx(),
      stale: $("lab-grid"), draw: (msg) => this.draw(msg) }, { now });
  },

  draw(msg) {
    const h = msg.header;
    const r = h.result;
    this.last = { header: h, bytes: msg.blocks[0], result: r, layer: this.layerMode() };
    const lines = r.cost.split("\n");
    $("lab-cost").textContent = lines.filter((l) => !l.startsWith("note")).join("\n");
    setNotes($("lab-notes"), lines.filter((l) => l.startsWith("note")).map((l) => l.replace(/^note\s+/, "")));
    const st = r.settings;
    const [pt, pb] = st.padding[0], [pl, pr] = st.padding[1];
    // Per channel (R, G, B separately) every filter makes three maps.
    const per = !this.layerMode() && st.channels === "per-channel" ? 3 : 1;
    const filters = r.names.length / per;
    if (!S.d) this.total = filters;
    const total = this.layerMode() ? (this.layerRow() || {}).shape?.[0] || filters
      : bankSize(S.f) || this.total || filters;
    this.sliders.depth.show(filters, `${filters} of ${total}${per > 1 ? " (x 3 channels)" : ""}`, total);
    this.sliders.stride.show(st.stride[0], st.stride[0] === st.stride[1] ? `${st.stride[0]}` : st.stride.join(" x "));
    const padText = pt === pb && pl === pr && pt === pl ? `${pt}` : `${pt}/${pb} ${pl}/${pr}`;
    this.sliders.padding.show(S.p === "same" || S.p === "valid" ? null : pt,
      S.p === "same" || S.p === "valid" ? `${S.p} (${padText})` : padText);
    $("lab-padding").disabled = S.p === "same" || S.p === "valid";
    $("lab-padkind").value = S.p === "same" || S.p === "valid" ? S.p : "number";
    $("lab-padmode").value = st.padding_mode;
    this.sliders.dilation.show(st.dilation[0], st.dilation.join(" x ") === `${st.dilation[0]} x ${st.dilation[0]}` ? `${st.dilation[0]}` : st.dilation.join(" x "));
    const [D, H, W] = r.shape;
    $("lab-maps-title").textContent = `Feature maps: ${D} x ${H} x ${W} (depth x height x width), kernel ${st.kernel_size.join(" x ")}`;
    this.redraw();
    this.drawInput();
    // The clicked value is explained again once the maps stop changing (not on every step of
    // a drag: that would double the computations).
    clearTimeout(this.again);
    const [d, y, x] = S.at ? S.at.split(",").map(Number) : [D, H, W];
    if (d < D && y < H && x < W) {
      if (!this.explains(r)) $("lab-explain").classList.add("stale");
      this.again = setTimeout(() => { if (!this.ch.inflight && !this.ch.pending) this.pick(d, y, x, { quiet: true }); }, 300);
    } else { setState({ at: "" }); this.clearExplain(); }
    markReady();
  },

  /** Whether the shown explanation belongs to the maps of result `r`. */
  explains(r) {
    const e = this.explained;
    return !!e && same(e.settings.output_shape, r.shape) && same(e.settings.stride, r.settings.stride)
      && same(e.settings.padding, r.settings.padding) && same(e.settings.dilation, r.settings.dilation);
  },

  layerRow() {
    return (this.convs || []).find((r) => r.name === S.ll) || null;
  },

  redraw() {
    if (!this.last) return;
    const h = this.last.header;
    this.grid.set({ bytes: this.last.bytes, depth: h.depth, height: h.height, width: h.width,
      ranges: h.ranges, names: h.names }, S.sh === "1");
    if (S.at) this.grid.select(Number(S.at.split(",")[0]));
  },

  async drawInput() {
    const r = this.last.result;
    const canvas = $("lab-input");
    if (this.layerMode()) {
      const img = await picture(inputUrl(S.i, S.m)).catch((err) => { showError(err.message); return null; });
      if (!img) return;
      drawOverlay(canvas, img, null);
      const [C, H, W] = r.input_shape;
      $("lab-input-title").textContent = `Input: the image as ${S.m} sees it (${img.naturalHeight} x ${img.naturalWidth})`;
      const own = !S.s && !S.p && !S.pm && !S.dl;
      $("lab-input-caption").textContent = `${S.ll} reads ${C} x ${H} x ${W} maps of the layer before it. ` +
        (own ? "Click a value: the box is its receptive field in the image." : "The receptive field box is drawn at the layer's own settings only.");
      if (this.field && own) drawBox(canvas, this.field.box, this.field.h, this.field.w);
      return;
    }
    const img = await picture(imageUrl(S.i)).catch((err) => { showError(err.message); return null; });
    if (!img || this.last.result !== r) return;
    const [C, H, W] = r.input_shape;
    const [[pt, pb], [pl, pr]] = r.settings.padding;
    const th = H + pt + pb, tw = W + pl + pr;
    const ctx = fitCanvas(canvas, th, tw);
    const s = canvas.width / tw;
    ctx.fillStyle = "#dde1e8";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (pt + pb + pl + pr > 0) {
      ctx.strokeStyle = "rgba(0,0,0,.18)";
      ctx.lineWidth = 1;
      for (let k = -canvas.height; k < canvas.width; k += 6) {
        ctx.beginPath(); ctx.moveTo(k, canvas.height); ctx.lineTo(k + canvas.height, 0); ctx.stroke();
      }
    }
    ctx.filter = C === 1 ? "grayscale(1)" : "none";
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(img, pl * s, pt * s, W * s, H * s);
    ctx.filter = "none";
    $("lab-input-title").textContent = `Input: what the filters see (${C === 1 ? "grey" : "R, G, B"}, ${H} x ${W})`;
    $("lab-input-caption").textContent = (pt + pb + pl + pr > 0 ? `Hatched frame: padding (top/bottom ${pt}/${pb}, left/right ${pl}/${pr}, ${r.settings.padding_mode}). ` : "") +
      "The red box: the input pixels the clicked value sees.";
    const e = this.explained;
    if (e && e.rows && this.explains(r)) {
      const box = [e.rows[0] + pt, e.cols[0] + pl, e.rows[e.rows.length - 1] + 1 + pt, e.cols[e.cols.length - 1] + 1 + pl];
      drawBox(canvas, box, th, tw);
    }
  },

  clearExplain() {
    this.explained = null;
    this.field = null;
    this.grid.select(-1);
    $("lab-explain").replaceChildren(el("p", { class: "muted", text: "Click a value in a map." }));
  },

  pick(d, y, x, { quiet = false } = {}) {
    setState({ at: `${d},${y},${x}` });
    this.grid.select(d);
    const body = { ...this.body(), at: [d, y, x] };
    this.atCh.submit({ path: "/api/lab", body, key: JSON.stringify(body), ctx: this.ctx(),
      draw: (e) => {
        this.explained = e;
        $("lab-explain").classList.remove("stale");
        renderExplain($("lab-explain"), e);
        if (!this.layerMode()) this.drawInput();
      } },
    { now: !quiet });
    if (this.layerMode() && !S.s && !S.p && !S.pm && !S.dl) {
      const fb = { image: S.i, model: S.m, layer: S.ll, at: [y, x], map_channel: d };
      this.fieldCh.submit({ path: "/api/field", body: fb, key: JSON.stringify(fb), ctx: this.ctx(),
        draw: (msg) => {
          const f = msg.header.field;
          const shown = f.field || f.support;
          this.field = { box: shown.box, h: f.input_size[0], w: f.input_size[1] };
          this.drawInput();
        } });
    }
  },
};

/* ------------------------------------------------------------------------------------------ */
/* View 2: the network                                                                         */
/* ------------------------------------------------------------------------------------------ */

const net = {
  mapsCh: new Channel("maps", { gap: 40 }),
  ovCh: new Channel("overview"),
  fieldCh: new Channel("field", { follow: false }),
  detailCh: new Channel("detail"),
  explainCh: new Channel("field-explain", { follow: false }),
  table: null,
  last: null,

  init() {
    this.grid = new MapGrid($("net-grid"), $("net-hover"), {
      onPick: (d, y, x) => this.pickChannel(this.last.header.channels[d], [y, x]),
    });
    $("net-top").addEventListener("change", (e) => { setState({ nk: e.target.value, nc: "" }); $("net-channels").value = ""; this.loadMaps(true); });
    let typing = 0;
    $("net-channels").addEventListener("input", (e) => {
      clearTimeout(typing);
      typing = setTimeout(() => { setState({ nc: e.target.value.replace(/\s+/g, "") }); this.loadMaps(true); }, 400);
    });
    $("net-shared").addEventListener("change", (e) => { setState({ nsh: e.target.checked ? "1" : "0" }); this.redraw(); });
    document.addEventListener("keydown", (e) => this.key(e));
    for (const id of ["net-big"]) {
      $(id).addEventListener("click", (e) => {
        if (!this.detail) return;
        const h = this.detail.header;
        const r = $(id).getBoundingClientRect();
        const y = Math.min(h.height - 1, Math.floor((e.clientY - r.top) / r.height * h.height));
        const x = Math.min(h.width - 1, Math.floor((e.clientX - r.left) / r.width * h.width));
        this.pickChannel(Number(S.nch), [y, x]);
      });
    }
  },

  async show() {
    let t;
    try { t = await layersOf(S.m); } catch (err) { showError(err.message); return; }
    if (this.table !== t) this.renderTable(t);
    if (!t.rows.some((r) => r.name === S.nl && r.maps)) {
      const stage = t.stages.find((s) => t.rows.some((r) => r.name === s.name && r.maps));
      const first = stage ? stage.name : (t.rows.find((r) => r.maps) || {}).name;
      setState({ nl: first || "", nch: "", nat: "" });
    }
    this.markRow();
    $("net-top").value = S.nk;
    $("net-channels").value = S.nc;
    $("net-shared").checked = S.nsh === "1";
    const ob = { image: S.i, model: S.m, per_layer: 8 };
    this.ovCh.submit({ path: "/api/overview", body: ob, key: JSON.stringify(ob), ctx: `${S.i}|${S.m}`,
      draw: (msg) => this.drawOverview(msg) });
    this.loadMaps();
  },

  renderTable(t) {
    this.table = t;
    $("net-layers-title").textContent = t.title;
    const head = el("tr", {}, ...["layer", "type", "output", "stride", "field"].map((h) => el("th", { text: h })));
    const rows = t.rows.map((r) => el("tr", {
      class: r.maps ? "maps" : "nomaps", "data-name": r.name,
      title: r.maps ? `${r.name}: kernel ${r.kernel || "–"}, stride ${r.stride || "–"}, padding ${r.padding || "–"}, ${r.params} params`
        : `${r.name}: ${r.shape ? "a vector, not maps" : "does not run on an image"}`,
      onclick: r.maps ? () => this.pickLayer(r.name) : null,
    }, el("td", { class: "name", style: `padding-left:${5 + 12 * r.depth}px`, text: r.short }),
    el("td", { class: "type", text: r.type }), el("td", { text: r.shapeText.replace(/ x /g, "×") }), el("td", { text: r.total }),
    el("td", { text: r.field })));
    $("net-table").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
  },

  markRow() {
    for (const tr of $("net-table").querySelectorAll("tr.selected")) tr.classList.remove("selected");
    const row = $("net-table").querySelector(`tr[data-name="${CSS.escape(S.nl)}"]`);
    if (row) { row.classList.add("selected"); row.scrollIntoView({ block: "nearest" }); }
    for (const s of $("net-overview").querySelectorAll(".stage")) s.classList.toggle("selected", s.dataset.name === S.nl);
  },

  pickLayer(name) {
    if (name === S.nl) return;
    setState({ nl: name, nch: "", nat: "" });
    this.markRow();
    this.loadMaps(true);
  },

  loadMaps(now = false) {
    if (!S.nl) return;
    const channels = S.nc ? S.nc.split(",").filter((c) => /^\d+$/.test(c)).map(Number) : null;
    const body = { image: S.i, model: S.m, layer: S.nl, top: Number(S.nk) };
    if (channels && channels.length) body.channels = channels;
    this.mapsCh.submit({ path: "/api/maps", body, key: JSON.stringify(body), ctx: `${S.i}|${S.m}`,
      stale: $("net-grid"), draw: (msg) => this.drawMaps(msg) }, { now });
  },

  drawMaps(msg) {
    const h = msg.header;
    this.last = { header: h, bytes: msg.blocks[0] };
    const meta = h.layer;
    const [, C, H, W] = meta.shape;
    const shown = S.nc ? `channels ${h.channels.join(", ")}` : Number(S.nk) ? `the ${h.depth} strongest of ${C} (by mean activation)` : `all ${C}`;
    $("net-maps-title").textContent = `${meta.name} (${meta.type}): ${C} x ${H} x ${W} maps, stride ${meta.stride[0]}; showing ${shown}`;
    setNotes($("net-notes"), [...(h.notes || []), meta.note].filter(Boolean));
    this.redraw();
    markReady();
  },

  redraw() {
    if (!this.last) return;
    const h = this.last.header;
    this.grid.set({ bytes: this.last.bytes, depth: h.depth, height: h.height, width: h.width, ranges: h.ranges,
      names: h.names, titles: h.channels.map((c, i) => `ch ${c}, mean ${fmt(h.mean[i], 2)}`) }, S.nsh === "1");
    this.showChannel();
  },

  /** The chosen channel in the large view: from the grid, or fetched on its own (a permalink's). */
  showChannel() {
    const h = this.last.header;
    const c = S.nch === "" ? NaN : Number(S.nch);
    const d = h.channels.indexOf(c);
    this.grid.select(d);
    if (d >= 0) {
      this.detail = { header: h, bytes: this.last.bytes, d, shared: S.nsh === "1" };
      this.drawDetail();
    } else if (Number.isInteger(c) && c >= 0 && c < h.layer.shape[1]) {
      const body = { image: S.i, model: S.m, layer: S.nl, top: 0, channels: [c] };
      this.detailCh.submit({ path: "/api/maps", body, key: JSON.stringify(body), ctx: `${S.i}|${S.m}`,
        draw: (msg) => { this.detail = { header: msg.header, bytes: msg.blocks[0], d: 0, shared: false }; this.drawDetail(); } },
      { now: true });
    } else {
      setState({ nch: String(h.channels[0]), nat: "" });
      this.showChannel();
    }
  },

  pickChannel(c, at) {
    setState({ nch: String(c), nat: at ? at.join(",") : "" });
    this.showChannel();
  },

  async drawDetail() {
    if (!this.detail) return;
    const { header: h, d, shared } = this.detail;
    const c = h.channels[d];
    const at = S.nat ? S.nat.split(",").map(Number) : null;
    const plane = h.height * h.width;
    const bytes = this.detail.bytes.subarray(d * plane, (d + 1) * plane);
    const scale = shared ? rangesScale(h.ranges) : scaleOf(...h.ranges[d]);
    const [mn, mx] = h.ranges[d];
    const layer = mapCanvas(bytes, h.height, h.width, lutFor(mn, mx, scale));
    $("net-detail-title").textContent = `${h.layer.name}, channel ${c} (${h.height} x ${h.width})`;
    const big = $("net-big");
    const ctx = fitCanvas(big, h.height, h.width);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(layer, 0, 0, big.width, big.height);
    if (at) {
      const s = big.width / h.width;
      ctx.lineWidth = Math.max(2, s / 8);
      ctx.strokeStyle = "#fff"; ctx.strokeRect(at[1] * s - 1, at[0] * s - 1, s + 2, s + 2);
      ctx.strokeStyle = "#ff2d2d"; ctx.strokeRect(at[1] * s, at[0] * s, s, s);
    }
    setBar($("net-big-bar"), scale);
    const overlayLayer = mapCanvas(bytes, h.height, h.width, lutFor(mn, mx, scale, 255));
    const img = await picture(inputUrl(S.i, S.m)).catch((err) => { showError(err.message); return null; });
    if (img && this.detail.header === h) {
      drawOverlay($("net-overlay"), img, overlayLayer, { alpha: 0.6 });
      setBar($("net-overlay-bar"), scale, { label: "60% over the image, upsampled (bilinear)" });
    }
    if (at) this.loadField(c, at); else this.clearField();
  },

  clearField() {
    $("net-field").closest("figure").hidden = true;
    $("net-field-bar").replaceChildren();
    $("net-field-text").replaceChildren(el("p", { class: "muted", text: "Click a value of the map (in the grid or the large view)." }));
    $("net-explain-panel").hidden = true;
  },

  loadField(c, at) {
    const body = { image: S.i, model: S.m, layer: S.nl, at, map_channel: c };
    this.fieldCh.submit({ path: "/api/field", body, key: JSON.stringify(body), ctx: `${S.i}|${S.m}`,
      draw: (msg) => this.drawField(msg) }, { now: true });
    const row = this.table && this.table.rows.find((r) => r.name === S.nl);
    const conv = row && row.type === "Conv2d";
    $("net-explain-panel").hidden = !conv;
    if (conv) {
      const eb = { image: S.i, model: S.m, layer: S.nl, at: [c, ...at] };
      this.explainCh.submit({ path: "/api/field", body: eb, key: JSON.stringify(eb), ctx: `${S.i}|${S.m}`,
        draw: (e) => renderExplain($("net-explain"), e, { maxChannels: 2 }) }, { now: true });
    }
  },

  async drawField(msg) {
    const h = msg.header;
    const f = h.field;
    const img = await picture(inputUrl(S.i, S.m)).catch(() => null);
    if (!img) return;
    const scale = scaleOf(h.ranges[0][0], h.ranges[0][1]);
    const heat = mapCanvas(msg.blocks[0], h.height, h.width, lutFor(h.ranges[0][0], h.ranges[0][1], scale, "ramp"));
    const canvas = $("net-field");
    canvas.closest("figure").hidden = false;
    drawOverlay(canvas, img, heat, { alpha: 0.85, h: f.input_size[0], w: f.input_size[1] });
    const shown = f.field || f.support;
    drawBox(canvas, shown.box, f.input_size[0], f.input_size[1]);
    setBar($("net-field-bar"), scale, { label: "gradient magnitude over the image (clear where 0)" });
    $("net-field-title").textContent = `Receptive field of channel ${f.channel}, row ${f.at[0]}, col ${f.at[1]}`;
    const lines = h.text.split("\n").slice(1);
    $("net-field-text").replaceChildren(
      el("div", {}, el("b", { text: f.field ? `${shown.size[0]} x ${shown.size[1]} px` : "gradient support" }),
        f.field ? ` analytic field, stride ${shown.stride[0]}` : ""),
      ...lines.map((l) => el("div", { text: l })),
      ...(f.notes || []).map((n) => el("div", { text: `note: ${n}` })));
  },

  drawOverview(msg) {
    const holder = $("net-overview");
    holder.replaceChildren();
    msg.header.layers.forEach((L, k) => {
      const plane = L.height * L.width;
      const minis = el("div", { class: "minis" });
      for (let d = 0; d < L.depth; d++) {
        const [mn, mx] = L.ranges[d];
        const c = el("canvas", { title: `channel ${L.channels[d]}: ${fmt(mn)} .. ${fmt(mx)}` });
        paint(c, msg.blocks[k].subarray(d * plane, (d + 1) * plane), L.width, L.height, lutFor(mn, mx, scaleOf(mn, mx)));
        minis.append(c);
      }
      const [, C] = L.meta.shape;
      holder.append(el("div", { class: "stage" + (L.name === S.nl ? " selected" : ""), "data-name": L.name,
        title: `${L.name}: click to see its channels`, onclick: () => this.pickLayer(L.name) },
      el("div", { class: "name", text: L.name }),
      el("div", { class: "meta", text: `${C} x ${L.height} x ${L.width}, stride ${L.meta.stride[0]}` }), minis));
    });
    if (!msg.header.layers.length) holder.append(el("p", { class: "muted", text: "No layer of this model gives maps." }));
  },

  key(e) {
    if (S.v !== "net" || !this.table) return;
    if (e.target.closest("input, select, textarea") || e.altKey || e.ctrlKey || e.metaKey) return;
    if (e.key === "ArrowUp" || e.key === "ArrowDown") {
      const rows = this.table.rows.filter((r) => r.maps);
      const i = rows.findIndex((r) => r.name === S.nl);
      const j = Math.max(0, Math.min(rows.length - 1, i + (e.key === "ArrowDown" ? 1 : -1)));
      if (rows[j]) this.pickLayer(rows[j].name);
      e.preventDefault();
    } else if ((e.key === "ArrowLeft" || e.key === "ArrowRight") && this.last) {
      const chans = this.last.header.channels;
      const i = chans.indexOf(Number(S.nch));
      const j = Math.max(0, Math.min(chans.length - 1, i + (e.key === "ArrowRight" ? 1 : -1)));
      this.pickChannel(chans[j], null);
      e.preventDefault();
    }
  },
};

/* ------------------------------------------------------------------------------------------ */
/* View 3: what-if                                                                             */
/* ------------------------------------------------------------------------------------------ */

const whatif = {
  ch: new Channel("whatif"),
  last: null,

  init() {
    this.grid = new MapGrid($("wi-grid"), $("wi-hover"), { tileFor: (n) => (n <= 4 ? 170 : n <= 9 ? 118 : 88) });
    const change = (k) => (v) => { setState({ [k]: String(v) }); this.refresh(); };
    this.sliders = {
      stride: slider("wi-stride", change("ws")), padding: slider("wi-padding", change("wp")),
      dilation: slider("wi-dilation", change("wd")), out: slider("wi-out", change("wo")),
    };
    $("wi-layer").addEventListener("change", (e) => { setState({ wl: e.target.value, ws: "", wp: "", wd: "", wo: "" }); this.refresh(true); });
    $("wi-reset").addEventListener("click", () => { setState({ ws: "", wp: "", wd: "", wo: "" }); this.refresh(true); });
    $("wi-all").addEventListener("change", (e) => { setState({ wall: e.target.checked ? "1" : "0" }); this.drawShapes(); });
  },

  async show() {
    let t;
    try { t = await layersOf(S.m); } catch (err) { showError(err.message); return; }
    const convs = t.rows.filter((r) => r.type === "Conv2d" && r.shape);
    $("wi-layer").replaceChildren(...convs.map((r) => el("option", { value: r.name, text: r.name })));
    if (!convs.some((r) => r.name === S.wl)) setState({ wl: (convs[1] || convs[0] || {}).name || "", ws: "", wp: "", wd: "", wo: "" });
    $("wi-layer").value = S.wl;
    $("wi-all").checked = S.wall === "1";
    this.refresh(true);
  },

  refresh(now = false) {
    if (!S.wl) {
      showError(`${S.m} has no Conv2d layer that runs on an image: what-if changes a convolution.`, "whatif");
      return;
    }
    const n = (v) => (v ? [Number(v)] : null);
    const body = { image: S.i, model: S.m, layer: S.wl, stride: n(S.ws), padding: n(S.wp), dilation: n(S.wd),
      out_channels: S.wo ? Number(S.wo) : null, top: 16 };
    this.ch.submit({ path: "/api/whatif", body, key: JSON.stringify(body), ctx: `${S.i}|${S.m}|${S.wl}`,
      stale: $("view-whatif"), draw: (msg) => this.draw(msg) }, { now });
  },

  draw(msg) {
    const h = msg.header;
    const w = h.whatif;
    this.last = { header: h, bytes: msg.blocks[0] };
    const b = w.before, a = w.after;
    this.sliders.stride.show(a.stride[0], a.stride.join(" x ") === `${a.stride[0]} x ${a.stride[0]}` ? `${a.stride[0]}` : a.stride.join(" x "));
    this.sliders.padding.show(a.padding[0], `${a.padding[0]}`);
    this.sliders.dilation.show(a.dilation[0], `${a.dilation[0]}`);
    this.sliders.out.show(a.out_channels, `${a.out_channels}`, Math.min(4096, Math.max(64, 2 * b.out_channels)));
    const diff = ["stride", "padding", "dilation", "out_channels"].filter((k) => !same(a[k], b[k]));
    $("wi-settings").replaceChildren(
      el("div", {}, el("b", { text: w.layer }), ` (kernel ${b.kernel_size.join(" x ")}) on a ${w.input_size.join(" x ")} input`),
      ...["stride", "padding", "dilation", "out_channels"].map((k) => el("div", {},
        `${k.replace("_", " ")}: ${[].concat(b[k]).join(" x ")}`, diff.includes(k) ? el("b", { text: ` → ${[].concat(a[k]).join(" x ")}` }) : " (own)")));
    const broken = $("wi-broken");
    broken.hidden = !w.broken;
    if (w.broken) {
      broken.replaceChildren(el("b", { text: `The network breaks at ${w.broken.layer}` }), w.broken.reason);
    }
    setNotes($("wi-notes"), [...(w.notes || []), ...((w.maps && w.maps.notes) || [])]);
    this.drawShapes();
    const changedTo = (w.shapes.find((s) => s.layer === w.layer) || {}).after;
    if (h.depth) {
      $("wi-maps-title").textContent = `New maps of ${w.layer}: ${shapeText(changedTo)}; the ${h.depth} strongest`;
      this.grid.set({ bytes: msg.blocks[0], depth: h.depth, height: h.height, width: h.width, ranges: h.ranges, names: h.names }, false);
    } else {
      $("wi-maps-title").textContent = `New maps of ${w.layer}`;
      this.grid.clear("No maps: the changed network does not run on this image.");
    }
    markReady();
  },

  drawShapes() {
    if (!this.last) return;
    const w = this.last.header.whatif;
    const all = S.wall === "1";
    const head = el("tr", {}, el("th", { text: "layer" }), el("th", { text: "before" }), el("th", { text: "after" }));
    const rows = [];
    for (const s of w.shapes) {
      const isBroken = w.broken && s.layer === w.broken.layer;
      const changed = !same(s.before, s.after);
      if (!all && !changed && !isBroken && s.layer !== w.layer) continue;
      const after = s.after ? shapeText(s.after) : isBroken ? "breaks" : w.broken ? "not reached" : "–";
      rows.push(el("tr", { class: isBroken ? "broken" : !s.after && w.broken ? "unreached" : changed ? "changed" : "" },
        el("td", { text: s.layer }), el("td", { text: shapeText(s.before) }), el("td", { class: "after", text: changed || isBroken ? after : "same" })));
    }
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 3, class: "muted", text: "No shape changes: these are the layer's own settings." })));
    $("wi-shapes").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
  },
};

/* ------------------------------------------------------------------------------------------ */
/* View 4: uses (recognition, segmentation)                                                    */
/* ------------------------------------------------------------------------------------------ */

const uses = {
  clsCh: new Channel("classify"),
  segCh: new Channel("segment"),
  ownCh: new Channel("own", { follow: false }),

  init() {
    $("use-cam-layer").addEventListener("change", (e) => { setState({ cl: e.target.value }); this.classify(true); });
    $("use-method").addEventListener("change", (e) => { setState({ cm: e.target.value }); this.classify(true); });
    this.k = slider("use-k", (v) => { setState({ k: String(v) }); this.segment(); });
    $("use-scene").addEventListener("click", () => {
      const m = /^scene-(\d+)$/.exec(S.i);
      $("seed").value = m ? Number(m[1]) + 1 : Number($("seed").value) || 0;
      $("scene").click();
    });
  },

  async show() {
    let t;
    try { t = await layersOf(S.m); } catch (err) { showError(err.message); return; }
    this.table = t;
    const maps = t.rows.filter((r) => r.maps);
    $("use-cam-layer").replaceChildren(el("option", { value: "", text: "the model's default" }),
      ...maps.map((r) => el("option", { value: r.name, text: `${r.name} (${r.shapeText})` })));
    $("use-cam-layer").value = S.cl;
    $("use-method").value = S.cm;
    this.k.show(Number(S.k));
    const stages = t.stages.map((s) => s.name).filter((n) => maps.some((r) => r.name === n));
    this.stages = stages.length ? stages : maps.slice(0, 4).map((r) => r.name);
    const chosen = this.segLayers();
    $("use-seg-layers").replaceChildren(el("span", { class: "muted", text: "layers:" }), ...this.stages.map((n) => {
      const box = el("input", { type: "checkbox", value: n });
      box.checked = chosen.includes(n);
      box.addEventListener("change", () => {
        const picked = [...$("use-seg-layers").querySelectorAll("input:checked")].map((i) => i.value);
        if (!picked.length) { box.checked = true; return; }
        setState({ sl: picked.join(",") });
        this.segment(true);
      });
      return el("label", {}, box, n);
    }));
    this.classify();
    this.segment();
    this.own();
  },

  segLayers() {
    if (S.sl) return S.sl.split(",");
    return [this.stages[Math.min(1, this.stages.length - 1)]].filter(Boolean);
  },

  classify(now = false) {
    const body = { image: S.i, model: S.m, top: 5, cam_layer: S.cl || null, method: S.cm };
    this.clsCh.submit({ path: "/api/classify", body, key: JSON.stringify(body), ctx: `${S.i}|${S.m}`,
      draw: (r) => this.drawClassify(r), fail: (err) => this.failClassify(err) }, { now });
  },

  failClassify(err) {
    $("use-top").replaceChildren();
    fitCanvas($("use-cam"), 1, 1);
    $("use-cam-bar").replaceChildren();
    $("use-cam-caption").textContent = "";
    showError(err.message, "classify");
  },

  async drawClassify(r) {
    const top = r.classification.top;
    const best = top.length ? top[0].probability : 1;
    $("use-top").replaceChildren(el("thead", {}, el("tr", {}, ...["rank", "class", "probability", ""].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...top.map((c, i) => el("tr", {}, el("td", { text: i + 1 }), el("td", { text: c.name }),
        el("td", { text: c.probability.toFixed(4) }),
        el("td", { class: "p" }, el("span", { class: "pbar", style: `width:${Math.max(1, 100 * c.probability / Math.max(best, 1e-9))}%` }))))));
    const cam = r.cam;
    const hm = cam.heatmap;
    const hh = hm.length, ww = hm[0].length;
    const flat = hm.flat();
    const lo = Math.min(...flat), hi = Math.max(...flat);
    const bytes = new Uint8Array(flat.map((v) => (hi > lo ? Math.round((v - lo) / (hi - lo) * 255) : 0)));
    const scale = scaleOf(lo, hi);
    const ramp = scale.cmap === "viridis";
    const heat = mapCanvas(bytes, hh, ww, lutFor(lo, hi, scale, ramp ? "ramp" : 255));
    const img = await picture(inputUrl(S.i, S.m)).catch((err) => { showError(err.message); return null; });
    if (!img) return;
    drawOverlay($("use-cam"), img, heat, { alpha: ramp ? 0.85 : 0.55 });
    if (S.cl === "") $("use-cam-layer").options[0].text = `the model's default (${cam.layer})`;
    $("use-cam-caption").textContent = `${cam.method} at ${cam.layer} (${hh} x ${ww}, upsampled) for '${cam.class_name}' (p = ${cam.probability.toFixed(3)}, logit ${fmt(cam.score, 4)})`;
    setBar($("use-cam-bar"), scale, { label: (cam.method === "cam" ? "class evidence (fc weights x maps)" : "grad-cam (ReLU of gradient-weighted maps)") + (ramp ? ", clear where 0" : ", 55% over the image") });
    setNotes($("use-cls-notes"), [...(r.classification.notes || []), ...(cam.notes || [])]);
    markReady();
  },

  segment(now = false) {
    if (!this.stages) return;
    const body = { image: S.i, model: S.m, k: Number(S.k), layers: this.segLayers() };
    this.segCh.submit({ path: "/api/segment", body, key: JSON.stringify(body), ctx: `${S.i}|${S.m}`,
      stale: $("use-seg"), draw: (msg) => this.drawSegment(msg) }, { now });
  },

  async drawSegment(msg) {
    const h = msg.header;
    const seg = h.segmentation;
    const img = await picture(inputUrl(S.i, S.m)).catch((err) => { showError(err.message); return null; });
    if (!img) return;
    drawOverlay($("use-seg-image"), img, null, { h: h.height, w: h.width });
    const c = $("use-seg");
    const ctx = fitCanvas(c, h.height, h.width);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(mapCanvas(msg.blocks[0], h.height, h.width, labelLut()), 0, 0, c.width, c.height);
    legend($("use-seg-legend"), seg.names, labelColour, seg.shares);
    markReady();
    setNotes($("use-seg-notes"), [`k-means on the per-pixel feature vectors of ${seg.layers.join(" + ")} (upsampled to ${h.height} x ${h.width}); segment numbers carry no meaning`, ...(seg.notes || [])]);
  },

  own() {
    const body = { image: S.i, model: S.m, own: true };
    this.ownCh.submit({ path: "/api/segment", body, key: JSON.stringify(body), ctx: `${S.i}|${S.m}`,
      draw: (msg) => this.drawOwn(msg),
      fail: (err) => {
        $("use-own-pair").hidden = true;
        $("use-own-legend").replaceChildren();
        setNotes($("use-own-notes"), []);
        $("use-own-msg").textContent = err.status === 400 ? `This model has no segmentation head: ${err.message}` : err.message;
      } }, { now: true });
  },

  drawOwn(msg) {
    const h = msg.header;
    const seg = h.segmentation;
    $("use-own-pair").hidden = false;
    const background = seg.names[0] === "background" ? 0 : -1;
    const lut = labelLut(255, background);
    const colour = (i) => (i === background ? [236, 236, 236] : labelColour(background >= 0 ? i - 1 : i));
    const draw = (canvas, bytes) => {
      const ctx = fitCanvas(canvas, h.height, h.width);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(mapCanvas(bytes, h.height, h.width, lut), 0, 0, canvas.width, canvas.height);
    };
    draw($("use-own"), msg.blocks[0]);
    const truth = $("use-truth").closest("figure");
    truth.hidden = !h.truth;
    if (h.truth) {
      draw($("use-truth"), msg.blocks[1]);
      const a = msg.blocks[0], b = msg.blocks[1];
      let agree = 0;
      for (let i = 0; i < a.length; i++) agree += a[i] === b[i];
      $("use-truth-caption").textContent = `the truth (the pixels agree: ${(100 * agree / a.length).toFixed(1)}%)`;
      $("use-own-msg").textContent = `${seg.method} of ${seg.model}, ${h.height} x ${h.width} pixels, against the scene's true mask; same colours for the same class.`;
    } else {
      $("use-own-msg").textContent = "This image has no true mask: generate a scene (Scene seed, Generate) to compare the head with the truth.";
    }
    legend($("use-own-legend"), seg.names, colour, seg.shares);
    setNotes($("use-own-notes"), seg.notes);
  },
};

/* ------------------------------------------------------------------------------------------ */
/* View 5: channels (the channel atlas over the data named at start-up)                        */
/* ------------------------------------------------------------------------------------------ */

const STAGES = {
  maps: ["reading the maps", "image passes (two over the data)"],
  patches: ["cropping the top patches", ""],
  visualisation: ["rendering the images", "optimisation steps"],
};
const COLUMNS = { channel: "channel", rendered: "rendered image", concept: "concept", iou: "IoU",
  mean: "mean activation", top: "top value" };

const chan = {
  timer: 0,
  holding: false,
  shown: null,
  result: null,

  init() {
    const keep = (id, key, read = (e) => e.target.value.trim()) =>
      $(id).addEventListener("change", (e) => setState({ [key]: read(e) }));
    keep("ch-layer", "chl");
    keep("ch-channels", "chc", (e) => e.target.value.replace(/\s+/g, ""));
    keep("ch-k", "chk");
    keep("ch-steps", "chs");
    $("ch-vis").addEventListener("change", (e) => { setState({ chv: e.target.checked ? "1" : "0" }); $("ch-steps").disabled = !e.target.checked; });
    $("ch-compute").addEventListener("click", () => this.compute());
    $("ch-cancel").addEventListener("click", () => this.cancel());
    $("ch-filter").addEventListener("input", (e) => { setState({ chf: e.target.value }); this.filter(); });
    $("ch-detectors").addEventListener("change", (e) => { setState({ chdet: e.target.checked ? "1" : "0" }); this.filter(); });
  },

  async show() {
    markReady();
    const data = G.info.data;
    const limits = G.info.limits;
    $("ch-nodata").hidden = !!data;
    $("ch-panel").hidden = !data;
    for (const node of $("ch-form").querySelectorAll("input, select, button")) node.disabled = !data;
    $("ch-caps").textContent = `At most ${limits.channels} channels, ${limits.steps} steps and ${limits.k} patches a channel per computation; one computation at a time.`;
    if (!data) { $("ch-data").textContent = "No data: start the explorer with --data FOLDER."; return; }
    $("ch-data").replaceChildren(el("b", { text: `${data.images.toLocaleString("en-US")} images` }),
      ` from '${data.description}'${data.kind === "store" ? " (a store)" : ""}${data.masks ? ", with masks: their classes are concepts too" : ""}`);
    let t;
    try { t = await layersOf(S.m); } catch (err) { showError(err.message); return; }
    const rows = t.rows.filter((r) => r.maps && (!data.layers || data.layers.includes(r.name)));
    $("ch-layer").replaceChildren(...rows.map((r) => el("option", { value: r.name, text: `${r.name} (${r.shapeText})` })));
    if (!rows.some((r) => r.name === S.chl)) {
      const stages = t.stages.filter((s) => rows.some((r) => r.name === s.name));
      setState({ chl: (stages[stages.length - 1] || rows[rows.length - 1] || {}).name || "" });
    }
    $("ch-layer").value = S.chl;
    $("ch-channels").value = S.chc;
    $("ch-k").value = S.chk;
    $("ch-vis").checked = S.chv === "1";
    $("ch-steps").value = S.chs;
    $("ch-steps").disabled = S.chv !== "1";
    $("ch-filter").value = S.chf;
    $("ch-detectors").checked = S.chdet === "1";
    if (!this.timer) this.poll();  // a computation running or done (after a reload) is shown
  },

  async compute() {
    for (const [id, key] of [["ch-layer", "chl"], ["ch-k", "chk"], ["ch-steps", "chs"]]) setState({ [key]: $(id).value });
    setState({ chc: $("ch-channels").value.replace(/\s+/g, "") });
    const body = { model: S.m, layer: S.chl, channels: S.chc || null, k: Number(S.chk),
      visualise: S.chv === "1", steps: Number(S.chs) };
    clearError("channels");
    try {
      this.progress(await api("/api/channels", body));
      this.poll();
    } catch (err) { showError(err.message, "channels"); }
  },

  async cancel() {
    try { this.progress(await api("/api/channels/cancel", {})); } catch (err) { showError(err.message, "channels"); }
  },

  hold(on) {
    if (on !== this.holding) { this.holding = on; busy(on ? +1 : -1); }
  },

  async poll() {
    clearTimeout(this.timer);
    this.timer = 0;
    let st;
    try { st = await api("/api/channels/progress"); } catch (err) {
      this.hold(false);
      showError(err.message, "channels");
      return;
    }
    this.progress(st);
    if (st.state === "running") {
      this.hold(true);
      this.timer = setTimeout(() => this.poll(), 300);
      return;
    }
    if (st.state === "done" && st.job !== this.shown) {
      try { this.draw(await api(`/api/channels/result?job=${encodeURIComponent(st.job)}`)); } catch (err) { showError(err.message, "channels"); }
    }
    if (st.state === "failed" && st.job !== this.shown) { this.shown = st.job; showError(st.error, "channels"); }
    this.hold(false);
  },

  progress(st) {
    const box = $("ch-progress");
    box.hidden = st.state === "idle" || (st.state === "done" && st.job === this.shown);
    box.dataset.state = st.state;
    $("ch-compute").disabled = st.state === "running" || !G.info.data;
    $("ch-cancel").hidden = st.state !== "running";
    const [what, unit] = STAGES[st.stage] || ["starting", ""];
    const share = st.total ? st.done / st.total : 0;
    if (st.state === "running") {
      $("ch-stage").textContent = st.cancelling ? "cancelling…" : `${what}…`;
      $("ch-count").textContent = st.total ? `${st.done.toLocaleString("en-US")} / ${st.total.toLocaleString("en-US")}${unit ? " " + unit : ""}` : "";
    } else {
      $("ch-stage").textContent = { done: "done", failed: "failed", cancelled: "cancelled" }[st.state] || st.state;
      $("ch-count").textContent = `after ${fmt(st.seconds)} s`;
    }
    $("ch-bar").style.width = `${(st.state === "done" ? 1 : share) * 100}%`;
    const at = st.stages.indexOf(st.stage);
    $("ch-stages").replaceChildren(...st.stages.map((name, i) => el("li", {
      class: st.state === "done" || i < at ? "past" : i === at ? "now" : "", text: STAGES[name][0] })));
    if (st.settings) {
      $("ch-title").textContent = `Channels of ${st.settings.layer}`;
    }
  },

  draw(result) {
    this.shown = result.job;
    this.result = result;
    const a = result.atlas;
    const rows = a.rows;
    const pictures = new Map(result.pictures.map((p) => [p.channel, p]));
    const spans = {};
    for (const key of ["iou", "mean", "top"]) {
      const values = rows.map((r) => r[key]).filter((v) => v !== null && Number.isFinite(v));
      spans[key] = values.length ? [Math.min(0, ...values), Math.max(...values)] : [0, 0];
    }
    const vis = a.visualization;
    $("ch-title").textContent = `Channels of ${a.layer} (${a.model})`;
    const shares = Object.entries(a.shares).map(([k, v]) => el("span", {}, el("b", { text: `${Math.round(100 * v)}%` }), ` ${k === "none" ? "detect nothing" : k}`));
    const seconds = Object.entries(a.seconds).map(([k, v]) => `${k} ${v.toFixed(1)} s`).join(", ");
    $("ch-summary").replaceChildren(
      el("span", {}, `${a.channels.length} channels, ${a.n_images.toLocaleString("en-US")} images from '${a.source}'${Object.keys(a.skipped).length ? ` (${Object.keys(a.skipped).length} could not be read)` : ""}`),
      ...shares, el("span", { text: seconds }));
    const [fh, fw] = a.field_size;
    $("ch-help").textContent = `Top patches: the ${a.k} image regions that drive the channel hardest (at most one per image), each the receptive field of the value (${fh} x ${fw} px, stride ${fmt(a.stride[0])}), strongest first; grey where the field runs past the image; hover for the image and value. `
      + `Concept: the one whose pixels best overlap the top ${fmt(100 * a.quantile)}% of the channel's values (network dissection over ${a.concepts.length} concepts); a detector when the IoU reaches ${fmt(a.threshold)}. `
      + (vis ? `Rendered image: optimised to drive the channel's mean (${vis.size} px, ${vis.steps} steps, seed ${vis.seed}), with the mean it reaches and that of its start. ` : "")
      + "Click a heading to sort.";
    const heading = (key, note) => el("th", { class: "sort", "data-key": key, title: note,
      onclick: () => this.sortBy(key, key === S.cho ? S.chd !== "1" : !(key === "channel" || key === "concept")) },
    COLUMNS[key] + " ", el("span", { class: "arrow" }));
    const head = el("tr", {}, heading("channel", "channel number"),
      heading("rendered", "mean activation of the rendered image"),
      el("th", { text: `top ${a.k} patches, strongest first` }),
      heading("concept", "best concept (detectors first, by name)"),
      heading("iou", "IoU of the top quantile with the best concept"),
      heading("mean", "mean over every position of every image"),
      heading("top", "the channel's largest value over the data"));
    const strip = `width:${50 * Math.min(9, Math.max(1, a.k))}px`;  // up to 9 patches a line
    const body = rows.map((r) => this.row(r, pictures.get(r.channel), spans, result.swatches, strip));
    $("ch-table").replaceChildren(el("thead", {}, head), el("tbody", {}, ...body));
    setNotes($("ch-notes"), a.notes);
    $("ch-tools").hidden = false;
    this.sortBy(COLUMNS[S.cho] ? S.cho : "channel", S.chd === "1");
    this.filter();
  },

  row(r, pics, spans, swatches, strip) {
    const bar = (value, [lo, hi]) => (value === null || hi <= lo ? "" : el("div", { class: "bar" },
      el("i", { style: `width:${(100 * Math.min(1, Math.max(0, (value - lo) / (hi - lo)))).toFixed(1)}%` })));
    const rendered = r.rendered === null ? el("span", { class: "none", text: "not rendered" })
      : [el("img", { class: "v", src: pics.rendered, alt: `channel ${r.channel} rendered` }),
        el("div", { class: "vcap", text: `mean ${fmt(r.rendered)} (start ${fmt(r.rendered_start, 2)})` })];
    const patches = r.patches.length ? r.patches.map((p, i) => {
      const clipped = p.clipped_share ? `; ${Math.round(100 * p.clipped_share)}% outside the image (grey)` : "";
      const title = `${p.name}: value ${fmt(p.value, 4)} at (${p.position[0]}, ${p.position[1]}) of the map; field rows ${p.box[0]}..${p.box[2] - 1}, columns ${p.box[1]}..${p.box[3] - 1}${clipped}`;
      return el("img", { class: Math.max(...p.crop_shape.slice(1)) < 46 ? "p small" : "p", src: pics.patches[i], alt: p.name, title });
    }) : el("span", { class: "none", text: "no value" });
    const sw = swatches[r.concept];
    const concept = r.detector
      ? [sw ? el("span", { class: "sw", style: `background:rgb(${sw.join(",")})` }) : null, `${r.concept} `,
        el("span", { class: `cat ${r.category}`, text: r.category })]
      : el("span", { class: "none", text: `none (best: ${r.concept}, ${r.category})` });
    const tr = el("tr", { "data-channel": r.channel },
      el("td", { text: r.channel }), el("td", { class: "l" }, rendered), el("td", { class: "patches" }, el("div", { class: "strip", style: strip }, patches)),
      el("td", { class: "l" }, concept), el("td", {}, r.iou.toFixed(3), bar(r.iou, spans.iou)),
      el("td", {}, fmt(r.mean, 4), bar(r.mean, spans.mean)),
      el("td", {}, r.top === null ? "" : fmt(r.top, 4), bar(r.top, spans.top)));
    tr.row = r;
    tr.text = `${r.concept} ${r.category}${r.detector ? "" : " none"}`.toLowerCase();
    return tr;
  },

  sortBy(key, desc) {
    setState({ cho: key, chd: desc ? "1" : "0" });
    const body = $("ch-table").tBodies[0];
    if (!body) return;
    const value = (r) => (key === "concept" ? (r.detector ? "" : "\uffff") + r.concept.toLowerCase() : r[key]);
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = value(a.row), y = value(b.row);
      if (x === y) return a.row.channel - b.row.channel;
      if (x === null) return 1;
      if (y === null) return -1;
      const c = typeof x === "string" ? x.localeCompare(y) : x - y;
      return desc ? -c : c;
    });
    body.append(...rows);
    for (const th of $("ch-table").querySelectorAll("th.sort")) {
      const on = th.dataset.key === key;
      th.querySelector(".arrow").textContent = on ? (desc ? "▼" : "▲") : "";
      th.setAttribute("aria-sort", on ? (desc ? "descending" : "ascending") : "none");
    }
    this.caption();
  },

  filter() {
    const body = $("ch-table").tBodies[0];
    if (!body) return;
    const text = S.chf.trim().toLowerCase();
    const only = S.chdet === "1";
    for (const tr of body.rows) {
      tr.classList.toggle("hidden", !((!text || tr.text.includes(text)) && (!only || tr.row.detector)));
    }
    this.caption();
  },

  caption() {
    const body = $("ch-table").tBodies[0];
    if (!body) return;
    const shown = body.querySelectorAll("tr:not(.hidden)").length;
    $("ch-shown").textContent = `showing ${shown} of ${body.rows.length} channels; sorted by ${COLUMNS[S.cho] || "channel"}, ${S.chd === "1" ? "largest first" : "smallest first"}`;
  },
};

/* ------------------------------------------------------------------------------------------ */
/* Export: the view as shown, composited onto one canvas (canvases, images, text, boxes)        */
/* ------------------------------------------------------------------------------------------ */

function parseColour(text) {
  const m = text.match(/rgba?\(([^)]+)\)/);
  if (!m) return null;
  const p = m[1].split(/[,\s/]+/).filter(Boolean).map(Number);
  return p.length === 4 && p[3] === 0 ? null : text;
}

function snapshot(root, title) {
  const box = root.getBoundingClientRect();
  const top = 30, ratio = 2;
  const out = document.createElement("canvas");
  out.width = Math.ceil(box.width + 20) * ratio;
  out.height = Math.ceil(box.height + top + 10) * ratio;
  const ctx = out.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.fillStyle = getComputedStyle(document.body).backgroundColor || "#fff";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.fillStyle = "#1d2330";
  ctx.font = "600 14px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  ctx.fillText(title, 10, 16);
  ctx.translate(10 - box.left, top - box.top);
  const full = [box.left, box.top, box.right, box.bottom];
  const range = document.createRange();

  function text(node, cs, clip) {
    const raw = node.textContent;
    if (!raw.trim()) return;
    ctx.save();
    ctx.beginPath(); ctx.rect(clip[0], clip[1], clip[2] - clip[0], clip[3] - clip[1]); ctx.clip();
    ctx.font = `${cs.fontStyle} ${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
    ctx.fillStyle = cs.color;
    ctx.textBaseline = "middle";
    range.selectNodeContents(node);
    const rects = range.getClientRects();
    if (rects.length === 1 && !cs.whiteSpace.startsWith("pre")) {
      const r = rects[0];
      ctx.fillText(raw.replace(/\s+/g, " ").trim(), r.left + (/^\s/.test(raw) && r.width > 4 ? ctx.measureText(" ").width : 0), r.top + r.height / 2);
    } else {
      const re = /\S+/g;
      let m;
      while ((m = re.exec(raw))) {
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        const r = range.getBoundingClientRect();
        if (r.width) ctx.fillText(m[0], r.left, r.top + r.height / 2);
      }
    }
    ctx.restore();
  }

  function control(node, cs, r) {
    ctx.fillStyle = cs.color;
    ctx.font = `${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
    ctx.textBaseline = "middle";
    if (node.type === "range") {
      const f = (node.value - node.min) / ((node.max - node.min) || 1);
      ctx.fillStyle = node.disabled ? "#ccd" : "#9aa8c2";
      ctx.fillRect(r.left + 6, r.top + r.height / 2 - 2, r.width - 12, 4);
      ctx.beginPath();
      ctx.arc(r.left + 6 + f * (r.width - 12), r.top + r.height / 2, 6, 0, 2 * Math.PI);
      ctx.fillStyle = node.disabled ? "#aab" : "#2f5fb3";
      ctx.fill();
    } else if (node.type === "checkbox" || node.type === "radio") {
      ctx.strokeStyle = "#5d6677";
      ctx.lineWidth = 1;
      const s = Math.min(r.width, r.height);
      ctx.strokeRect(r.left + 0.5, r.top + 0.5, s - 1, s - 1);
      if (node.checked) { ctx.fillStyle = "#2f5fb3"; ctx.fillRect(r.left + 3, r.top + 3, s - 6, s - 6); }
    } else {
      const value = node.tagName === "SELECT" ? (node.selectedOptions[0] || {}).text || "" : node.value;
      ctx.save();
      ctx.beginPath(); ctx.rect(r.left, r.top, r.width - (node.tagName === "SELECT" ? 14 : 2), r.height); ctx.clip();
      ctx.fillText(value, r.left + 5, r.top + r.height / 2);
      ctx.restore();
      if (node.tagName === "SELECT") ctx.fillText("▾", r.right - 13, r.top + r.height / 2);
    }
  }

  function walk(node, clip) {
    for (const child of node.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) { text(child, getComputedStyle(node), clip); continue; }
      if (child.nodeType !== Node.ELEMENT_NODE) continue;
      const cs = getComputedStyle(child);
      if (cs.display === "none" || cs.visibility === "hidden") continue;
      const r = child.getBoundingClientRect();
      const mine = [Math.max(clip[0], r.left), Math.max(clip[1], r.top), Math.min(clip[2], r.right), Math.min(clip[3], r.bottom)];
      const inside = mine[2] > mine[0] && mine[3] > mine[1];
      if (inside) {
        ctx.save();
        ctx.beginPath(); ctx.rect(clip[0], clip[1], clip[2] - clip[0], clip[3] - clip[1]); ctx.clip();
        ctx.globalAlpha = Number(cs.opacity);
        const bg = parseColour(cs.backgroundColor);
        if (bg) { ctx.fillStyle = bg; ctx.fillRect(r.left, r.top, r.width, r.height); }
        if (child.classList.contains("pad")) {
          ctx.strokeStyle = "rgba(0,0,0,.3)";
          for (let k = -r.height; k < r.width; k += 4) {
            ctx.beginPath(); ctx.moveTo(r.left + k, r.bottom); ctx.lineTo(r.left + k + r.height, r.top); ctx.stroke();
          }
        }
        for (const [side, x, y, w, h] of [["Top", r.left, r.top, r.width, 0], ["Bottom", r.left, r.bottom, r.width, 0],
          ["Left", r.left, r.top, 0, r.height], ["Right", r.right, r.top, 0, r.height]]) {
          const bw = parseFloat(cs[`border${side}Width`]);
          const bc = parseColour(cs[`border${side}Color`]);
          if (bw > 0 && bc && cs[`border${side}Style`] !== "none") {
            ctx.fillStyle = bc;
            ctx.fillRect(side === "Right" ? x - bw : x, side === "Bottom" ? y - bw : y, w || bw, h || bw);
          }
        }
        if (child.tagName === "CANVAS" && child.width && child.height) {
          ctx.imageSmoothingEnabled = cs.imageRendering !== "pixelated";
          ctx.drawImage(child, r.left + parseFloat(cs.borderLeftWidth), r.top + parseFloat(cs.borderTopWidth),
            r.width - parseFloat(cs.borderLeftWidth) - parseFloat(cs.borderRightWidth),
            r.height - parseFloat(cs.borderTopWidth) - parseFloat(cs.borderBottomWidth));
        } else if (child.tagName === "IMG" && child.complete) {
          ctx.drawImage(child, r.left, r.top, r.width, r.height);
        } else if (child.tagName === "INPUT" || child.tagName === "SELECT") {
          control(child, cs, r);
        }
        ctx.restore();
      }
      if (["CANVAS", "IMG", "INPUT", "SELECT", "OPTION", "SCRIPT"].includes(child.tagName)) continue;
      const clips = cs.overflow !== "visible" || cs.overflowX !== "visible" || cs.overflowY !== "visible";
      walk(child, clips ? mine : clip);
    }
  }
  walk(root, full);
  return out;
}

function exportView() {
  const view = $(`view-${S.v}`);
  const im = G.images.get(S.i);
  const data = G.info && G.info.data ? `data '${G.info.data.description}'` : "no data";
  const title = `featuremap explorer · ${view.dataset.title} · model ${S.m} · ${S.v === "channels" ? data : `image ${im ? im.name : S.i}`}`;
  const canvas = snapshot(view, title);
  canvas.toBlob((blob) => {
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: `featuremap-${S.v}.png` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }, "image/png");
}

/* ------------------------------------------------------------------------------------------ */
/* Start                                                                                       */
/* ------------------------------------------------------------------------------------------ */

const VIEWS = { lab, net, whatif, uses, channels: chan };

function activate(view) {
  setState({ v: view });
  for (const [name] of Object.entries(VIEWS)) {
    $(`view-${name}`).hidden = name !== view;
  }
  for (const b of document.querySelectorAll("#tabs button")) b.setAttribute("aria-selected", String(b.dataset.view === view));
  // the Channels view reads the data the explorer was started with, not the image
  for (const id of ["image", "upload", "seed", "scene"]) {
    const el = $(id);
    if (el.dataset.ownTitle === undefined) el.dataset.ownTitle = el.title;
    el.disabled = view === "channels";
    el.title = view === "channels" ? "The Channels view reads the data the explorer was started with (--data), not this image" : el.dataset.ownTitle;
  }
  VIEWS[view].show();
}

function markReady() {
  if (fmStats.ready !== null) return;
  const nav = performance.getEntriesByType("navigation")[0];
  const dcl = nav ? nav.domContentLoadedEventStart : 0;
  requestAnimationFrame(() => {
    fmStats.ready = performance.now() - dcl;
    performance.mark("featuremap:first-maps");
    document.body.dataset.ready = "1";
  });
}

function bindShared() {
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => activate(b.dataset.view));
  $("model").addEventListener("change", (e) => {
    for (const v of Object.values(VIEWS)) for (const c of Object.values(v)) if (c instanceof Channel) c.cancel();
    setState({ m: e.target.value, ll: "", nl: "", nch: "", nat: "", wl: "", ws: "", wp: "", wd: "", wo: "", cl: "", sl: "", at: "", chl: "",
      src: S.src === "layer" ? "layer" : S.src });
    $("model-info").textContent = "";
    layersOf(S.m).then((t) => setModelInfo(t.weights)).catch(() => {});
    sharedChanged();
  });
  $("image").addEventListener("change", (e) => chooseImage(e.target.value));
  $("upload").addEventListener("click", () => $("file").click());
  $("file").addEventListener("change", (e) => { upload(e.target.files[0]); e.target.value = ""; });
  $("scene").addEventListener("click", async () => {
    const seed = Math.max(0, Math.floor(Number($("seed").value) || 0));
    try {
      const im = await api("/api/images/scene", { seed });
      rememberImage(im);
      await chooseImage(im.id);
    } catch (err) { showError(err.message); }
  });
  $("export").addEventListener("click", exportView);
  $("error-close").addEventListener("click", () => clearError());
  let depth = 0;
  window.addEventListener("dragenter", (e) => {
    if (![...e.dataTransfer.types].includes("Files")) return;
    depth += 1; $("drop").hidden = false;
  });
  window.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) $("drop").hidden = true; });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0; $("drop").hidden = true;
    const file = e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) upload(file);
  });
  let resizing = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => GRIDS.forEach((g) => g.fit()), 150);
  });
  window.addEventListener("hashchange", () => {
    const before = { ...S };
    readHash();
    if (same(before, S)) return;
    if (before.m !== S.m) $("model").value = S.m;
    if (before.i !== S.i) { chooseImage(S.i); }
    activate(S.v);
  });
}

async function start() {
  readHash();
  bindShared();
  for (const v of Object.values(VIEWS)) v.init();
  try {
    G.info = await api("/api/info");
  } catch (err) { showError(err.message); return; }
  const info = G.info;
  if (!S.m || !info.models.includes(S.m)) S.m = info.model;
  if (!S.i) S.i = info.image;
  $("model").replaceChildren(...info.models.map((m) => el("option", { value: m, text: m })));
  $("model").value = S.m;
  if (S.m === info.model) setModelInfo(info.weights);
  else layersOf(S.m).then((t) => setModelInfo(t.weights)).catch(() => {});
  lab.fillFilterNames();
  writeHash();
  fillImageSelect();
  const ready = ensureImage(S.i).then((im) => {
    $("image").value = im.id;
    $("image-info").textContent = `${im.width} x ${im.height} px${im.has_truth ? ", with a true label mask" : ""}`;
    return true;
  }).catch((err) => { showError(err.message); return false; });
  // The start image is on the server already; another one (a permalink's) is made first.
  if (S.i !== info.image && !(await ready)) return;
  activate(S.v);
  await ready;
  if (S.i !== info.image && info.image) ensureImage(info.image).catch(() => {});
}

start();
