"""Tests for fooltools.gallery: run pages, gallery pages and contact sheets."""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from fooltools import gallery
from fooltools.errors import FoolError
from fooltools.io import write_png

EVIL = 'cat <script>alert("x")</script> & dog.png -> ostrich'


def make_run(
    run: Path, title: str = "run", n: int = 3, size: tuple[int, int] = (32, 32), **extra
) -> Path:
    """A fake run directory with ``n`` small panels and a report.json."""
    rng = np.random.default_rng(n)
    images = []
    for i in range(n):
        write_png(run / f"panel {i}.png", rng.random((size[0], size[1], 3)))
        images.append({"file": f"panel {i}.png", "caption": f"panel <{i}>"})
    if n:
        images[0]["top"] = [
            {"index": 285, "label": "Egyptian cat", "prob": 0.394},
            {"index": 9, "label": "ostrich & co", "prob": 0.25},
            {"index": 1, "label": "broken", "prob": "nan?"},
        ]
    report = {"kind": "perturb", "title": title, "success": True, "images": images}
    report |= {"metrics": {"linf_255": 8.0, "l2_255": 812.3, "seconds": 3.1}, "extra": [1]}
    report.update(extra)
    (run / "report.json").write_text(json.dumps(report), encoding="utf-8")
    return run


def links(page: Path) -> list[str]:
    return re.findall(r'(?:href|src)="([^"]+)"', page.read_text(encoding="utf-8"))


def assert_links_resolve(page: Path) -> None:
    found = links(page)
    assert found
    for link in found:
        assert not os.path.isabs(link) and "://" not in link
        assert (page.parent / unquote(link.replace("&amp;", "&"))).exists(), link


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def sheet_height(blocks_of_lines: list[int]) -> int:
    row = gallery.THUMB_H + gallery.CAPTION_H
    return gallery.PAD + sum(gallery.HEADER_H + n * row + gallery.PAD for n in blocks_of_lines)


def test_run_page(tmp_path):
    run = make_run(tmp_path / "run", EVIL, success=False)
    page = gallery.write_run_page(run)
    text = page.read_text(encoding="utf-8")
    assert page == run / "index.html"
    assert "<script>" not in text and "alert(&quot;x&quot;)" in text
    assert "&lt;script&gt;" in text and "&amp; dog.png" in text
    assert 'style="width:39.4%"' in text and "Egyptian cat 39.4%" in text
    assert "ostrich &amp; co 25.0%" in text and "broken" not in text
    assert "panel &lt;0&gt;" in text and "failed" in text
    assert "<th>l2_255</th><td>812.3</td>" in text and '"extra"' not in text
    assert text.count('loading="lazy"') == 3 and 'href="report.json"' in text
    assert "http" not in text.replace('name="viewport"', "")  # no external resources
    assert_links_resolve(page)
    assert no_temp_files(tmp_path)


def test_gallery(tmp_path):
    runs = [make_run(tmp_path / "exp" / f"run{i}", f"{EVIL} {i}") for i in range(2)]
    make_run(tmp_path / "exp" / "run1" / "nested", "nested run", n=1, size=(32, 64))
    out = tmp_path / "exp" / "gallery"
    page = gallery.build_gallery([tmp_path / "exp", runs[0]], out, title="G <&>", columns=3)
    text = page.read_text(encoding="utf-8")
    assert page == out / "index.html" and "<h1>G &lt;&amp;&gt;</h1>" in text
    assert text.count('<article class="card">') == 3 and "repeat(3," in text
    assert "<script>" not in text and html.escape(f"{EVIL} 1") in text
    assert 'href="../run0/index.html"' in text and 'src="../run0/panel%200.png"' in text
    assert "is truncated" not in text and "skipped:" not in text
    for run in runs:
        assert (run / "index.html").exists()  # written because missing
    assert_links_resolve(page)
    with Image.open(out / "contact_sheet.png") as sheet:
        # run0 and run1: 3 square panels; nested: one 64 wide, 32 high panel, 320 x 160.
        assert sheet.height == sheet_height([1, 1, 1])
        assert sheet.width == gallery.PAD + 3 * (gallery.THUMB_H + gallery.PAD)
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize(
    ("verdicts", "tally"),
    [
        ([True, False, True], "3 runs, 2 successful."),
        ([None, None, None, None], "4 runs, none with a success verdict."),
        ([True, None, False, "yes"], "4 runs, 1 of the 2 with a success verdict successful."),
    ],
)
def test_gallery_counts_successes_over_runs_with_a_verdict(tmp_path, verdicts, tally):
    # Style, inversion and visualisation runs have no "success"; a detector attack with
    # nothing to attack has null: "4 runs, 0 successful" said they had all failed.
    for i, verdict in enumerate(verdicts):
        run = make_run(tmp_path / "runs" / f"run{i}", f"run {i}", n=1)
        report = json.loads((run / "report.json").read_text())
        report.pop("success")
        if verdict is not None or i % 2:  # both kinds of no verdict: absent, and null
            report["success"] = verdict
        (run / "report.json").write_text(json.dumps(report))
    page = gallery.build_gallery([tmp_path / "runs"], tmp_path / "gallery")
    assert f"<p>{tally} " in page.read_text(encoding="utf-8")


