"""The channel atlas as one self-contained HTML page, sortable by every column.

One row per channel: its number, its rendered image (and the mean activation that image
reaches), its top patches (strongest first; grey where a receptive field runs past the image),
its best concept with the IoU, its mean activation over the dataset and its top value. A click
on a column heading sorts by it (again: the other way); a filter box keeps the rows whose
concept or category contains the text. Every image is inline (PNG or JPEG data URIs) and the
script is inline: the page opens offline and can be mailed as it is. Names of images, layers
and classes are escaped: they are shown as data, never run as markup.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featuremap.atlas.channels import check_sort
from featuremap.outputs import atomic_write, check_output

if TYPE_CHECKING:
    from featuremap.atlas.channels import ChannelAtlas

__all__ = ["atlas_page", "image_uri", "save_page"]

THUMB = 96  # largest side of an inline patch, in pixels (larger crops are downscaled)
SORTABLE = {"channel": "channel", "rendered": "rendered image", "concept": "concept",
            "iou": "IoU", "mean": "mean activation", "top": "top value"}

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;
max-width:1500px;padding:0 1.2em;color:#1d232b;background:#fff;line-height:1.45}
h1{font-size:1.6em;margin:.2em 0}.sub{color:#48525c;margin:.2em 0 .8em}
.help{font-size:.9em;color:#333c45;max-width:1100px}
.controls{margin:.8em 0;display:flex;gap:1.2em;align-items:center;flex-wrap:wrap;
font-size:.92em}.controls input[type=search]{padding:.2em .4em;width:14em}
.summary span{display:inline-block;margin-right:1em}
table{border-collapse:collapse;font-size:.88em}th,td{border-bottom:1px solid #e1e5ea;
padding:.35em .5em;vertical-align:middle;text-align:right}
th{background:#f3f5f7;position:sticky;top:0;z-index:1;text-align:left;white-space:nowrap}
th.sort{cursor:pointer;user-select:none;color:#174f8a}th.sort:hover{background:#e6edf5}
th .arrow{color:#8a96a3;font-size:.8em}td.l{text-align:left}
td.patches{text-align:left;white-space:nowrap}
img.p{width:60px;height:60px;margin:1px;border:1px solid #d0d5db;vertical-align:middle;
image-rendering:auto}img.small{image-rendering:pixelated}
img.v{width:84px;height:84px;border:1px solid #d0d5db;display:block}
.vcap{font-size:.78em;color:#5b6570;text-align:left}
.bar{height:5px;background:#e9edf1;margin-top:3px;min-width:70px}
.bar i{display:block;height:5px;background:#4b7bb5}
.cat{font-size:.78em;padding:0 .35em;border-radius:3px;color:#fff}
.cat.colour{background:#b5651d}.cat.shape{background:#2f7d4a}.cat.class{background:#6a4c93}
.none{color:#8a96a3}.sw{display:inline-block;width:.9em;height:.9em;border:1px solid #777;
vertical-align:-.1em;margin-right:.3em}
tr.hidden{display:none}footer{margin-top:2em;color:#77808a;font-size:.85em}
"""

SCRIPT = """
(function(){
const table=document.getElementById('atlas');const body=table.tBodies[0];
let key=table.dataset.sort,desc=table.dataset.desc==='1';
function value(row,k){const v=row.dataset[k];if(k==='concept')return v;
  return v===''?null:parseFloat(v);}
function sortBy(k,d){const rows=Array.from(body.rows);
  rows.sort(function(a,b){const x=value(a,k),y=value(b,k);
    if(x===y)return parseInt(a.dataset.channel)-parseInt(b.dataset.channel);
    if(x===null)return 1;if(y===null)return -1;
    const c=(typeof x==='string')?x.localeCompare(y):x-y;return d?-c:c;});
  rows.forEach(function(r){body.appendChild(r);});key=k;desc=d;
  table.querySelectorAll('th.sort').forEach(function(th){
    th.querySelector('.arrow').textContent=th.dataset.key===k?(d?'\\u25bc':'\\u25b2'):'';
    th.setAttribute('aria-sort',th.dataset.key===k?(d?'descending':'ascending'):'none');});
  document.getElementById('sorted').textContent=
    document.querySelector('th[data-key="'+k+'"]').dataset.label+(d?', largest first':
    ', smallest first');}
table.querySelectorAll('th.sort').forEach(function(th){th.addEventListener('click',function(){
  const k=th.dataset.key;sortBy(k,k===key?!desc:!(k==='channel'||k==='concept'));});});
const filter=document.getElementById('filter'),only=document.getElementById('detectors');
function apply(){const t=filter.value.trim().toLowerCase();let shown=0;
  Array.from(body.rows).forEach(function(r){const hit=(!t||r.dataset.text.indexOf(t)>=0)&&
    (!only.checked||r.dataset.detector==='1');r.classList.toggle('hidden',!hit);
    if(hit)shown++;});document.getElementById('shown').textContent=shown;}
filter.addEventListener('input',apply);only.addEventListener('change',apply);
sortBy(key,desc);apply();
})();
"""


