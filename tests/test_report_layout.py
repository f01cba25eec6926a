"""#35: the report's PDF is laid out to its content and read back as a user sees it: the text of each
page (pypdfium2), its pixels, and the PNG previews beside it."""

import sys
from pathlib import Path

import pytest
from report_fakes import four_runs

from reproscope.cli import main
from reproscope.report.report import markdown_blocks, paragraph_runs, to_pdf

pdfium = pytest.importorskip("pypdfium2")


def page_lines(pdf: Path) -> list[list[str]]:
    """The non-empty text lines of each page."""
    doc = pdfium.PdfDocument(str(pdf))
    try:
        return [[ln.strip() for ln in p.get_textpage().get_text_range().splitlines() if ln.strip()] for p in doc]
    finally:
        doc.close()


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    """The issue's four short runs (2 seeds per variant), reported once for the tests below."""
    root = tmp_path_factory.mktemp("layout")
    runs = four_runs(root / "runs")
    out = root / "rep"
    out.mkdir()
    (out / "report-page7.png").write_bytes(b"a preview of a page the new report does not have")
    (out / "report-page-mine.png").write_bytes(b"not a preview")
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    return out


def test_no_page_is_wasted_and_the_commands_stay_with_their_section(report_dir):
    """The four-run report was 3 pages, the last holding only the `reproscope report` line."""
    pages = page_lines(report_dir / "report.pdf")
    assert 1 <= len(pages) <= 3
    assert all(len(p) >= 15 for p in pages), [len(p) for p in pages]
    at = [i for i, p in enumerate(pages) if "Commands that reproduce every number" in p]
    commands = [ln for ln in (report_dir / "report.md").read_text().split("```")[-2].splitlines() if ln.strip()]
    assert len(at) == 1 and len(commands) == 5
    text = " ".join(pages[at[0]])
    assert all(c in text for c in commands)  # every command on the heading's page


def test_no_table_cell_splits_a_word(report_dir):
    """Every word of every table cell in report.md is a whole word of the PDF's text."""
    tokens = {t for p in page_lines(report_dir / "report.pdf") for ln in p for t in ln.split()}
    cells = [c.strip() for ln in (report_dir / "report.md").read_text().splitlines() if ln.startswith("| ")
             for c in ln.strip().strip("|").split(" | ")]
    words = {w for c in cells for w in c.split()}
    assert words and not words - tokens, sorted(words - tokens)


def test_narrow_columns_are_as_wide_as_their_longest_word(tmp_path):
    """Six columns of long text: proportional widths split 'dyt-vit_quick-...-s0' and 'layernorm'."""
    long = "random augmentation and normalization of every image, then a resize"
    header = ["run", "augmentation", "normalization", "reason", "note", "n"]
    rows = [["dyt-vit_quick-imagenette-cpu-identity-s0", long, "layernorm", long, long, "3"],
            ["b", "none", "DyT", "short", "x", "12"]]
    to_pdf([("title", "T"), ("table", header, rows)], tmp_path / "t.pdf")
    tokens = {t for p in page_lines(tmp_path / "t.pdf") for ln in p for t in ln.split()}
    assert {w for r in [header, *rows] for c in r for w in c.split()} <= tokens


def test_a_figure_never_covers_the_table_border_above_it(tmp_path):
    """A white figure right below a table: the table's three horizontal rules all print across its width."""
    import numpy as np
    from PIL import Image
    Image.new("RGB", (1000, 400), (255, 255, 255)).save(tmp_path / "white.png")
    blocks = [("title", "T"), ("table", ["a", "b"], [["1", "2"]]), ("img", tmp_path / "white.png", "caption")]
    to_pdf(blocks, tmp_path / "b.pdf", max_pages=None)
    doc = pdfium.PdfDocument(str(tmp_path / "b.pdf"))
    px = np.asarray(doc[0].render(scale=4).to_pil().convert("L"))
    doc.close()
    mm = 4 * 72 / 25.4
    full = np.flatnonzero((px[:, int(13 * mm):int(197 * mm)] < 128).mean(1) > 0.97)  # rows dark across the table
    assert 1 + int((np.diff(full) > 1).sum()) == 3


@pytest.mark.parametrize("filler", range(50, 58))
def test_a_short_code_block_is_never_split_across_pages(tmp_path, filler):
    """One-line paragraphs put the heading at many heights near the page's end (53 and 54 split it)."""
    text = "A short line of text."
    cmds = [f"reproscope train --recipe quickstart --set run.seed={i}" for i in range(6)]
    blocks = [("title", "T"), *[("p", text)] * filler, ("h", "Commands"), ("code", cmds)]
    to_pdf(blocks, tmp_path / "c.pdf", max_pages=None)
    page = next(p for p in page_lines(tmp_path / "c.pdf") if "Commands" in p)
    assert all(c in page for c in cmds), filler


def test_a_figure_keeps_its_caption_on_its_page(tmp_path):
    from PIL import Image
    Image.new("RGB", (900, 400), (90, 140, 200)).save(tmp_path / "f.png")
    text = "A sentence that fills some of the line with words. " * 6
    for filler in range(30, 44, 3):
        blocks = [("title", "T"), *[("p", text)] * filler, ("img", tmp_path / "f.png", "The caption of f"), ("p", "x")]
        layout: list = []
        to_pdf(blocks, tmp_path / "f.pdf", max_pages=None, layout=layout)
        page = next(i for i, p in enumerate(page_lines(tmp_path / "f.pdf")) if "The caption of f" in p)
        assert layout[-2][1] == page + 1, filler  # the figure starts on the caption's page


