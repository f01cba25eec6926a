"""The checks pass on correct models and recipes and fail, naming the cause, on classic bugs (the zoo)."""


import pytest
import torch

from reproscope.checks import CHECKS, CheckData, run_checks
from reproscope.checks.zoo import BUGS, ZOO_RECIPE_OVERRIDES, caught, get_bug
from reproscope.cli import main
from reproscope.config import apply_overrides
from reproscope.diagnostics.diagnose import run_diagnosis
from reproscope.model import create_model, list_models
from reproscope.recipes import get_recipe

MODEL_CHECKS = ["loss-at-init", "init-scale", "grad-flow", "batch-independence"]
TRAINING_CHECKS = ["overfit-batch", "input-independent", "determinism", "lr-range"]
BIG = ("large", "base", "small")  # release sizes: the full tier checks each family's tiny and smaller ones
SMALL_DATA = ZOO_RECIPE_OVERRIDES


@pytest.fixture(scope="module")
def shapes():
    """256 shapes10 images, normalised, with labels: the data a pytest user would hand to the checks."""
    from reproscope.checks import recipe_subject
    _, data, _ = recipe_subject(apply_overrides(get_recipe("quickstart"), SMALL_DATA), n=256)
    return CheckData(data.x, data.y, 10, lr=2e-3)


def small_model(name):
    kw = {"patch_size": 2} if name.startswith(("convnext", "mambaout")) else {"patch_size": 8}
    return lambda: create_model(name, num_classes=10, img_size=32, **kw)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.release) if any(b in n for b in BIG) else n
                                  for n in list_models()])  # small/base/large: 4-45 s each, the classes of tiny
def test_model_checks_pass_on_every_registered_model(shapes, name):
    data = CheckData(shapes.x[:32], shapes.y[:32], 10)
    results = run_checks(small_model(name), data, MODEL_CHECKS)
    assert all(r.status != "fail" for r in results), [r.summary() for r in results]
    assert all(r.status == "pass" for r in results[1:]), [r.summary() for r in results]  # loss-at-init may warn


HEAVY = pytest.mark.release  # pytest -m release: KAT/ConvNeXt/MambaOut 10-20 min each on 2 CPU cores


@pytest.mark.parametrize("name", ["vit_quick", pytest.param("vit_tiny", marks=HEAVY)]  # vit_tiny: ViT-quick's classes at width
                         + [pytest.param(n, marks=HEAVY) for n in ("kat_tiny", "convnext_tiny", "mambaout_femto")])
@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_training_checks_pass_with_plain_tensors(shapes, name):
    """The pytest-user path: only (x, y), the textbook AdamW step, half the batch held out."""
    results = run_checks(small_model(name), shapes, TRAINING_CHECKS + ["data"])
    assert all(r.status != "fail" for r in results), [r.summary() for r in results]


def _bug_param(name: str):
    """Over 5 s on 2 cores: the full tier. labels-shuffled (35 s) is a release test; its check and code on the
    same bug stay in the full tier (test_checks_robust's shuffled-labels test, 19 s)."""
    if name == "labels-shuffled":
        return pytest.param(name, marks=HEAVY)
    return pytest.param(name, marks=pytest.mark.slow) if name in ("label-smoothing-1", "lr-1000x", "lr-zero") else name


@pytest.mark.parametrize("bug", [_bug_param(b.name) for b in BUGS])
def test_each_bug_is_caught_by_its_check(bug):
    """Each zoo bug, planted in its recipe, fails the check the zoo says and that check names the cause."""
    b = get_bug(bug)
    recipe = apply_overrides(get_recipe(b.recipe), SMALL_DATA)
    results = run_diagnosis(recipe, b.expect, mutation=b.mutation)
    assert caught(b, results), [(r.summary(), r.causes) for r in results]


@pytest.mark.parametrize("recipe", ["quickstart", pytest.param("quickstart-dyt", marks=pytest.mark.slow)])
@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_correct_recipe_passes_every_check(recipe, tmp_path):
    """No false alarm from `diagnose all` on the correct quickstart recipes (the zoo's correct rows)."""
    results = run_diagnosis(apply_overrides(get_recipe(recipe), SMALL_DATA), "all", out_dir=tmp_path)
    assert [r.name for r in results] == list(CHECKS) + ["recipe-audit"]
    assert all(r.status == "pass" for r in results), [(r.summary(), r.causes) for r in results]
    assert (tmp_path / "contact_sheet.png").stat().st_size > 1000
    assert (tmp_path / "lr_range.png").stat().st_size > 1000


