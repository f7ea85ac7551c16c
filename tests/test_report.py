from __future__ import annotations

import numpy as np
import pytest

from featuremap.errors import ConfigError
from featuremap.plot import plot_image
from featuremap.report import Report


def test_report_is_self_contained_and_escaped(tmp_path):
    r = Report("Title <1>", "sub")
    r.section("Part & parcel", "text <b>")
    r.figure(plot_image(np.zeros((3, 8, 8))), "cap")
    r.table(["a", "b"], [("x", 1.23456), ("y", (1, 2))])
    r.code("a < b")
    html = r.html()
    assert "Title &lt;1&gt;" in html and "text &lt;b&gt;" in html and "a &lt; b" in html
    assert html.count("data:image/png;base64,") == 1
    assert "1.235" in html and "1 x 2" in html
    assert 'href="#s1"' in html
    path = r.save(tmp_path / "r.html")
    assert path.read_text() == html


def test_report_save_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Report("t").save(tmp_path / "nope" / "r.html")
    with pytest.raises(ConfigError, match="is a folder"):
        Report("t").save(tmp_path)


def test_report_save_adds_html_refuses_other_suffixes_and_is_atomic(tmp_path, monkeypatch):
    assert Report("t").save(tmp_path / "page") == tmp_path / "page.html"
    with pytest.raises(ConfigError, match=r"unsupported suffix '\.png'"):
        Report("t").save(tmp_path / "page.png")
    with pytest.raises(ConfigError, match="exists"):
        Report("t").save(tmp_path / "page.html", overwrite=False)
    monkeypatch.setattr(Report, "html", lambda self: "\ud800 cannot be encoded")
    with pytest.raises(UnicodeEncodeError):
        Report("t").save(tmp_path / "page.html")
    assert (tmp_path / "page.html").read_text().startswith("<!")  # the old page is intact
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]
