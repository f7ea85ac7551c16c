"""Self-contained HTML reports: headings, text, tables, code and figures inline as PNG.

A report is one file with no outside references (images are base64 data URIs, the style is
inline), so it opens offline in any browser and can be mailed or archived as it is.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featuremap.outputs import atomic_write, check_output

__all__ = ["Report", "png_bytes"]

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;
margin:2em auto;padding:0 1.2em;color:#1d232b;line-height:1.5;background:#fff}
h1{font-size:1.8em;margin-bottom:.1em}h2{margin-top:2em;border-bottom:2px solid #e3e7ec;
padding-bottom:.2em}h3{margin-top:1.4em}.sub{color:#5b6570;margin-top:0}
figure{margin:1em 0;text-align:center}figure img{max-width:100%;height:auto;
border:1px solid #e3e7ec}figcaption{color:#48525c;font-size:.92em;margin-top:.3em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}th,td{border:1px solid #d8dde3;
padding:.25em .6em;text-align:right}th{background:#f3f5f7}td:first-child,th:first-child,td.l
{text-align:left}pre{background:#f6f8fa;border:1px solid #e3e7ec;padding:.8em;overflow-x:auto;
font-size:.85em;line-height:1.35}nav a{margin-right:1em}footer{margin-top:3em;color:#77808a;
font-size:.85em}
"""


def png_bytes(figure: Any, *, dpi: int = 100) -> bytes:
    """Render a matplotlib figure (anything with ``savefig``) to PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()


@dataclass
class Report:
    """An HTML document built block by block.

    Example:
        >>> r = Report("Feature maps"); r.section("Input"); r.text("A photo.")
        >>> "<h2" in r.html()
        True
    """

    title: str
    subtitle: str = ""
    blocks: list[str] = field(default_factory=list)
    sections: list[tuple[str, str]] = field(default_factory=list)

    def section(self, title: str, text: str = "") -> None:
        anchor = f"s{len(self.sections) + 1}"
        self.sections.append((anchor, title))
        self.blocks.append(f'<h2 id="{anchor}">{html.escape(title)}</h2>')
        if text:
            self.text(text)

    def subsection(self, title: str) -> None:
        self.blocks.append(f"<h3>{html.escape(title)}</h3>")

    def text(self, text: str) -> None:
        self.blocks.append(f"<p>{html.escape(text)}</p>")

    def code(self, text: str) -> None:
        self.blocks.append(f"<pre>{html.escape(text)}</pre>")

    def figure(self, figure: Any, caption: str = "", *, dpi: int = 100) -> None:
        """Add a matplotlib figure (or PNG bytes) inline, with a caption."""
        data = figure if isinstance(figure, bytes) else png_bytes(figure, dpi=dpi)
        src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.blocks.append(f'<figure><img src="{src}" alt="{html.escape(caption)}">{cap}</figure>')

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]],
              caption: str = "") -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
        body = "".join(
            "<tr>" + "".join(f"<td{_align(c)}>{html.escape(_cell(c))}</td>" for c in row)
            + "</tr>" for row in rows
        )
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.blocks.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
                           "</table>")

    def html(self) -> str:
        nav = " ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in self.sections)
        sub = f'<p class="sub">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1>{sub}<nav>{nav}</nav>"
            + "\n".join(self.blocks)
            + "<footer>Made with featuremap. Self-contained: every image is inline.</footer>"
            "</body></html>\n"
        )

    def save(self, path: str | Path, *, overwrite: bool = True) -> Path:
        """Write the report (UTF-8), atomically; return the path written.

        A name without a suffix gets ``.html``; the folder must exist. The page is written
        beside its target and moved into place when complete, so an error or Ctrl-C leaves no
        partial page.

        Raises:
            ConfigError: a suffix other than ``.html``/``.htm``, a missing or unwritable
                folder, a folder or special file at ``path``, or an existing file without
                ``overwrite``.
        """
        p = check_output(path, suffixes=(".html", ".htm"), default_suffix=".html",
                         overwrite=overwrite, what="report")
        page = self.html()
        with atomic_write(p, mode="w", encoding="utf-8") as f:
            f.write(page)
        return p


def _align(value: Any) -> str:
    """Words align left, numbers (and shapes) right."""
    if not isinstance(value, str):
        return ""
    try:
        float(value.replace(",", "").rstrip("%"))
        return ""
    except ValueError:
        return ' class="l"'


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return " x ".join(str(v) for v in value)
    return str(value)