def test_previews_of_each_page_beside_the_pdf(report_dir, capsys):
    from PIL import Image
    n = len(page_lines(report_dir / "report.pdf"))
    previews = sorted(report_dir.glob("report-page*.png"))
    assert [p.name for p in previews] == sorted([f"report-page{i}.png" for i in range(1, n + 1)] + ["report-page-mine.png"])
    with Image.open(report_dir / "report-page1.png") as im:
        assert abs(im.size[0] - 1240) <= 2 and abs(im.size[1] - 1754) <= 2  # A4 at 150 dpi
        assert len(im.getcolors(256) or []) > 2  # not blank


def test_without_pypdfium2_the_report_says_so_in_one_line_and_leaves_no_stale_preview(tmp_path, monkeypatch, capsys):
    runs = four_runs(tmp_path / "runs")[:2]
    out = tmp_path / "rep"
    out.mkdir()
    (out / "report-page1.png").write_bytes(b"old")
    monkeypatch.setitem(sys.modules, "pypdfium2", None)  # import fails
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    said = [ln for ln in capsys.readouterr().out.splitlines() if "preview" in ln]
    assert said == ["page previews skipped: pypdfium2 is not installed (pip install pypdfium2 to get "
                    "report-page1.png, ...)"]
    assert not list(out.glob("report-page*.png")) and (out / "report.pdf").exists()


def test_inline_code_in_notes_and_reports_prints_in_monospace():
    """`code` in a note's paragraph (and in the report's own sentences) is a monospace run; a backslash
    keeps a marker literal inside and outside code."""
    (p,) = markdown_blocks("Run `reproscope note x.md` or **`--set a=1`** now, __init__.\n")
    assert paragraph_runs(p[1], p[2]) == [("", "Run "), ("M", "reproscope note x.md"), ("", " or "),
                                          ("BM", "--set a=1"), ("", " now, __init__.")]
    assert paragraph_runs("then `reproscope note report.md` renders it") == [
        ("", "then "), ("M", "reproscope note report.md"), ("", " renders it")]
    assert paragraph_runs("an unpaired ` stays") == [("", "an unpaired ` stays")]


def test_a_paragraph_breaks_at_spaces_and_a_long_word_only_after_a_slash_dot_or_underscore():
    """#49: ``paragraph_lines`` (one unit per character here): a code span that does not fit what is left
    of a line goes whole to the next, with the comma glued to it; one wider than a line breaks after
    ``/``, ``.`` or ``_`` only, and between characters only where a piece is itself wider than a line."""
    from reproscope.report.report import paragraph_lines

    def text(lines):
        return ["".join(t for _, t in ln) for ln in lines]

    chars = lambda style, t: float(len(t))  # noqa: E731
    lines = paragraph_lines([("", "see the "), ("M", "deviations.json"), ("", ", then go")], 20, chars)
    assert lines == [[("", "see the")], [("M", "deviations.json"), ("", ",")], [("", "then go")]]
    long = paragraph_lines([("", "in "), ("M", "runs/quickstart-20240101/deviations.json"), ("", " now")], 20, chars)
    assert text(long) == ["in runs/", "quickstart-20240101/", "deviations.json now"]
    assert text(paragraph_lines([("M", "a" * 25 + "/b")], 10, chars)) == ["a" * 10, "a" * 10, "aaaaa/b"]
    assert text(paragraph_lines([("", "one\ntwo  three")], 20, chars)) == ["one", "two  three"]


def test_the_pdf_never_splits_a_code_word_at_a_line_end(tmp_path):
    """#49: the same sentence with one more word before its code spans each time, so that every span
    meets the end of a line somewhere ('deviatio' / 'ns.json', 'att' / 'n_init' before): read back from
    the PDF, each line ends at a space of the text or right after '/', '.' or '_' in a word wider than
    a line."""
    words = ("The deviation log of every run sits in its folder listed by key and reason so that a reader "
             "finds the cause of each difference from the paper quickly and then reads on").split()
    tail = (" `runs/quickstart-20240101/deviations.json` and `attn_init_std`, `model.attn_init`; "
            "`" + "/".join(["a_folder_name"] * 14) + "` end.")
    paragraphs = [" ".join(words[:k]) + tail for k in range(8, len(words))]
    to_pdf([("title", "T"), *[("p", p) for p in paragraphs]], tmp_path / "w.pdf", max_pages=None)
    lines = [ln for page in page_lines(tmp_path / "w.pdf") for ln in page][1:]
    mid_word = 0
    for p in paragraphs:
        plain, pos = p.replace("`", ""), 0
        while pos < len(plain):
            line = lines.pop(0)
            assert plain.startswith(line, pos), (line, plain[pos:])
            pos += len(line)
            if pos < len(plain) and plain[pos] == " ":
                pos += 1
            elif pos < len(plain):
                assert plain[pos - 1] in "/._", (line, plain[pos:])
                mid_word += 1
    assert not lines and mid_word >= len(paragraphs)  # the long path broke in every paragraph, at '/'


def test_the_curves_tick_at_whole_epochs_and_steps():
    """#49: three epochs on the val top-1 axis tick at 1, 2, 3 (not 1.5 and 2.5); the steps too."""
    from types import SimpleNamespace

    from reproscope.plotting import pyplot
    from reproscope.report.report_figures import curves_figure
    runs = [SimpleNamespace(train=[{"step": s, "loss": 2.0 - s / 10} for s in (1, 2, 3)],
                            val=[{"epoch": e, "top1": 10.0 + e} for e in range(3)]) for _ in range(2)]
    fig = curves_figure([SimpleNamespace(label="a", runs=runs)])
    try:
        for ax in fig.axes[:2]:
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), (ax.get_xlabel(), ticks)
    finally:
        pyplot().close(fig)
