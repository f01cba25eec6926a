"""`reproscope diagnose eval`: each cause of a near-chance validation score, planted in a small CNN
trained here on shapes10 (over 70 % val top-1 after 250 Adam steps, asserted below), is named by its code; the correct
checkpoint passes everything."""

from __future__ import annotations

import textwrap

import pytest
import torch

from reproscope.cli import main
from reproscope.config import apply_overrides
from reproscope.data.datasets import build_datasets, channel_stats
from reproscope.diagnostics.evaluate import preprocessing_variants, run_eval_diagnosis
from reproscope.recipes import get_recipe

DATA = ["data.train_size=2000", "data.val_size=500"]

NET = '''
import torch
import torch.nn as nn

MEAN, STD = {mean}, {std}


class Net(nn.Module):
    def __init__(self, num_classes=10, p_drop=0.0):
        super().__init__()
        def blk(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())
        self.features = nn.Sequential(blk(3, 16), nn.MaxPool2d(2), blk(16, 32), nn.MaxPool2d(2), blk(32, 64))
        self.drop = nn.Dropout(p_drop)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.head(self.drop(self.features(x).mean((2, 3))))


class Expects01(nn.Module):
    """Trained on [0, 1] images with no mean/std: the normalisation sits inside."""
    def __init__(self, num_classes=10):
        super().__init__()
        self.net = Net(num_classes)

    def forward(self, x):
        m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
        return self.net((x - m) / s)


def make(num_classes=10):
    return Net(num_classes)


def make_dropout(num_classes=10):
    return Net(num_classes, p_drop=0.95)


def make_01(num_classes=10):
    return Expects01(num_classes)
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model file, state dict of the trained Net, recipe) shared by the tests."""
    import importlib.util
    d = tmp_path_factory.mktemp("evalnet")
    recipe = apply_overrides(get_recipe("quickstart"), DATA)
    tr, _ = build_datasets(recipe.data, progress=False)
    mean, std = channel_stats(tr)
    src = d / "net.py"
    src.write_text(textwrap.dedent(NET.format(mean=list(mean), std=list(std))))
    spec = importlib.util.spec_from_file_location("evalnet", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    x = preprocessing_variants(tr.images, 32, mean, std)["configured"]
    y = tr.labels.long()
    net = mod.make()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(250):
        idx = torch.randint(0, len(x), (64,))
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return src, {k: v.detach().clone() for k, v in net.state_dict().items()}, recipe, mod


def _run(trained, sd_or_obj, tmp_path, factory="make", name="ckpt.pt", recipe=True):
    src, _, r, _ = trained
    path = tmp_path / name
    torch.save(sd_or_obj, path)
    return {x.name: x for x in run_eval_diagnosis(r if recipe else None, path, model_spec=f"{src}:{factory}")}


def test_a_correct_checkpoint_passes(trained, tmp_path):
    res = _run(trained, trained[1], tmp_path)
    assert all(r.status == "pass" for r in res.values()), {n: (r.status, r.codes) for n, r in res.items()}
    assert res["class-mapping"].details["top1"] > 0.7


def test_a_ddp_prefix_is_stripped_and_named(trained, tmp_path):
    from reproscope.diagnostics.evaluate import verdict
    res = _run(trained, {f"module.{k}": v for k, v in trained[1].items()}, tmp_path)
    assert res["checkpoint-keys"].status == "warn" and res["checkpoint-keys"].codes == ["keys-prefix"]
    assert res["class-mapping"].details["top1"] > 0.7  # loaded after all
    assert "[keys-prefix]" in verdict(list(res.values()))  # the likely cause for a loader that does not strip it


def test_an_ema_under_timms_key_in_a_run_without_ema(trained, tmp_path):
    src, sd, r, mod = trained
    torch.manual_seed(1)
    res = _run(trained, {"state_dict": sd, "state_dict_ema": mod.make().state_dict()}, tmp_path)
    ema = res["raw-vs-ema"]  # quickstart has reg.ema_decay 0: no horizon to speak of
    assert ema.codes == ["ema-lags"] and "nan" not in ema.causes[0] and "no EMA" in ema.causes[0]


def test_what_is_not_a_checkpoint_is_named(tmp_path):
    from reproscope.train.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="without a last.pt"):
        run_eval_diagnosis(get_recipe("quickstart"), tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch file"):
        run_eval_diagnosis(get_recipe("quickstart"), tmp_path / "notes.txt")


def test_missing_keys_are_a_fail_strict_false_would_hide(trained, tmp_path):
    sd = {k: v for k, v in trained[1].items() if not k.startswith("head.")}
    res = _run(trained, sd, tmp_path)
    assert res["checkpoint-keys"].status == "fail" and "keys-missing" in res["checkpoint-keys"].codes
    assert "head.weight" in res["checkpoint-keys"].details["missing"]
    assert all(r.codes == ["not-measured"] for n, r in res.items() if n != "checkpoint-keys")  # never a PASS


def test_another_class_order_is_found_in_the_confusion_matrix(trained, tmp_path):
    perm = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 0])  # the model's class i is val's class perm[i]
    sd = dict(trained[1])
    inv = torch.argsort(perm)
    sd["head.weight"], sd["head.bias"] = sd["head.weight"][inv], sd["head.bias"][inv]
    res = _run(trained, sd, tmp_path)
    cm = res["class-mapping"]
    assert cm.status == "fail" and cm.codes == ["class-order"], cm.measured
    assert cm.details["permuted_top1"] > 0.7 and cm.details["top1"] < 0.3
    assert res["preprocessing"].status == "pass"  # no other cause is blamed


def test_a_model_trained_without_mean_std_is_a_preprocessing_mismatch(trained, tmp_path):
    wrapped = trained[3].make_01()
    wrapped.net.load_state_dict(trained[1])
    res = _run(trained, wrapped.state_dict(), tmp_path, factory="make_01")
    pre = res["preprocessing"]
    assert pre.status == "fail" and pre.codes == ["preprocessing-mismatch"], pre.measured
    assert max(pre.details["top1"], key=pre.details["top1"].get) == "no mean/std (0-1)"


def test_an_ema_that_still_holds_the_init_is_named_with_its_horizon(trained, tmp_path):
    src, sd, r, mod = trained
    r = apply_overrides(r, {"reg.ema_decay": 0.9999})
    torch.manual_seed(1)
    obj = {"model": sd, "ema": mod.make().state_dict(), "step": 250, "recipe_json": __import__("json").dumps(r.to_dict())}
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    res = {x.name: x for x in run_eval_diagnosis(None, path, model_spec=f"{src}:make")}  # the recipe it carries
    ema = res["raw-vs-ema"]
    assert ema.status == "warn" and ema.codes == ["ema-lags"] and round(ema.details["horizon_steps"]) == 10000
    assert ema.details["ema_recalibrated_top1"] < 0.5  # its BatchNorm statistics recomputed: still the init


def test_an_ema_with_stale_batchnorm_statistics_is_told_from_a_lagging_one(trained, tmp_path):
    """An EMA that averaged the weights but kept its BatchNorm buffers at init (an EMA of parameters only):
    recomputing the statistics on training images recovers it, so it is not blamed on the horizon."""
    src, sd, r, mod = trained
    r = apply_overrides(r, {"reg.ema_decay": 0.99})
    fresh = mod.make().state_dict()
    ema = {k: (fresh[k] if "running_" in k or "num_batches" in k else v) for k, v in sd.items()}
    obj = {"model": sd, "ema": ema, "step": 250, "recipe_json": __import__("json").dumps(r.to_dict())}
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    res = {x.name: x for x in run_eval_diagnosis(None, path, model_spec=f"{src}:make")}
    e = res["raw-vs-ema"]
    assert e.status == "warn" and e.codes == ["ema-stale-bn"], e.measured
    assert e.details["ema_top1"] < 0.5 and e.details["ema_recalibrated_top1"] > e.details["raw_top1"] - 0.2


def test_broken_batchnorm_statistics_and_train_mode_evaluation(trained, tmp_path):
    sd = dict(trained[1])
    for k in sd:
        if k.endswith("running_mean"):
            sd[k] = torch.zeros_like(sd[k])
        elif k.endswith("running_var"):
            sd[k] = torch.full_like(sd[k], 1e3)  # statistics that do not belong to these weights
    res = _run(trained, sd, tmp_path)
    assert res["eval-mode"].status == "fail" and res["eval-mode"].codes == ["running-stats"], res["eval-mode"].measured
    res = _run(trained, trained[1], tmp_path, factory="make_dropout")  # dropout 0.95 is on in train mode
    assert res["eval-mode"].codes == ["train-mode-eval"], res["eval-mode"].measured


def test_a_val_folder_missing_a_class_is_named(tmp_path):
    from PIL import Image
    for split, classes in (("train", ("ant", "bee", "cat")), ("val", ("ant", "cat"))):
        for c in classes:
            (tmp_path / "d" / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (40 * i, 90, 200)).save(tmp_path / "d" / split / c / f"{i}.png")
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    res = run_eval_diagnosis(get_recipe("quickstart"), tmp_path / "w.pt", overrides=[
        "data.dataset=imagefolder", f"data.root={tmp_path / 'd'}", f"data.cache_dir={tmp_path / 'cache'}"])
    assert [(r.name, r.status, r.codes) for r in res] == [("class-mapping", "fail", ["class-folders"])]
    assert "bee" in res[0].causes[0]


def test_the_cli(trained, tmp_path, capsys):
    src, sd, _, _ = trained
    torch.save({f"module.{k}": v for k, v in sd.items() if not k.startswith("head.")}, tmp_path / "c.pt")
    rc = main(["diagnose", "eval", "--checkpoint", str(tmp_path / "c.pt"), "--model", f"{src}:make",
               *sum((["--set", s] for s in DATA), []), "--recipe", "quickstart"])
    out = capsys.readouterr().out
    assert rc == 1 and "[keys-missing]" in out and "[keys-prefix]" in out
    assert main(["diagnose", "eval"]) == 2
    assert "--checkpoint PATH" in capsys.readouterr().err
    assert main(["diagnose", "eval", "--checkpoint", str(tmp_path / "c.pt")]) == 2  # a state dict carries no recipe
    assert "pass --recipe NAME" in capsys.readouterr().err


def test_an_untrained_model_is_a_training_fault_not_an_evaluation_fault(trained, tmp_path):
    from reproscope.diagnostics.evaluate import verdict
    torch.manual_seed(3)
    res = _run(trained, trained[3].make().state_dict(), tmp_path)
    assert "has not learned the task" in verdict(list(res.values()))


def test_the_crop_variant_resizes_the_whole_image():
    raw = torch.zeros(2, 3, 40, 40, dtype=torch.uint8)
    raw[:, :, :4] = 255  # a band the 32 px centre crop cuts away
    v = preprocessing_variants(raw, 32, (0.5,) * 3, (0.25,) * 3)
    whole, crop = v["resized whole image, no centre crop"], v["configured"]
    assert whole.shape == crop.shape == (2, 3, 32, 32)
    assert crop.max() == (0 - 0.5) / 0.25 and whole.max() > 0  # the band survives only the resize