def test_gallery_keeps_existing_run_pages(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "index.html").write_text("custom", encoding="utf-8")
    gallery.build_gallery([run], tmp_path / "g")
    assert (run / "index.html").read_text(encoding="utf-8") == "custom"


def test_collect_runs(tmp_path):
    for name in ("b/deep/er", "a", "b"):
        make_run(tmp_path / name, n=1)
    (tmp_path / "empty").mkdir()
    found = gallery.collect_runs([tmp_path, tmp_path / "a", tmp_path / "b" / "report.json"])
    assert found == [tmp_path / "a", tmp_path / "b", tmp_path / "b/deep/er"]
    with pytest.raises(FoolError, match="no report.json found.*empty"):
        gallery.collect_runs([tmp_path / "empty"])
    with pytest.raises(FoolError, match="no such file or directory.*nowhere"):
        gallery.collect_runs([tmp_path / "nowhere"])
    with pytest.raises(FoolError, match="not a directory"):
        gallery.collect_runs([tmp_path / "a" / "panel 0.png"])


def test_collect_runs_follows_links_to_directories_once(tmp_path):
    # A batch kept on scratch storage and linked into runs/ was left out without a word.
    make_run(tmp_path / "scratch" / "batch" / "r1", n=1)
    make_run(tmp_path / "runs" / "local", n=1)
    (tmp_path / "runs" / "batch").symlink_to(tmp_path / "scratch" / "batch")
    (tmp_path / "runs" / "latest").symlink_to(tmp_path / "scratch" / "batch")  # once only
    (tmp_path / "runs" / "local" / "up").symlink_to(tmp_path / "runs")  # no loop
    found = gallery.collect_runs([tmp_path / "runs"])
    assert found == [tmp_path / "runs" / "batch" / "r1", tmp_path / "runs" / "local"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read .*report.json"),
        ('{"images": []}', 'needs a string "title"'),
        ('{"title": "t"}', 'needs an "images" list'),
        ('{"title": "t", "images": [{"caption": "c"}]}', r'images\[0\] needs a "file"'),
        ('{"title": "t", "images": [{"file": "/etc/passwd"}]}', r'images\[0\] needs a "file"'),
        ('{"title": "t", "images": [{"file": "gone.png"}]}', "file not found: .*gone.png"),
    ],
)
def test_broken_reports(tmp_path, content, message):
    good = make_run(tmp_path / "exp" / "good", "good run")
    bad = tmp_path / "exp" / "bad"
    bad.mkdir()
    (bad / "report.json").write_text(content, encoding="utf-8")
    with pytest.raises(FoolError, match=message):
        gallery.write_run_page(bad)
    with pytest.raises(FoolError, match=message):  # named explicitly: an error
        gallery.build_gallery([good, bad], tmp_path / "g1")
    page = gallery.build_gallery([tmp_path / "exp"], tmp_path / "g2")  # found by scanning
    text = page.read_text(encoding="utf-8")
    assert f"skipped: {bad}: " in text and text.count('<article class="card">') == 1
    assert not (bad / "index.html").exists()


def test_bad_arguments(tmp_path):
    run = make_run(tmp_path / "run")
    with pytest.raises(FoolError, match="is a run directory"):
        gallery.build_gallery([run], run)
    with pytest.raises(FoolError, match="columns"):
        gallery.build_gallery([run], tmp_path / "g", columns=0)
    with pytest.raises(FoolError, match="no such directory: .*missing"):
        gallery.write_run_page(tmp_path / "missing")


def test_an_empty_path_is_no_directory(capsys, tmp_path, monkeypatch):
    # `fool gallery "$UNSET"` made a gallery of the working directory's runs.
    from test_cli import assert_one_line_error
    from test_cli import run as run_cli

    make_run(tmp_path / "run", n=1)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "gallery", "", "--out", str(tmp_path / "g"))
    assert_one_line_error(code, err, "an empty path names no directory")
    assert not (tmp_path / "g").exists()


