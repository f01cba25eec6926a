"""reproscope report and compare on real (tiny) runs: grouping, statistics, files, divergence."""

import re

import pytest
from conftest import TINY

from reproscope.cli import main
from reproscope.config import apply_overrides
from reproscope.launch import train
from reproscope.report.runs import t_critical_95, welch


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """LN and DyT quickstart variants, 2 seeds each, ~2 s per run, with the paper-figure probes a report shows."""
    from reproscope.recipes import get_recipe
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for recipe in ("quickstart", "quickstart-dyt"):
        for seed in (0, 1):
            r = apply_overrides(get_recipe(recipe), {**TINY, "run.seed": seed, "run.out_dir": str(root),
                                                     "instrument.probes": True})
            d = root / f"{recipe}-s{seed}"
            train(r, run_dir=d)
            out[(recipe, seed)] = d
    return out


def test_report_groups_seeds_and_writes_md_and_pdf(runs, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", *map(str, runs.values()), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "2 runs" not in md  # grouped: one row per variant, n = 2
    rows = [line for line in md.splitlines() if line.startswith("| vit_quick")]
    assert len(rows) == 2 and all("| 2 |" in r for r in rows), rows
    assert "Measured difference, vit_quick (dyt) minus vit_quick (ln)" in md
    assert "95% CI" in md and "CPU-scale" in md
    for section in ("Scope of reproducibility", "Methodology", "Setup: paper vs ours", "Reproducibility checklist", "Curves", "Instrumentation highlights",
                    "Deviation log", "Environment", "Commands that reproduce every number"):
        assert f"## {section}" in md
    pdf = (out / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page\b", pdf))
    assert 1 <= pages <= 3
    assert (out / "curves.png").stat().st_size > 1000 and (out / "grad_norm.png").exists()


def test_a_rewritten_report_removes_the_figures_only_its_predecessor_showed(runs, tmp_path, capsys):
    """Reporting again on fewer variants drops the figures of the variant that left; files the report
    never showed stay."""
    out = tmp_path / "rep"
    assert main(["report", *map(str, runs.values()), "--out", str(out)]) == 0
    (out / "mine.png").write_bytes(b"not the report's")
    shown = set(re.findall(r"\]\(([^)/]+\.png)\)", (out / "report.md").read_text()))
    assert main(["report", str(runs[("quickstart", 0)]), str(runs[("quickstart", 1)]), "--out", str(out)]) == 0
    now = set(re.findall(r"\]\(([^)/]+\.png)\)", (out / "report.md").read_text()))
    gone = shown - now
    assert gone and not any((out / f).exists() for f in gone)  # e.g. the DyT group's alpha figure
    assert all((out / f).exists() for f in now) and (out / "mine.png").exists()


def test_compare_finds_config_diff_and_the_parting_step(runs, tmp_path, capsys):
    a, b = runs[("quickstart", 0)], runs[("quickstart", 1)]
    assert main(["compare", str(a), str(a), "--out", str(tmp_path)]) == 0
    assert "agree within rtol" in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "run.seed" in out and "parting step (first difference beyond rtol 0.001): logged step 2" in out
    assert (tmp_path / "compare.png").stat().st_size > 1000


def test_compare_counts_each_runs_events_by_type(runs, tmp_path, capsys):
    """A run with logged events (here one non-finite, one diverging, two spikes) is compared, and the
    counts are per type, older spellings included."""
    import json
    import shutil
    a = runs[("quickstart", 0)]
    b = tmp_path / "b"
    shutil.copytree(a, b)
    with open(b / "metrics.jsonl", "a") as f:
        for typ in ("nonfinite", "diverging", "loss-spike", "loss_spike"):
            f.write(json.dumps({"kind": "event", "step": 3, "type": typ}) + "\n")
    assert main(["compare", str(a), str(b), "--out", str(tmp_path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("non-finite / diverging"))
    assert "0 / 0 / 0" in row and row.rstrip().endswith("1 / 1 / 2"), row


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_welch_interval():
    assert abs(t_critical_95(2) - 4.3027) < 1e-4 and abs(t_critical_95(1000) - 1.9623) < 1e-4  # exact (scipy), #35
    d, lo, hi = welch([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert d == 0 and lo < 0 < hi
    d, lo, hi = welch([10.0, 10.1, 9.9], [1.0, 1.1, 0.9])
    assert lo > 8.5 and hi < 9.5


def test_note_to_pdf(tmp_path, capsys):
    note = tmp_path / "note.md"
    note.write_text("# A note\n\nDyT(x) = gamma * tanh(alpha x), **bold**, [link](x.md).\n\n## Results\n\n"
                    "| a | b |\n|---|---|\n| 1 | 2 |\n\n- a bullet\n\n```\nreproscope train\n```\n")
    from reproscope.report.report import markdown_blocks
    blocks = markdown_blocks(note.read_text())
    assert [b[0] for b in blocks] == ["title", "p", "h", "table", "p", "code"]
    assert blocks[1][1:] == ("DyT(x) = gamma * tanh(alpha x), **bold**, link.", True)  # fpdf2 markdown
    assert blocks[3][1:] == (["a", "b"], [["1", "2"]])
    assert main(["note", str(note)]) == 0
    assert (tmp_path / "note.pdf").read_bytes().startswith(b"%PDF")


def test_raw_and_ema_weights_are_both_evaluated_and_reported(tmp_path, capsys):
    """The issue's input: an EMA whose horizon (1 / (1 - 0.9999) = 10k steps) dwarfs the run: warned,
    both evaluated, logged and put in the report."""
    from reproscope.cli import main
    from reproscope.train.rundir import read_metrics
    rd = tmp_path / "run"
    assert main(["train", "--run-dir", str(rd), "--no-progress", "--set", "data.train_size=256",
                 "--set", "data.val_size=64", "--set", "data.batch_size=32", "--set", "sched.epochs=2",
                 "--set", "reg.ema_decay=0.9999", "--set", "reg.eval_ema=true", "--set", "run.threads=1"]) == 0
    out = capsys.readouterr().out
    assert "warning: reg.ema_decay=0.9999 averages over ~10000 steps" in out and "reported: EMA" in out
    val = [r for r in read_metrics(rd) if r["kind"] == "val"][-1]
    assert val["top1"] == val["ema_top1"] and "raw_top1" in val
    assert main(["report", str(rd), "--out", str(tmp_path / "rep")]) == 0
    assert "| raw top-1 | EMA top-1 |" in (tmp_path / "rep" / "report.md").read_text()


def _pdf_text_codepoints(pdf: bytes) -> set[int]:
    """The Unicode code points the ToUnicode maps of a PDF name (each stream read by its /Length, inflated)."""
    import re
    import zlib
    points = set()
    for m in re.finditer(rb"<<[^>]*?/Length (\d+)[^>]*>>\s*stream\r?\n", pdf):
        raw = pdf[m.end():m.end() + int(m.group(1))]
        try:
            text = zlib.decompress(raw)
        except zlib.error:
            text = raw
        if b"beginbfchar" in text:
            points |= {int(h, 16) for h in re.findall(rb"<[0-9A-Fa-f]{4}>\s*<([0-9A-Fa-f]{4})>", text)}
    return points


def _pdf_font_codepoints(pdf: bytes) -> dict[str, set[int]]:
    """Per font (its name without the subset tag), the code points its ToUnicode map names."""
    import re
    import zlib
    out: dict[str, set[int]] = {}
    for m in re.finditer(rb"/BaseFont\s*/\w+\+(\w+)[^<>]*?/ToUnicode (\d+) 0 R", pdf):
        s = re.search(rb"(?<!\d)%s 0 obj\s*<<[^>]*?/Length (\d+)[^>]*>>\s*stream\r?\n" % m.group(2), pdf)
        raw = pdf[s.end():s.end() + int(s.group(1))]
        text = zlib.decompress(raw) if b"FlateDecode" in s.group(0) else raw
        out[m.group(1).decode()] = {int(h, 16) for h in re.findall(rb"<[0-9A-Fa-f]{4}>\s*<([0-9A-Fa-f]{4})>", text)}
    return out


def test_note_paragraphs_keep_bold_and_italic_and_print_options_as_such(tmp_path, capsys):
    """Inline **bold** and *italic* print in DejaVu Sans Bold / Oblique; '--set', '__init__' and '~~'
    are text, not fpdf2 markup (underline, italics, strikethrough)."""
    note = tmp_path / "note.md"
    note.write_text("plain text, **KQZ** and *VWX*, then `--set a=1 --fit`, __init__ and ~~y~~.\n")
    from reproscope.report.report import markdown_blocks
    assert markdown_blocks(note.read_text())[0][2] is True
    assert main(["note", str(note)]) == 0
    fonts = _pdf_font_codepoints((tmp_path / "note.pdf").read_bytes())
    assert {ord(c) for c in "KQZ"} <= fonts["DejaVuSansBold"] and not {ord(c) for c in "VWX"} & fonts["DejaVuSansBold"]
    assert {ord(c) for c in "VWX"} <= fonts["DejaVuSansOblique"]
    assert {ord(c) for c in "_~"} <= fonts["DejaVuSansBook"] and not {ord(c) for c in "KQZVWX"} & fonts["DejaVuSansBook"]
    assert {ord(c) for c in "-set=1fit"} <= fonts["DejaVuSansMonoBook"]  # `--set a=1 --fit` is code: monospace (#35)
    assert not ({ord(c) for c in "init"} & fonts["DejaVuSansOblique"])  # __init__ is not italics


def test_note_subheadings_numbered_items_bullets_and_nested_emphasis():
    """What a user's note holds beyond ours: '###' is a heading (not literal '###'), each numbered item
    and '* ' bullet is its own paragraph, bullets print as '•', italics inside bold are kept."""
    from reproscope.report.report import markdown_blocks
    blocks = markdown_blocks("# T\n\n### Sub\n\n**bold *it* bold** x\n\n1. first\n2. second\n\n- a\n* b\n")
    assert blocks == [("title", "T"), ("h", "Sub"), ("p", "**bold __it__ bold** x", True), ("p", "1. first", True),
                      ("p", "2. second", True), ("p", "• a", True), ("p", "• b", True)]


def test_note_prints_greek_and_math_symbols_as_such(tmp_path, capsys):
    """#18: ±, →, ≤, α, β, γ in a note print as those characters (DejaVu from matplotlib), not as '?'."""
    note = tmp_path / "note.md"
    note.write_text("# Note\n\nDyT(x) = γ · tanh(α x) + β; 46.99 ± 0.99; 82.3 → 82.5; lr ≤ 4e-3.\n")
    assert main(["note", str(note)]) == 0
    points = _pdf_text_codepoints((tmp_path / "note.pdf").read_bytes())
    assert {ord(c) for c in "±→≤αβγ"} <= points


def test_note_tables_take_escaped_pipes_and_name_a_broken_row(tmp_path, capsys):
    from reproscope.report.report import markdown_blocks
    blocks = markdown_blocks("| a | b |\n|---|---|\n| 1 + \\|x\\| | 2 |\n")
    assert blocks == [("table", ["a", "b"], [["1 + |x|", "2"]])]
    note = tmp_path / "n.md"
    note.write_text("# N\n\n| a | b |\n|---|---|\n| 1 | 2 | 3 |\n")
    assert main(["note", str(note)]) == 2
    err = capsys.readouterr().err
    assert "n.md" in err and "3 cells where its header has 2" in err and len(err.strip().splitlines()) == 1


def test_long_commands_wrap_at_argument_boundaries():
    from reproscope.report.report import wrap_command
    line = ("reproscope train --recipe dyt-vit_quick-imagenette-cpu --run-dir runs/dyt-cpu/a-long-name "
            "--no-progress --set run.threads=1 --set model.dyt_alpha0=1.0")
    assert wrap_command("reproscope train", 40) == ["reproscope train"]
    parts = wrap_command(line, 48)
    assert len(parts) > 1 and all(len(p) <= 48 for p in parts)
    assert all(p.endswith(" \\") for p in parts[:-1]) and all(p.startswith("    ") for p in parts[1:])
    assert " ".join(p.removesuffix(" \\").strip() for p in parts).split() == line.split()  # nothing lost or split
    for p in parts[1:]:  # every continuation starts with an option, never with an option's value
        assert p.strip().startswith("-")


def test_a_heading_never_ends_a_page(tmp_path):
    """#18: a heading whose next three lines would not fit below it moves to the next page, with what
    follows. One document whose paragraphs of 1-13 lines put its 60 headings at many heights: every
    heading starts high enough for itself (7 mm) and three lines of the smallest text ``to_pdf`` may
    choose, and some had to move (a heading that starts a page whose previous page ends with text)."""
    from reproscope.report import document as R
    sentence = "A sentence that fills some of the line with words. "
    blocks = [("title", "T")]
    for k in range(60):
        blocks += [("p", sentence * (1 + (k * 5) % 13)), ("h", f"Heading {k}"), ("p", sentence * 6)]
    layout: list = []
    R.to_pdf(blocks, tmp_path / "a.pdf", max_pages=None, layout=layout)
    top, bottom = 10.0, 297.0 - 10.0  # A4, the margins _render sets (mm)
    line = 0.45 * (8.5 - R.TIGHTEN_TO_SAVE_A_PAGE)  # the smallest text line to_pdf may choose here (mm)
    headings = [(page, y) for kind, page, y in layout if kind == "h"]
    assert len(headings) == 60
    assert all(y + 7 + 3 * line <= bottom for _, y in headings), max(y for _, y in headings)
    moved = [i for i in range(1, len(layout)) if layout[i][0] == "h" and layout[i][1] > layout[i - 1][1]
             and layout[i][2] == pytest.approx(top)]  # at a page's top, and the text before it on the last one
    assert moved


def test_note_embeds_the_figures_it_references(tmp_path, capsys):
    """#18: a line holding only ![caption](file.png) becomes the figure in the PDF, not its path."""
    from PIL import Image
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "fig.png")
    note = tmp_path / "note.md"
    note.write_text("# A note\n\nSome text.\n\n![the red figure](fig.png)\n\n![gone](missing.png)\n")
    assert main(["note", str(note)]) == 0
    pdf = (tmp_path / "note.pdf").read_bytes()
    assert pdf.count(b"/Subtype /Image") == 1  # the missing file stays as its caption


def test_a_knob_added_after_a_run_reads_as_its_default_in_groups_labels_and_claims(tmp_path):
    """The MambaOut campaign's runs predate model.kernel_size; its ablation sets it to 3. The old runs
    group with a run that states the default, are labelled 'kernel_size=default' (not 'None'), and stay
    the paper's method in the claim; the ablation does not."""
    import json
    import shutil
    from pathlib import Path

    from reproscope.papers import PAPERS
    from reproscope.report.report import _matches
    from reproscope.report.runs import group_runs, load_run
    keep = Path(__file__).resolve().parents[1] / "docs" / "reproductions" / "mambaout-cpu" / "runs"
    old, k3 = keep / "mambaout-mambaout_quick-imagenette-cpu-s0", keep / "mambaout-mambaout_quick-imagenette-cpu-k3-s0"
    assert "kernel_size" not in json.loads((old / "config.json").read_text())["model"]
    stated = tmp_path / "stated-s1"
    shutil.copytree(old, stated)
    cfg = json.loads((stated / "config.json").read_text())
    cfg["model"]["kernel_size"], cfg["run"]["seed"] = 0, 1
    (stated / "config.json").write_text(json.dumps(cfg))
    groups = group_runs([load_run(old), load_run(stated), load_run(k3)])
    assert sorted((g.label, len(g.runs)) for g in groups) == [("mambaout_quick [kernel_size=3]", 1),
                                                             ("mambaout_quick [kernel_size=default]", 2)]
    method = [g.label for g in groups if _matches(g, PAPERS["mambaout"].claim.method)]
    assert method == ["mambaout_quick [kernel_size=default]"]


TINY_CLI = ["--no-progress", "--set", "data.train_size=64", "--set", "data.val_size=32", "--set", "data.batch_size=32",
            "--set", "data.eval_batch_size=32", "--set", "sched.epochs=1", "--set", "model.patch_size=8",
            "--set", "run.threads=1", "--set", "instrument.probes=false"]


def _run_with_absolute_paths(tmp_path, monkeypatch):
    """A CLI run whose run folder and data root are absolute paths under ``tmp_path``, its argv recorded
    as typed (built-in shapes10 ignores data.root, which still reaches config.json and the deviations)."""
    import sys
    data, rd = tmp_path / "data", tmp_path / "runs" / "r0"
    data.mkdir()
    argv = ["reproscope", "train", "--run-dir", str(rd), "--set", f"data.root={data}", *TINY_CLI]
    monkeypatch.setattr(sys, "argv", argv)
    assert main(argv[1:]) == 0
    return rd


def test_a_report_never_shows_the_machines_absolute_paths(tmp_path, monkeypatch, capsys):
    """#33: a run made outside the repository: report.md names its folder and data root by their last
    components (the command lines too), never by the absolute path of the author's machine."""
    rd = _run_with_absolute_paths(tmp_path, monkeypatch)
    out = tmp_path / "rep"
    assert main(["report", str(rd), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert str(tmp_path) not in md
    assert "--run-dir .../runs/r0" in md and f"data.root=.../{tmp_path.name}/data" in md
    assert "reproscope report .../runs/r0 --out .../" in md


def test_a_report_shows_paths_under_the_working_directory_relative_to_it(tmp_path, monkeypatch, capsys):
    """#33: a run made and reported from the folder that holds it: every path reads as typed there."""
    monkeypatch.chdir(tmp_path)
    rd = _run_with_absolute_paths(tmp_path, monkeypatch)
    assert main(["report", str(rd), "--out", "rep"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert str(tmp_path) not in md
    assert "--run-dir runs/r0 --set data.root=data" in md and "reproscope report runs/r0 --out rep" in md
    assert "| data | " in md and "shapes10 (data)" in md


def test_display_path_is_relative_to_the_base_or_only_its_last_components(tmp_path):
    from pathlib import Path

    from reproscope.report.paths import display_arg, display_path
    home = Path.home()
    assert display_path(tmp_path / "a" / "b", tmp_path) == "a/b" and display_path(tmp_path, tmp_path) == "."
    assert display_path("data/x", tmp_path) == "data/x" and display_path("", tmp_path) == ""  # not absolute: as given
    assert display_path(home / "me" / "datasets" / "imagenette", tmp_path) == ".../datasets/imagenette"
    assert display_path(home / "x", tmp_path) == ".../x"  # never the home folder itself
    assert display_arg(f"data.root={tmp_path}/d", tmp_path) == "data.root=d"
    assert display_arg(f"{home}/net.py:make", tmp_path) == ".../net.py:make"
    assert display_arg("timm:vit_tiny", tmp_path) == "timm:vit_tiny" and display_arg("--set", tmp_path) == "--set"
