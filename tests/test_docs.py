"""The docs never point at evidence that is not in the repository.

Every relative link in README.md and docs/**/*.md, and every repository path in a code span
(a token whose first component is a top-level folder, ``reproscope/`` or a subpackage of it), must be
a tracked file or a folder holding tracked files. The report of each note's committed runs must
reproduce the results table committed beside the note.
"""

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
    from reproscope.diagnostics.report import report
    runs = sorted(p for p in (ROOT / NOTES[folder]).iterdir() if p.is_dir())
    assert runs, f"{NOTES[folder]} holds no run folders"
    assert report([str(r) for r in runs], str(tmp_path / "out")) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    got, want = _results_table(text), _results_table((ROOT / folder / "report.md").read_text())
    assert got and got == want
    params = [line for line in text.splitlines() if line.startswith("| model parameters |")]
    assert params and ": ?" not in params[0], params  # every registered model is counted (KAT's init too)
    shutil.rmtree(tmp_path / "out")