def test_many_panels(tmp_path):
    run = make_run(tmp_path / "me", "map-elites", n=300, size=(8, 8), kind="map-elites")
    text = gallery.write_run_page(run).read_text(encoding="utf-8")
    assert text.count('<img src="') == 300 and text.count('loading="lazy"') == 300
    assert 'class="panels many"' in text
    page = gallery.build_gallery([run], tmp_path / "g")
    assert "+294 more panels" in page.read_text(encoding="utf-8")
    with Image.open(tmp_path / "g" / "contact_sheet.png") as sheet:
        assert sheet.height == sheet_height([gallery.SHEET_PANELS // gallery.SHEET_WRAP])
        assert sheet.width == gallery.PAD + gallery.SHEET_WRAP * (gallery.THUMB_H + gallery.PAD)


def test_contact_sheet_is_capped(tmp_path):
    for i in range(gallery.SHEET_RUNS + 3):
        make_run(tmp_path / "exp" / f"run{i:03d}", f"run {i}", n=1, size=(4, 4))
    page = gallery.build_gallery([tmp_path / "exp"], tmp_path / "g")
    text = page.read_text(encoding="utf-8")
    assert text.count('<article class="card">') == gallery.SHEET_RUNS + 3
    assert f"truncated to the first {gallery.SHEET_RUNS} runs" in text
    with Image.open(tmp_path / "g" / "contact_sheet.png") as sheet:
        assert sheet.height == sheet_height([1] * gallery.SHEET_RUNS) <= gallery.SHEET_MAX_H


def test_unreadable_panel_gets_placeholder_and_is_listed(tmp_path):
    run = make_run(tmp_path / "run", n=2)
    (run / "panel 1.png").write_bytes(b"not a png")
    page = gallery.build_gallery([run], tmp_path / "g")
    with Image.open(tmp_path / "g" / "contact_sheet.png") as sheet:
        assert sheet.width == gallery.PAD + 2 * (gallery.THUMB_H + gallery.PAD)
        grey = np.asarray(sheet)[gallery.PAD + gallery.HEADER_H + 10, -gallery.PAD - 10]
        assert grey.tolist() == [190, 190, 190]
    # A grey box alone read as a grey image: the page names the file that is broken.
    skipped = re.findall(r'<p class="skipped">(.*?)</p>', page.read_text(encoding="utf-8"))
    assert len(skipped) == 1 and "unreadable:" in skipped[0], skipped
    assert "panel 1.png" in html.unescape(skipped[0])


def test_failed_write_is_atomic(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run")
    gallery.write_run_page(run)
    before = (run / "index.html").read_bytes()

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gallery.os, "replace", fail)
    (run / "report.json").write_text(
        json.dumps({"title": "changed", "images": []}), encoding="utf-8"
    )
    with pytest.raises(FoolError, match="cannot write .*index.html: .*No space left"):
        gallery.write_run_page(run)
    assert (run / "index.html").read_bytes() == before
    assert no_temp_files(tmp_path)


def test_fool_gallery_skips_a_broken_run_found_below_a_dir(capsys, tmp_path):
    from test_cli import assert_one_line_error
    from test_cli import run as run_cli

    make_run(tmp_path / "exp" / "good", "good run")
    bad = tmp_path / "exp" / "bad"
    bad.mkdir()
    (bad / "report.json").write_text("{not json", encoding="utf-8")
    code, out, _ = run_cli(capsys, "gallery", str(tmp_path / "exp"), "--out", str(tmp_path / "g"))
    assert code == 0 and "open " in out
    text = (tmp_path / "g" / "index.html").read_text(encoding="utf-8")
    assert f"skipped: {bad}: cannot read" in text and "good run" in text
    assert text.count('<article class="card">') == 1
    # Named on the command line, the same run is an error, and no gallery is written.
    code, _, err = run_cli(capsys, "gallery", str(bad), "--out", str(tmp_path / "g2"))
    assert_one_line_error(code, err, "cannot read", "report.json")
    assert not (tmp_path / "g2").exists()


def test_file_names_that_are_not_utf8(tmp_path):
    # Python hands such names over with lone surrogates, which strict UTF-8 refused: the
    # run page of `fool perturb caf\xe9.jpg` was a traceback after the run was written.
    name = os.fsdecode(b"caf\xe9")
    run = make_run(tmp_path / "runs" / name, title=f"{name}.jpg -> ostrich")
    page = gallery.write_run_page(run)
    assert "<title>caf?.jpg -&gt; ostrich</title>" in page.read_text(encoding="utf-8")
    index = gallery.build_gallery([tmp_path / "runs"], tmp_path / "g")
    found = links(index)
    assert "../runs/caf%E9/panel%200.png" in found
    for link in found:  # quoted as the name's bytes, so the browser asks for that file
        assert (
            index.parent / unquote(link.replace("&amp;", "&"), errors="surrogateescape")
        ).exists()