def image_uri(pixels: np.ndarray, *, largest: int = THUMB) -> str:
    """A ``(C, H, W)`` float image in ``[0, 1]`` as a data URI: PNG when small (sharp pixels),
    JPEG when larger (photos), downscaled so its largest side is at most ``largest``."""
    from PIL import Image

    a = np.clip(np.asarray(pixels, np.float32), 0, 1)
    a = (np.moveaxis(a, 0, -1) * 255 + 0.5).astype(np.uint8)
    picture = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a[..., :3])
    if max(picture.size) > largest:
        scale = largest / max(picture.size)
        picture = picture.resize((max(1, round(picture.width * scale)),
                                  max(1, round(picture.height * scale))),
                                 Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small = max(picture.size) <= 48
    picture.save(buffer, format="PNG" if small else "JPEG", quality=88)
    kind = "png" if small else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _bar(value: float | None, low: float, high: float) -> str:
    if value is None or not np.isfinite(value) or high <= low:
        return ""
    share = min(1.0, max(0.0, (value - low) / (high - low)))
    return f'<div class="bar"><i style="width:{share * 100:.1f}%"></i></div>'


def _number(value: float | None) -> str:
    return "" if value is None or not np.isfinite(value) else repr(float(value))


def _span(values: list[float | None]) -> tuple[float, float]:
    """The range a column's bars span: from min(0, smallest) to the largest."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return 0.0, 0.0
    return min(0.0, min(finite)), max(finite)


def _swatch(name: str, category: str) -> str:
    from featuremap.atlas.concepts import PROTOTYPES

    if category != "colour" or name not in PROTOTYPES:
        return ""
    r, g, b = PROTOTYPES[name]
    return f'<span class="sw" style="background:rgb({r},{g},{b})"></span>'


def _patch_cells(atlas: ChannelAtlas, i: int) -> str:
    cells = []
    for p in atlas.patches.patches[i]:
        clipped = float(p.clipped.mean()) if p.clipped.size else 0.0
        title = (f"{p.name}: value {p.value:.4g} at ({p.position[0]}, {p.position[1]}) of the "
                 f"map; field rows {p.box[0]}..{p.box[2] - 1}, columns {p.box[1]}.."
                 f"{p.box[3] - 1}" + (f"; {clipped:.0%} outside the image (grey)"
                                      if clipped else ""))
        small = " small" if max(p.crop.shape[1:]) < 60 else ""
        cells.append(f'<img class="p{small}" src="{image_uri(p.crop)}" '
                     f'alt="{html.escape(p.name)}" title="{html.escape(title)}">')
    return "".join(cells) or '<span class="none">no value</span>'


def _row(atlas: ChannelAtlas, i: int, spans: dict[str, tuple[float, float]]) -> str:
    r = atlas.row(atlas.channels[i])
    vis = atlas.visualization
    if vis is None:
        rendered = '<span class="none">not rendered</span>'
    else:
        rendered = (f'<img class="v" src="{image_uri(vis.images[i], largest=128)}" '
                    f'alt="channel {r["channel"]} rendered">'
                    f'<div class="vcap">mean {r["rendered"]:.3g} '
                    f'(start {r["rendered_start"]:.2g})</div>')
    name, category = html.escape(r["concept"]), html.escape(r["category"])
    if r["detector"]:
        concept = (f'{_swatch(r["concept"], r["category"])}{name} '
                   f'<span class="cat {category}">{category}</span>')
    else:
        concept = f'<span class="none">none (best: {name}, {category})</span>'
    text = f'{r["concept"]} {r["category"]}' + ("" if r["detector"] else " none")
    data = {"channel": r["channel"], "mean": _number(r["mean"]), "top": _number(r["top"]),
            "iou": _number(r["iou"]), "rendered": _number(r["rendered"]),
            "concept": r["concept"].lower() if r["detector"] else "\uffff" + r["concept"].lower(),
            "detector": int(r["detector"]), "text": text.lower()}
    attrs = " ".join(f'data-{k}="{html.escape(str(v))}"' for k, v in data.items())
    top = "" if r["top"] is None else f'{r["top"]:.4g}'
    return (f'<tr {attrs}><td>{r["channel"]}</td><td class="l">{rendered}</td>'
            f'<td class="patches">{_patch_cells(atlas, i)}</td><td class="l">{concept}</td>'
            f'<td>{r["iou"]:.3f}{_bar(r["iou"], *spans["iou"])}</td>'
            f'<td>{r["mean"]:.4g}{_bar(r["mean"], *spans["mean"])}</td>'
            f'<td>{top}{_bar(r["top"], *spans["top"])}</td></tr>')


def _heading(key: str, text: str, note: str) -> str:
    return (f'<th class="sort" data-key="{key}" data-label="{html.escape(SORTABLE[key])}" '
            f'title="{html.escape(note)}">{text} <span class="arrow"></span></th>')


def atlas_page(atlas: ChannelAtlas, *, sort: str = "channel") -> str:
    """The page of ``atlas`` (see the module docstring), first sorted by ``sort``."""
    check_sort(sort, rendered=atlas.visualization is not None)
    d = atlas.dissection
    vis = atlas.visualization
    rows = [atlas.row(c) for c in atlas.channels]
    spans = {k: _span([r[k] for r in rows]) for k in ("iou", "mean", "top")}
    e = html.escape
    k = atlas.patches.values.shape[1]
    fh, fw = atlas.patches.field_size
    stride = atlas.patches.stride[0]
    concepts = ", ".join(f"{n} {c}" for c, n in _counts(d).items())
    sub = (f"{len(atlas.channels)} channels of {e(atlas.layer)}, {atlas.n_images:,} images from "
           f"'{e(atlas.source)}'" + (f" ({len(atlas.skipped)} could not be read)"
                                     if atlas.skipped else ""))
    shares = atlas.concepts.shares(d.categories)
    summary = "".join(f"<span><b>{v:.0%}</b> {e(k2 if k2 != 'none' else 'detect nothing')}"
                      "</span>" for k2, v in shares.items())
    bars = "; ".join(f"{SORTABLE[c]} from {lo:.3g} to {hi:.3g}" for c, (lo, hi) in spans.items())
    help_text = (
        f"Each row is one channel. <b>Top patches</b>: the {k} image regions that drive it "
        f"hardest over the dataset (at most {atlas.patches.per_image or 'any number of'} per "
        f"image), each the receptive field of the strongest value ({fh} x {fw} px, stride "
        f"{stride:g}); grey where the field runs past the image; hover for the image and "
        f"value. <b>Concept</b>: the concept whose pixels best overlap the top {d.quantile:.2%}"
        f" of the channel's values, upsampled to the image (network dissection over "
        f"{len(d.concepts)} concepts: {e(concepts)}); a detector when the IoU reaches "
        f"{d.threshold:g}. <b>Mean activation</b>: over every position of every image. "
        + ("<b>Rendered image</b>: an image optimised to maximise the channel's mean "
           f"activation ({vis.size} px, {vis.steps} steps, seed {vis.seed}), with the mean it "
           "reaches and that of its starting noise. " if vis is not None else "")
        + f"Bars show each value within its column's range ({e(bars)}). Click a heading to sort.")
    headings = (
        _heading("channel", "channel", "channel number")
        + _heading("rendered", "rendered image", "mean activation of the rendered image")
        + f"<th>top {k} patches, strongest first</th>"
        + _heading("concept", "concept", "best concept (detectors first, by name)")
        + _heading("iou", "IoU", "IoU of the top quantile with the best concept")
        + _heading("mean", "mean activation", "mean over every position of every image")
        + _heading("top", "top value", "the channel's largest value over the dataset"))
    body = "\n".join(_row(atlas, i, spans) for i in range(len(atlas.channels)))
    notes = "".join(f"<li>{e(n)}</li>" for n in atlas.notes)
    skipped = "".join(f"<li>{e(name)}: {e(reason)}</li>"
                      for name, reason in list(atlas.skipped.items())[:20])
    desc = "0" if sort in ("channel", "concept") else "1"
    title = f"Channel atlas: {atlas.model} {atlas.layer}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{e(title)}</h1><p class=\"sub\">{sub}</p>"
        f"<p class=\"summary\">{summary}</p><p class=\"help\">{help_text}</p>"
        "<div class=\"controls\"><label>filter by concept <input id=\"filter\" type=\"search\" "
        "placeholder=\"e.g. circle, red, shape\"></label><label><input id=\"detectors\" "
        "type=\"checkbox\"> detectors only</label><span>showing <b id=\"shown\">"
        f"{len(rows)}</b> of {len(rows)} channels; sorted by <span id=\"sorted\">"
        f"{e(SORTABLE[sort])}</span></span></div>"
        f"<table id=\"atlas\" data-sort=\"{sort}\" data-desc=\"{desc}\"><thead><tr>{headings}"
        f"</tr></thead><tbody>\n{body}\n</tbody></table>"
        + (f"<h3>Notes</h3><ul>{notes}</ul>" if notes else "")
        + (f"<h3>Images not read</h3><ul>{skipped}</ul>" if skipped else "")
        + "<footer>Made with featuremap. Self-contained: every image is inline. "
        f"Settings: {e(json.dumps(atlas.settings()))}</footer>"
        f"<script>{SCRIPT}</script></body></html>\n")


def _counts(d: Any) -> dict[str, int]:
    """How many concepts of each category, in order of appearance."""
    return dict(Counter(c.category for c in d.concepts))


def save_page(atlas: ChannelAtlas, path: str | Path, *, overwrite: bool = False,
              sort: str = "channel") -> Path:
    """Write :func:`atlas_page` to ``path`` (``.html``) atomically; return the path."""
    p = check_output(path, suffixes=(".html", ".htm"), default_suffix=".html",
                     overwrite=overwrite, what="atlas page")
    page = atlas_page(atlas, sort=sort)
    with atomic_write(p, mode="w", encoding="utf-8") as f:
        f.write(page)
    return p