@pytest.mark.release
def test_zoo_full_diagnosis():
    """The whole zoo, as `reproscope zoo` runs it: diagnose all on every bug, and on the correct quickstart
    recipes (no false alarms). In every full suite instead: each bug against its check
    (test_each_bug_is_caught_by_its_check) and both quickstart recipes through every check
    (test_correct_recipe_passes_every_check)."""
    from reproscope.diagnostics.zoo import zoo_table
    table, ok = zoo_table(BUGS, ("quickstart", "quickstart-dyt"), progress=False)
    assert ok, table


@pytest.mark.release
def test_zoo_full_diagnosis_on_every_correct_recipe():
    """No false alarm from `diagnose all` on every correct built-in recipe (conv and KAT ones take minutes each)."""
    from reproscope.checks.zoo import CORRECT_RECIPES
    from reproscope.diagnostics.zoo import zoo_table
    table, ok = zoo_table([], CORRECT_RECIPES, progress=False)
    assert ok, table


def test_determinism_catches_an_unseeded_stream(shapes):
    """A training stream that draws from an unseeded source must fail determinism (not only the zoo's bugs)."""
    import random
    data = CheckData(shapes.x, shapes.y, 10)
    data.source = None
    orig = data.train_stream
    data.train_stream = lambda i: orig(i + random.randrange(10_000))  # noqa: B023
    res = run_checks(small_model("vit_quick"), data, ["determinism"])[0]
    assert res.status == "fail" and res.codes[0] == "seed-nondeterministic"


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_diagnose_cli(capsys, tmp_path):
    sets = [x for k, v in SMALL_DATA.items() for x in ("--set", f"{k}={v}")]
    rc = main(["diagnose", "all", *sets, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    for name in list(CHECKS) + ["recipe-audit"]:
        assert name in out
    rc = main(["diagnose", "grad-flow", *sets, "--bug", "frozen-block", "--json"])
    out = capsys.readouterr().out
    assert rc == 1 and '"status": "fail"' in out and "frozen" in out
    assert main(["diagnose", "overfit-bach", *sets]) == 2
    assert "did you mean 'overfit-batch'" in capsys.readouterr().err


def test_user_model_from_the_cli(capsys):
    rc = main(["diagnose", "batch-independence", "--set", "data.train_size=200", "--set", "data.batch_size=32",
               "--model", "reproscope.model.vit:vit_quick"])
    assert rc == 0, capsys.readouterr().out
    assert main(["diagnose", "grad-flow", "--model", "nope.nothing:f"]) == 2
    assert "cannot import" in capsys.readouterr().err


def test_check_results_are_structured(shapes):
    r = run_checks(small_model("vit_quick"), CheckData(shapes.x[:8], shapes.y[:8], 10), ["loss-at-init"])[0]
    d = r.to_dict()
    assert set(d) >= {"name", "status", "measured", "expected", "explanation", "causes", "details"}
    assert abs(d["details"]["ln_k"] - torch.log(torch.tensor(10.0)).item()) < 1e-6


def test_diagnose_user_data_file(shapes, tmp_path, capsys):
    """--data FILE.pt: the user's own tensors, checked with the textbook step."""
    torch.save({"x": shapes.x, "y": shapes.y}, tmp_path / "d.pt")
    assert main(["diagnose", "data", "--data", str(tmp_path / "d.pt"), "--out", str(tmp_path)]) == 0
    words = lambda: " ".join(capsys.readouterr().out.split())  # noqa: E731  (result lines wrap to the terminal)
    assert "not checked (only a batch given)" in words()
    torch.save({"x": shapes.x * 255 + 128, "y": shapes.y}, tmp_path / "raw.pt")
    assert main(["diagnose", "data", "--data", str(tmp_path / "raw.pt")]) == 1
    assert "not normalised" in words()
    torch.save([1, 2], tmp_path / "bad.pt")
    assert main(["diagnose", "data", "--data", str(tmp_path / "bad.pt")]) == 2


def test_recipe_audit_alone_runs_no_other_check():
    results = run_diagnosis(apply_overrides(get_recipe("quickstart"), SMALL_DATA), "recipe-audit")
    assert [r.name for r in results] == ["recipe-audit"]


@pytest.mark.parametrize("n", [1, 2])
def test_diagnose_counts_its_checks_in_the_right_number(n, tmp_path, capsys, monkeypatch):
    """#49: the closing line says "1 check", not "1 checks" (a preflight FAIL returns a single result)."""
    from reproscope.checks.core import CheckResult
    from reproscope.diagnostics import diagnose as diag
    monkeypatch.setattr(diag, "run_diagnosis", lambda *a, **kw: [CheckResult(f"c{i}", "pass", "x", "x")
                                                                  for i in range(n)])
    assert diag.diagnose(get_recipe("quickstart"), "all", out_dir=str(tmp_path / "out")) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert {1: "(1 check in ", 2: "(2 checks in "}[n] in last


def test_input_independent_names_a_slow_start(shapes):
    """Outputs that start ~0 and stay there (a scale lost through depth) are called a slow start, not a data bug."""
    class Tiny(torch.nn.Module):
        def __init__(self, gain):
            super().__init__()
            self.fc = torch.nn.Linear(3 * 32 * 32, 10)
            self.gain = gain

        def forward(self, x):
            return self.fc(x.flatten(1)) * self.gain  # [B, 3, 32, 32] -> [B, 3072] -> [B, 10]

    data = CheckData(shapes.x, shapes.y, 10, lr=1e-3)
    slow = run_checks(lambda: Tiny(1e-6), data, ["input-independent"])[0]
    assert slow.status == "fail" and slow.codes[0] == "outputs-near-zero", slow.causes
    normal = run_checks(lambda: Tiny(1.0), data, ["input-independent"])[0]  # it learns (and overfits 128 images)
    assert "outputs-near-zero" not in normal.codes, normal.causes


def test_recipe_checks_leave_no_temporary_folders():
    import gc
    import glob
    import tempfile
    pattern = f"{tempfile.gettempdir()}/reproscope-checks-*"
    before = set(glob.glob(pattern))
    results = run_diagnosis(apply_overrides(get_recipe("quickstart"), SMALL_DATA), "determinism")
    assert results[0].status == "pass"
    gc.collect()
    assert not set(glob.glob(pattern)) - before  # (folders of earlier tests' data may go meanwhile)


def test_zoo_refuses_an_unknown_recipe_before_running(capsys):
    assert main(["zoo", "--bug", "frozen-block", "--correct", "dyt-convnext_tny"]) == 2
    assert "did you mean 'dyt-convnext_tiny'" in capsys.readouterr().err


@pytest.mark.parametrize("over, flagged", [({"data.batch_size": 128}, True),
                                           ({"data.batch_size": 128, "optim.accum_steps": 32}, False),
                                           ({"data.batch_size": 128, "optim.lr": 1.25e-4}, False),
                                           ({}, False)])
def test_recipe_audit_holds_lr_against_the_effective_batch(over, flagged):
    """The issue's input: the DyT paper recipe at batch 128 keeps lr 4e-3 (32x the paper's lr per image);
    with accumulation 32 (effective batch 4096) or the linearly scaled lr it is right."""
    from reproscope.checks import recipe_audit
    r = recipe_audit(apply_overrides(get_recipe("dyt-vit_base-paper"), over))
    assert ("lr-batch-ratio" in r.codes) == flagged, r.causes
    if flagged:
        assert r.status == "fail" and "32x" in r.causes[r.codes.index("lr-batch-ratio")]


class _NaNNet(torch.nn.Module):
    """A conv net whose parent forward emits NaN (forward), or whose untaken sqrt branch has a NaN gradient."""

    def __init__(self, mode):
        super().__init__()
        self.mode = mode
        self.blocks = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        h = self.blocks(x).mean((2, 3))  # [B, 16, H, W] -> [B, 16]
        if self.mode == "forward":
            h = h * float("nan")
        else:
            h = torch.where(h > 0.05, torch.sqrt(h - 0.05), torch.zeros_like(h))
        return self.head(h)


@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_checks_on_a_model_that_emits_nan_say_so_once_and_never_raise(shapes, mode):
    """Issue 45, item 3: a layer that returns NaN made ten checks FAIL with one sentence while their text
    said "not measured". Now the first check that measures the model FAILs with the cause (where the
    tripwire saw the first NaN born), the rest are not measured (SKIP) naming that check, and the tally
    counts them as not measured."""
    from reproscope.checks.core import tally
    results = run_checks(lambda: _NaNNet(mode), CheckData(shapes.x, shapes.y, 10, lr=1e-3))
    by = {r.name: r for r in results}
    assert by["data"].status == "pass"  # the data pipeline does not depend on the model
    measured_anyway = {"data"} | ({"loss-at-init", "init-scale"} if mode == "backward" else set())
    first = "loss-at-init" if mode == "forward" else "grad-flow"
    assert by[first].status == "fail" and by[first].codes == ["nonfinite-model"], by[first].codes
    assert f"non-finite {mode}" in by[first].causes[0] and "'head'" in by[first].causes[0]
    assert not by[first].measured.startswith("not measured")
    later = [r for r in results if r.name not in measured_anyway | {first}]
    assert len(later) >= 8
    for r in later:
        assert r.status == "skip" and r.codes == ["nonfinite-see-first"], (r.name, r.status, r.codes)
        assert r.details["see"] == first and f"(see {first})" in r.measured
    assert all("check-crashed" not in r.codes for r in results)
    assert sum(r.status == "fail" for r in results) == 1
    assert f"{len(later)} not measured" in tally(results)
    from reproscope.diagnostics.diagnose import format_results
    assert format_results(results).count("[nonfinite-") == 1  # the cause in the details once, not per check
    (only,) = run_checks(lambda: _NaNNet(mode), CheckData(shapes.x, shapes.y, 10, lr=1e-3), ["batch-independence"])
    assert (only.status, only.codes) == ("fail", ["nonfinite-model"])  # run alone, a check is the first


def _resaved(img: torch.Tensor, resize: int | None) -> torch.Tensor:
    """A uint8 [3, H, W] image re-saved as JPEG q75 (and first resized down and back when ``resize``)."""
    import io

    from PIL import Image
    im = Image.fromarray(img.permute(1, 2, 0).numpy())
    size = im.size
    if resize:
        im = im.resize((resize, resize), Image.BICUBIC).resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=75)
    buf.seek(0)
    return torch.from_numpy(__import__("numpy").asarray(Image.open(buf).convert("RGB")).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("share, status", [(0.03, "warn"), (0.2, "fail"), (0.0, "pass")])
def test_near_duplicate_leakage_is_found_beside_exact_copies(tmp_path, share, status):
    """The issue's input: validation images that are training images re-saved as JPEG or resized. shapes10
    itself (similar procedural images) must give no near duplicates."""
    import dataclasses

    from reproscope.checks.subject import Mutation

    def leak(train, val):
        n = int(share * len(val))
        images = val.images.clone()
        for i in range(n):
            images[i] = _resaved(train.images[i], 24 if i % 2 else None)
        return train, dataclasses.replace(val, images=images)
    r = run_diagnosis(apply_overrides(get_recipe("quickstart"), SMALL_DATA), "data", mutation=Mutation(datasets=leak),
                      out_dir=tmp_path)[0]
    assert r.status == status, r.causes
    assert r.details["val_images_in_train"] == 0  # none is an exact copy
    if share:
        planted = int(share * 300)  # JPEG q75 re-saves and 24 px round trips: nearly all are found, none extra
        assert 0.8 * planted <= r.details["val_near_duplicates"] <= planted and "train-val-near-duplicates" in r.codes
        assert (tmp_path / "near_duplicates.png").is_file()
    else:
        assert r.details["val_near_duplicates"] == 0


def test_a_long_checks_progress_updates_in_place_on_a_terminal(monkeypatch):
    """#49: on a terminal a long check's progress is one bar redrawn in place (tqdm, not kept), not a stack of
    lines; redirected, it stays plain lines."""
    import sys

    from tqdm.auto import tqdm

    from reproscope.checks import core
    monkeypatch.setattr(core, "_PROGRESS", [True])
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = core.check_progress(100, "lr-range: sweeping")
    assert isinstance(bar, tqdm) and bar.leave is False
    bar.close()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert isinstance(core.check_progress(100, "lr-range: sweeping"), core._CheckLines)
