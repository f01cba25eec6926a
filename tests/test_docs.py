"""The docs never point at evidence that is not in the repository.

Every relative link in README.md and docs/**/*.md, and every repository path in a code span
(a token whose first component is a top-level folder, ``reproscope/`` or a subpackage of it), must be
a tracked file or a folder holding tracked files, and every link to a heading (``doc.md#anchor``) must
name one. The report of each note's committed runs must reproduce the results table committed beside
the note. The tables the docs copy from the code (the commands, the Trainer's events and event types,
the bug zoo, the L4-day plan, the models) must equal it, and README.md must list every doc.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
PATHLIKE = re.compile(r"^[\w.\-/*]+(::[\w\[\]\-.|]+)?$")


def _tracked() -> set[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = set(out.splitlines())
    return files | {str(Path(f).parent) + "/" for f in files} | {
        p + "/" for f in files for p in _parents(f)}


def _parents(f: str):
    parts = f.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _roots() -> set[str]:
    """First path components that mark a repository path: top-level tracked folders, ``reproscope``
    and its subpackages (``model/vit.py`` in a table means ``src/reproscope/model/vit.py``)."""
    tracked = [f for f in _tracked() if not f.endswith("/")]
    top = {f.split("/")[0] for f in tracked if "/" in f}
    sub = {f.split("/")[2] for f in tracked if f.startswith("src/reproscope/") and f.count("/") >= 3}
    return top | sub | {"reproscope", "src", "tests", "docs", "benchmarks", "experiments", "examples"}


def _exists(rel: str, doc: Path, tracked: set[str]) -> bool:
    rel = rel.split("::")[0].split("#")[0]
    rel = rel.split("*")[0]
    if not rel:
        return True
    bases = [doc.parent.relative_to(ROOT), Path("."), Path("src"), Path("src/reproscope")]
    for b in bases:
        cand = str(b / rel).replace("\\", "/")
        cand = str(Path(cand)) if not cand.endswith("/") else str(Path(cand)) + "/"
        cand = cand[2:] if cand.startswith("./") else cand
        if cand in tracked or cand + "/" in tracked or cand.rstrip("/") + "/" in tracked:
            return True
    return False


def doc_references(doc: Path) -> list[tuple[int, str]]:
    """(line number, path) of every relative link and every repository-path code span in ``doc``."""
    roots = _roots() - {"runs"}  # runs/... in a command is where it writes, not evidence
    refs = []
    in_fence = False
    for n, line in enumerate(doc.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        for m in LINK.finditer(line):
            target = m.group(1)
            if not re.match(r"^[a-z]+:", target) and not target.startswith("#"):
                refs.append((n, target))
        spans = [line] if in_fence else [m.group(1) for m in CODE.finditer(line)]
        for span in spans:
            for tok in span.split():
                tok = tok.strip("()[],;:'\"")
                if "/" in tok and PATHLIKE.match(tok) and tok.split("/")[0] in roots and "<" not in tok:
                    refs.append((n, tok))
    return refs


def test_every_doc_reference_is_tracked():
    tracked = _tracked()
    missing = [f"{doc.relative_to(ROOT)}:{n}: {ref}" for doc in _docs() for n, ref in doc_references(doc)
               if not _exists(ref, doc, tracked)]
    assert not missing, "docs point at files that are not in the repository:\n" + "\n".join(missing)


def test_the_reference_finder_can_fail(tmp_path):
    doc = ROOT / "docs" / "_probe_test.md"
    doc.write_text("see [the runs](dyt-cpu/nowhere/) and `tests/test_nothing_here.py`\n")
    try:
        refs = doc_references(doc)
        assert [r for _, r in refs] == ["dyt-cpu/nowhere/", "tests/test_nothing_here.py"]
        assert not any(_exists(r, doc, _tracked()) for _, r in refs)
    finally:
        doc.unlink()


def _results_table(md: str) -> list[str]:
    lines = md.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("## Results"))
    table = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            table.append(line)
    return table


NOTES = {  # note folder -> its committed runs; the report there was generated from them
    "docs/reproductions/dyt-cpu": "docs/reproductions/dyt-cpu/runs",
    "docs/reproductions/dyt-cifar10-cpu": "docs/reproductions/dyt-cifar10-cpu/runs",
    "docs/reproductions/kat-cpu": "docs/reproductions/kat-cpu/runs",
    "docs/reproductions/mambaout-cpu": "docs/reproductions/mambaout-cpu/runs",
}


@pytest.mark.parametrize("folder", sorted(NOTES))
def test_committed_runs_reproduce_the_committed_results_table(folder, tmp_path):
    from reproscope.report.report import report
    runs = sorted(p for p in (ROOT / NOTES[folder]).iterdir() if p.is_dir())
    assert runs, f"{NOTES[folder]} holds no run folders"
    assert report([str(r) for r in runs], str(tmp_path / "out")) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    got, want = _results_table(text), _results_table((ROOT / folder / "report.md").read_text())
    assert got and got == want
    params = [line for line in text.splitlines() if line.startswith("| model parameters |")]
    assert params and ": ?" not in params[0], params  # every registered model is counted (KAT's init too)
    shutil.rmtree(tmp_path / "out")


# --- anchors: a link to `doc.md#heading` must name a heading of that doc ---------------------------------

def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    seen: dict[str, int] = {}
    in_fence = False
    for line in doc.read_text().splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        m = None if in_fence else re.match(r"^#{1,6} (.+)$", line)
        if m:
            s = _slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            yield s if n == 0 else f"{s}-{n}"


def test_every_anchor_names_a_heading():
    bad = []
    for doc in _docs():
        for n, ref in doc_references(doc):
            path, _, anchor = ref.partition("#")
            if not anchor:
                continue
            target = doc if not path else (doc.parent / path)
            if target.suffix == ".md" and target.exists() and anchor not in set(_anchors(target)):
                bad.append(f"{doc.relative_to(ROOT)}:{n}: {ref}")
    assert not bad, "links to headings that do not exist:\n" + "\n".join(bad)


def test_the_readme_lists_every_doc():
    readme = (ROOT / "README.md").read_text()
    linked = {t for _, t in doc_references(ROOT / "README.md")}
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"docs/{p.name}" not in linked]
    assert not missing, f"README.md's docs list misses {missing}"
    assert len(readme.splitlines()) <= 160, "README.md is the pitch and the index; topics go in docs/"


# --- tables copied from the code must equal it ----------------------------------------------------------

def _table_rows(doc: Path, heading: str) -> list[list[str]]:
    """The cells of the first table under ``heading`` (a Markdown heading's text), header and rule left out."""
    lines = doc.read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if re.match(r"^#+ ", l) and l.lstrip("# ").strip() == heading)
    rows, started = [], False
    for line in lines[start + 1:]:
        if line.startswith("|"):
            started = True
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif started:
            break
    return rows[2:]


def _code(cell: str) -> str:
    assert cell.startswith("`") and cell.endswith("`"), cell
    return cell[1:-1]


def test_the_documented_events_are_the_callbacks_methods():
    import inspect

    from reproscope.train.callbacks import EVENTS, Callback
    rows = _table_rows(ROOT / "docs" / "architecture.md", "The event vocabulary")
    assert [_code(r[0]) for r in rows] == list(EVENTS), "docs/architecture.md: the event table != train.callbacks.EVENTS"
    for r in rows:
        event = _code(r[0])
        params = list(inspect.signature(getattr(Callback, f"on_{event}")).parameters.values())[1:]
        want = f"on_{event}({', '.join(('**' if p.kind is p.VAR_KEYWORD else '') + p.name for p in params)})"
        assert _code(r[1]) == want, (event, r[1], want)


def test_the_documented_event_types_are_the_vocabulary():
    from reproscope.train.events import Event
    lines = (ROOT / "docs" / "architecture.md").read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("| type | meaning |"))
    rows = [l for l in lines[start + 2:] if l.startswith("|")][:len(Event) + 1]
    rows = rows[:next((i for i, l in enumerate(rows) if not l.startswith("| `")), len(rows))]
    assert [_code(l.split("|")[1].strip()) for l in rows] == [e.value for e in Event]


def test_the_zoo_table_is_the_zoo():
    from reproscope.checks.zoo import BUGS
    doc = ROOT / "docs" / "zoo.md"
    rows = _table_rows(doc, "The bug zoo")
    got = [(_code(r[0]), _code(r[1]), r[2], _code(r[3]), _code(r[4]), r[5]) for r in rows]
    want = [(b.name, b.recipe, b.what, b.expect, b.code, "yes" if b.any_model else "no") for b in BUGS]
    assert got == want
    assert f"plants {len(BUGS)} classic bugs" in doc.read_text()


PLAN_ROW = r"^\| {label} \| (\w[\w-]*), (\d+), (\d+) \|.*\| ([\d.]+) / ([\d.]+) / ([\d.]+) \|$"


@pytest.mark.parametrize("doc", ["README.md", "docs/planning.md"])
def test_the_l4_day_table_is_what_plan_fit_24_prints(doc):
    from reproscope.diagnostics.budget import RANGE, fit
    text = (ROOT / doc).read_text()
    for paper, label in (("dyt", "DyT"), ("kat", "KAT"), ("mambaout", "MambaOut")):
        row = re.search(PLAN_ROW.format(label=label), text, re.M)
        assert row, (doc, label)
        c = fit(paper, 24)
        assert (row.group(1).lower(), int(row.group(2)), int(row.group(3))) == (c.dataset.name, c.res, c.epochs)
        assert [float(x) for x in row.groups()[3:]] == [round(c.hours[k], 1) for k in RANGE]


def test_the_models_table_is_what_reproscope_models_prints():
    """Names, parameter counts, the paper's numbers and resolution (the FLOP columns need a forward pass
    per model: `reproscope models` prints them; the doc says which torch printed them)."""
    from reproscope.diagnostics.models_table import model_rows
    text = (ROOT / "docs" / "models.md").read_text()
    block = text[text.index("```\nmodel "):]
    lines = block.splitlines()[2:]
    lines = lines[:next(i for i, l in enumerate(lines) if l.startswith("GFLOPs:"))]
    got = [(l.split()[0], l.split()[1], l.split()[2]) for l in lines]
    want = [(r["name"], f"{r['params_m']:.2f}M",
             f"({r['paper_params_m']:.1f}M)" if r["paper_params_m"] else "(-)") for r in model_rows(flops=False)]
    assert got == want


def test_the_commands_table_names_every_subcommand_and_its_doc():
    import argparse

    from reproscope.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    rows = _table_rows(ROOT / "README.md", "Commands")
    named = {_code(r[0]).split()[1] for r in rows}
    assert named == set(sub.choices), f"README.md's commands table: {sorted(named ^ set(sub.choices))}"
    assert all(LINK.search(r[-1]) for r in rows), "every command row links to the doc that covers it"


def test_the_readme_ablation_table_comes_from_the_committed_runs():
    """README's "What each deviation cost" is `reproscope ablate`'s table of the committed ablation.json, and
    that file's effects are what the committed runs give again (nothing left to train)."""
    from reproscope import ablate as ab
    from reproscope.report.ablation import ablation_rows
    base = ROOT / "docs" / "ablation-example" / "student"
    result = json.loads((base / "ablation" / "ablation.json").read_text())
    assert _table_rows(ROOT / "README.md", "What each deviation cost") == ablation_rows(result)
    p = ab.plan(base, "auto", seeds=3, joint=True)
    assert p.est_s == {}  # every run of the campaign is committed and finished
    again = ab.summarize(p)
    assert again["effects"] == result["effects"] and again["joint"] == result["joint"]
