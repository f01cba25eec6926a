"""Your model in diagnose: factory specs, the arguments it gets, a pre-flight that fails once, and no
false alarms on correct models people use (BatchNorm, timm, torchvision)."""

import textwrap

import pytest
import torch
import torch.nn as nn
from conftest import release_except

from reproscope.checks import CheckData
from reproscope.checks.training import input_independent, overfit_batch
from reproscope.cli import main
from reproscope.config import ConfigError
from reproscope.model.spec import user_model

SMALL = ["--set", "data.train_size=512", "--set", "data.val_size=128", "--set", "data.batch_size=32"]


def _file(tmp_path, body: str, name="mynet.py"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


def test_factory_gets_the_arguments_it_declares(tmp_path):
    p = _file(tmp_path, """
        import torch.nn as nn
        SEEN = {}
        def make(num_classes, img_size=224):
            SEEN.update(num_classes=num_classes, img_size=img_size)
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * img_size * img_size, num_classes))
        def bare():
            return nn.Linear(4, 2)
    """)
    m = user_model(f"{p}:make", num_classes=7, img_size=32)()
    assert m[1].in_features == 3 * 32 * 32 and m[1].out_features == 7
    assert isinstance(user_model(f"{p}:bare", num_classes=7, img_size=32)(), nn.Linear)


@pytest.mark.parametrize("body, spec, needle", [
    (None, "{d}/nowhere.py:make", "does not exist"),
    ("def make(:\n", "{p}:make", "syntax error in {p} line 1"),
    ("import torch.nn as nn\ndef make_model(): return nn.Linear(2, 2)\n", "{p}:make", "did you mean 'make_model'"),
    ("def make(num_classes): return 3\n", "{p}:make", "returned int, not an nn.Module"),
    ("def make(num_classes): raise ValueError('no such depth')\n", "{p}:make", "raised ValueError: no such depth"),
    (None, "nosuchpkg.models:make", "cannot import 'nosuchpkg.models'"),
    (None, "timm:vit_tinny_patch16_224", "timm has no model 'vit_tinny_patch16_224'"),
])
def test_bad_specs_are_one_line(tmp_path, body, spec, needle):
    p = _file(tmp_path, body) if body else tmp_path / "mynet.py"
    spec, needle = spec.format(d=tmp_path, p=p), needle.format(p=p)
    with pytest.raises(ConfigError, match=None) as e:
        user_model(spec, num_classes=10, img_size=32)()
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_model_that_rejects_the_input_size_is_reported_once(tmp_path, capsys):
    p = _file(tmp_path, """
        import torch.nn as nn
        def make(num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 224 * 224, num_classes))
    """)
    rc = main(["diagnose", "all", "--model", f"{p}:make", *SMALL])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("rejects the data's input [2, 3, 32, 32]") == 1
    assert "--set data.img_size=N" in err and "Traceback" not in err


def test_wrong_output_shape_is_reported_once(tmp_path, capsys):
    p = _file(tmp_path, """
        import torch.nn as nn
        def make():
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 1000))
    """)
    rc = main(["diagnose", "all", "--model", f"{p}:make", *SMALL])
    err = capsys.readouterr().err
    assert rc == 2 and "expected logits [2, 10]" in err and "[2, 1000]" in err


class SmallBNNet(nn.Module):
    """A correct CNN whose BatchNorm momentum (0.01, torchvision's MobileNetV3 value) makes running
    statistics lag a short run far behind the batch statistics."""

    def __init__(self, num_classes=10, momentum=0.01):
        super().__init__()
        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1, bias=False), nn.BatchNorm2d(o, momentum=momentum), nn.ReLU())
        self.body = nn.Sequential(block(3, 32), block(32, 64), block(64, 64))
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def _shapes_data(n=256):
    from reproscope.data.shapes import generate_shapes
    x, y = generate_shapes(n, 32, seed=0)
    x = (x.float() / 255 - 0.5) / 0.25
    return CheckData(x, y, num_classes=10, lr=2e-3)


def test_overfit_batch_judges_the_mode_its_loss_is_measured_in():
    r = overfit_batch(lambda: SmallBNNet(momentum=0.001), _shapes_data())
    assert r.status == "warn" and r.details["accuracy"] == 1.0 and r.details["eval_accuracy"] < 1.0
    assert r.codes == ["eval-mode-differs"]
    r = overfit_batch(lambda: SmallBNNet(momentum=0.5), _shapes_data())  # statistics that keep up
    assert r.status == "pass" and r.codes == []


def test_overfit_batch_on_torchvision_mobilenet_v3_is_no_fail():
    """The issue's input: torchvision's MobileNetV3-Small (BatchNorm momentum 0.01) at 32 px."""
    tv = pytest.importorskip("torchvision")
    r = overfit_batch(lambda: tv.models.mobilenet_v3_small(num_classes=10), _shapes_data())
    assert r.details["accuracy"] == 1.0 and r.status in ("pass", "warn")
    assert (r.status == "warn") == (r.codes == ["eval-mode-differs"])


def test_input_independent_judges_train_mode_and_warns_on_eval_lag():
    data = _shapes_data(2000)
    r = input_independent(lambda: SmallBNNet(momentum=0.001), data)
    assert r.status == "warn" and r.codes == ["eval-mode-differs"]
    assert r.details["real"][0] < r.details["zeroed"][0] and r.details["real_eval"][0] > r.details["zeroed_eval"][0]
    r = input_independent(lambda: SmallBNNet(momentum=0.1), data)
    assert r.status == "pass" and r.codes == []


# Correct, widely used models: diagnose all must raise no FAIL (WARNs are listed in the README).
from reproscope.checks.zoo import CORRECT_MODELS as PANEL  # noqa: E402
from reproscope.checks.zoo import ZOO_RECIPE_OVERRIDES


@pytest.mark.slow  # 30-60 s per model on 2 cores (EfficientNet-B0 ~4 min): the full tier runs timm's ResNet-10t;
# torchvision's MobileNetV3-S (BatchNorm momentum 0.01) through overfit-batch is
# test_overfit_batch_on_torchvision_mobilenet_v3_is_no_fail, and the held-back panel (tests/test_panel.py)
# runs four more families through every model check
@pytest.mark.parametrize("spec", release_except(PANEL, ("timm:resnet10t",)))
def test_no_false_alarm_on_correct_models(spec, capsys):
    pytest.importorskip("timm")
    pytest.importorskip("torchvision")
    from reproscope.config import apply_overrides
    from reproscope.diagnostics.diagnose import run_diagnosis
    from reproscope.recipes import get_recipe
    r = apply_overrides(get_recipe("quickstart"), ZOO_RECIPE_OVERRIDES)
    results = run_diagnosis(r, "all", model_spec=spec)
    fails = [x.summary() + " | " + "; ".join(x.causes) for x in results if x.status == "fail"]
    assert not fails, fails


NET = """
    import torch
    import torch.nn as nn
    BAD = {bad}
    class Net(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
            self.head = nn.Linear(32, num_classes)
            if BAD:
                with torch.no_grad():
                    self.body[2].weight[0, 0, 0, 0] = float("inf")
        def forward(self, x):
            return self.head(self.body(x).mean((2, 3)))
    def make(num_classes):
        return Net(num_classes)
"""
TRAIN = ["--set", "data.train_size=256", "--set", "data.val_size=64", "--set", "data.batch_size=32",
         "--set", "sched.epochs=1", "--set", "run.threads=1", "--no-progress"]


def test_train_your_own_model_from_a_file_and_resume_without_it(tmp_path, capsys):
    src = _file(tmp_path, NET.format(bad=False))
    rd = tmp_path / "run"
    assert main(["train", "--model", f"{src}:make", "--run-dir", str(rd), *TRAIN]) == 0
    assert (rd / "model_src" / "mynet.py").read_text() == src.read_text()
    import hashlib
    import json
    source = json.loads((rd / "model_source.json").read_text())
    assert source["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert '"body.2"' in (rd / "stats.jsonl").read_text()  # the user's module names, probed
    data = json.loads((rd / "data.json").read_text())
    assert data["train"]["images"] == 256 and data["val"]["skipped_unreadable"] == 0
    devs = json.loads((rd / "deviations.json").read_text())["deviations"]
    assert devs[0]["key"] == "model.name" and devs[0]["value"] == f"{src}:make"
    src.unlink()  # the run rebuilds the model from its own copy
    capsys.readouterr()
    assert main(["train", "--resume", str(rd), "--set", "sched.epochs=2", "--no-progress"]) == 0
    assert "rebuilding the run's own model" in capsys.readouterr().out
    # report and compare name the user's model (spec and file hash), not the recipe's model.name
    from reproscope.report.runs import group_runs, load_run
    run = load_run(rd)
    assert run.model == f"{src}:make (sha256 {source['sha256'][:12]})"
    assert group_runs([run])[0].label.startswith(f"{src}:make")
    assert main(["compare", str(rd), str(rd), "--out", str(tmp_path / "cmp")]) == 0
    assert f"(model {src}:make (sha256" in capsys.readouterr().out


def test_nan_in_your_own_model_is_located_and_replayed(tmp_path, capsys):
    src = _file(tmp_path, NET.format(bad=True))
    rd = tmp_path / "run"
    assert main(["train", "--model", f"{src}:make", "--run-dir", str(rd), *TRAIN]) == 3
    rep = next(rd.glob("nonfinite-step*.pt"))
    capsys.readouterr()
    assert main(["diagnose", "replay", str(rep)]) == 1
    out = capsys.readouterr().out
    assert "module 'body.2'" in out and "rebuilding the user's model" in out


def test_loss_at_init_warns_on_a_head_sized_for_other_classes():
    """torchvision's EfficientNet scales its head init by 1/sqrt(K): at K = 10 only the head is large."""
    from reproscope.checks.model import loss_at_init

    def big_head():
        m = SmallBNNet(momentum=0.1)
        with torch.no_grad():
            m.head.weight.mul_(10)  # loss ~1.9 ln K, EfficientNet-B0's is 2.35 ln K at K = 10
        return m
    r = loss_at_init(big_head, _shapes_data(256))
    assert r.status == "warn" and r.codes == ["large-head-init"] and r.details["head_gain"] > 3

    def huge_head():  # a head 100x too large: logits many times too large, a FAIL whatever makes them
        m = SmallBNNet(momentum=0.1)
        with torch.no_grad():
            m.head.weight.mul_(100)
        return m
    r = loss_at_init(huge_head, _shapes_data(256))
    assert r.status == "fail" and "logits-too-large" in r.codes


class ZeroInitResidual(nn.Module):
    """A correct residual net whose branch ends in a BatchNorm with gamma = 0 (Goyal et al. 2017)."""

    def __init__(self, num_classes=10, mute=False):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.branch = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                    nn.Conv2d(16, 16, 3, 1, 1), nn.BatchNorm2d(16))
        nn.init.zeros_(self.branch[4].weight)
        self.head = nn.Linear(16, num_classes)
        self.mute = mute

    def forward(self, x):
        x = self.stem(x)
        b = self.branch(x)
        return self.head((x + (0.0 * b if self.mute else b)).mean((2, 3)))


def test_grad_flow_tells_zero_init_residuals_from_dead_parameters():
    from reproscope.checks.model import grad_flow
    data = _shapes_data(64)
    r = grad_flow(lambda: ZeroInitResidual(), data)
    assert r.status == "pass" and "branch.0.weight" in r.details["zero_at_init_only"]
    r = grad_flow(lambda: ZeroInitResidual(mute=True), data)  # a branch multiplied by 0 never trains
    assert r.status == "fail" and "branch.0.weight" in r.details["dead"]


def _weak_signal(strength: float, n: int = 4000) -> CheckData:
    """Noise images plus ``strength`` x a per-class pattern: a linear model learns them slowly."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n,), generator=g)
    proto = torch.randn(10, 3, 8, 8, generator=g)
    return CheckData(torch.randn(n, 3, 8, 8, generator=g) + strength * proto[y], y, num_classes=10, lr=1e-3)


def test_input_independent_calls_a_slow_learner_a_slow_start_not_a_data_fault():
    def linear():
        return nn.Sequential(nn.Flatten(), nn.Linear(192, 10))
    r = input_independent(linear, _weak_signal(0.05), max_steps=100)
    assert r.status == "warn" and r.codes[0] == "slow-start", (r.measured, r.causes)
    assert r.details["real"][1] > r.details["zeroed"][1]
    # no signal in the images at all: neither the training nor the held-out labels show in the gradient,
    # so a slow learner cannot be told from a data fault: not measured, never a PASS
    r = input_independent(linear, _weak_signal(0.0), max_steps=100)
    assert r.status == "skip" and r.codes == ["not-learned"] and "slow-start" not in r.codes
    assert r.details["steps"] == 100  # and no second look: real inputs do not lower the held-out loss
    assert r.details["z_scores"][0] < 2  # accuracy against chance, not against the blank inputs' one class


def test_plan_and_profile_take_your_model(tmp_path, capsys):
    src = _file(tmp_path, NET.format(bad=False))
    small = ["--set", "data.train_size=256", "--set", "data.batch_size=16", "--set", "run.threads=1"]
    assert main(["plan", "--model", f"{src}:make", "--hours", "1", "--steps", "1", *small]) == 0
    assert f"{src}:make at 32 px" in capsys.readouterr().out
    rd = tmp_path / "prof"
    assert main(["profile", "--model", f"{src}:make", "--steps", "1", "--run-dir", str(rd), *small]) == 0
    assert "aten::" in capsys.readouterr().out and (rd / "profile").is_dir()


BLOCKNET = """
    import torch.nn as nn
    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, 1, 1)
            self.norm = nn.BatchNorm2d(c)
        def forward(self, x):
            return x + self.norm(self.conv(x)).relu()
    class Net(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 4, 4)
            self.blocks = nn.Sequential(*[Block(16) for _ in range(3)])
            self.head = nn.Linear(16, num_classes)
        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean((2, 3)))
    def make(num_classes):
        return Net(num_classes)
"""


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_zoo_plants_the_bugs_in_your_model(tmp_path, capsys):
    """zoo --model: a baseline row for the unplanted model, the bugs planted in it, the ViT-only ones named."""
    from reproscope.cli import main
    spec = f"{_file(tmp_path, BLOCKNET)}:make"
    rc = main(["zoo", "--model", spec, "--bug", "frozen-block", "--bug", "zero-grad-forgotten",
               "--bug", "residual-dropped", "--set", "run.threads=1"])
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[1:-1]]
            for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")}
    assert rows[f"none (your model `{spec}`)"][4] == "-"  # a correct model: nothing fails unplanted
    assert rows["`frozen-block`"][3] == "yes" and "`frozen-params`" in rows["`frozen-block`"][5]
    assert rows["`zero-grad-forgotten`"][3] == "yes" and "`grad-leak`" in rows["`zero-grad-forgotten`"][5]
    assert rows["`residual-dropped`"][3] == "not plantable in your model"
    assert rc == 0  # every bug that could be planted was caught (not plantable is no failure)


class _ResBlock(nn.Module):
    def __init__(self, c: int, skip: bool = True):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.skip = skip

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(x + y if self.skip else y)


class _UnnamedBlocksNet(nn.Module):
    """A student's CNN whose blocks sit in ``self.body``: no 'blocks.N' or 'stages.N' names."""

    def __init__(self, skip: bool = True, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(*[_ResBlock(16, skip) for _ in range(4)])
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))


def test_blocks_are_found_by_structure_whatever_their_names():
    """Issue 16 item 15: torchvision's ``layer1.0`` / ``features.N`` and a student's ``body.N``."""
    tv = pytest.importorskip("torchvision.models")
    from reproscope.checks.core import block_modules
    names = [n for n, _ in block_modules(tv.resnet18())]
    assert names == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert [n for n, _ in block_modules(tv.mobilenet_v3_small())] == [f"features.{i}" for i in range(1, 12)]
    eff = [n for n, _ in block_modules(tv.efficientnet_b0())]
    assert len(eff) == 16 and eff[0] == "features.1.0" and eff[-1] == "features.7.0"
    swin = [n for n, _ in block_modules(tv.swin_t())]  # its PatchMerging layers between stages are not blocks
    assert len(swin) == 12 and "features.2" not in swin
    assert [n for n, _ in block_modules(_UnnamedBlocksNet())] == [f"body.{i}" for i in range(4)]
    assert block_modules(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))) == []


def test_init_scale_measures_structurally_found_blocks():
    from reproscope.checks.model import init_scale
    data = CheckData(torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,)), num_classes=10)
    ok = init_scale(lambda: _UnnamedBlocksNet(), data)
    assert ok.status == "pass" and set(ok.details["skip_corr"]) == {f"body.{i}" for i in range(4)}
    # a post-norm conv block without its skip computes what a plain (VGG-style) block does: no identity
    # path to measure, said as such; a pre-norm block without one is caught (test_checks_robust.py)
    bad = init_scale(lambda: _UnnamedBlocksNet(skip=False), data)
    assert bad.status == "pass" and sorted(bad.details["no_skip_path"]) == [f"body.{i}" for i in range(4)]
    assert "no skip path: not measured" in bad.measured and not bad.details["skip_corr"]

    def big():
        m = _UnnamedBlocksNet()
        with torch.no_grad():
            for p in m.body.parameters():
                if p.ndim == 4:
                    p.mul_(10)
        return m
    assert "init-std-too-large" in init_scale(big, data).codes
    flat = init_scale(lambda: nn.Sequential(nn.Flatten(), nn.Linear(768, 10)), data)
    assert flat.status == "warn" and flat.codes == ["no-blocks"]


def test_he_fan_out_init_of_a_bottleneck_is_not_too_large():
    """torchvision inits convs with He in fan_out mode: a squeeze layer (fan_in 96 -> 4 outputs) then has a
    fan_in gain of sqrt(2 * 96 / 4) ~ 6.9 and a fan_out gain of sqrt(2): correct, by He et al. Sec. 2.2."""
    from reproscope.checks.model import weight_gains
    squeeze = nn.Conv2d(96, 4, 1)
    nn.init.kaiming_normal_(squeeze.weight, mode="fan_out", nonlinearity="relu")
    g_in, g_out = weight_gains(squeeze)[".weight"], weight_gains(squeeze, "out")[".weight"]
    assert g_in > 5 and abs(g_out - 2 ** 0.5) < 0.3


def test_diagnose_names_a_figures_folder_only_when_it_wrote_one(tmp_path, capsys):
    rc = main(["diagnose", "loss-at-init", "--set", "data.train_size=256", "--set", "data.batch_size=32",
               "--out", str(tmp_path / "d")])
    assert rc in (0, 1) and "figures in" not in capsys.readouterr().out


DP_NET = """
    import torch
    import torch.nn as nn
    from torchvision.ops import StochasticDepth
    class Net(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 4, 4)
            self.convs = nn.ModuleList(nn.Conv2d(16, 16, 3, 1, 1) for _ in range(3))
            self.drops = nn.ModuleList(StochasticDepth(p, "row") for p in (0.0, 0.05, 0.1))
            self.head = nn.Linear(16, num_classes)
        def forward(self, x):
            x = self.stem(x)
            for conv, drop in zip(self.convs, self.drops):
                x = x + drop(conv(x))
            return self.head(x.mean((2, 3)))
    def make(num_classes):
        return Net(num_classes)
"""


def test_a_user_models_deviation_rows_say_what_the_model_is(tmp_path):
    """A --model run on a recipe whose model.* rows describe another model (patch size, drop path 0.0,
    'stochastic depth would only slow it'): those rows go; the model's own drop path (0.1, linear) is
    read from its modules; a --set sched.epochs row does not carry the recipe's reason for 15 epochs."""
    import json
    src = _file(tmp_path, DP_NET)
    rd = tmp_path / "run"
    args = ["train", "--recipe", "dyt-vit_quick-imagenette-cpu", "--model", f"{src}:make", "--run-dir", str(rd),
            "--set", "data.dataset=shapes10", "--set", "data.root=", *TRAIN]
    assert main(args) == 0
    devs = {d["key"]: d for d in json.loads((rd / "deviations.json").read_text())["deviations"]}
    assert devs["model.name"]["value"] == f"{src}:make" and "parameters" in devs["model.name"]["reason"]
    assert "model.patch_size" not in devs and "model.drop_path" not in devs  # 0.1, linear: the paper's own
    assert devs["sched.epochs"]["value"] == 1 and devs["sched.epochs"]["reason"] == "command-line override (recipe had 15)"


# A ViT-like model whose sin-cos position embedding is built with numpy: torch.from_numpy keeps float64
VIT64 = """
    import numpy as np
    import torch
    import torch.nn as nn
    CAST = {cast}

    def sincos(dim, grid):
        g = np.arange(grid, dtype=np.float64)
        gh, gw = np.meshgrid(g, g, indexing="ij")
        omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim // 4))
        parts = []
        for a in (gh, gw):
            o = np.outer(a.reshape(-1), omega)
            parts += [np.sin(o), np.cos(o)]
        return np.concatenate(parts, axis=1)[None]  # [1, N, dim], float64

    class ViT(nn.Module):
        def __init__(self, num_classes=10, img_size=32, patch=8, dim=32):
            super().__init__()
            self.patch_embed = nn.Conv2d(3, dim, patch, patch)
            self.register_buffer("pos_embed", torch.from_numpy(sincos(dim, img_size // patch)))
            self.norm = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            self.head = nn.Linear(dim, num_classes)

        def forward(self, x):
            x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, N, C]
            pos = self.pos_embed
            if CAST is True or (CAST == "autocast" and torch.is_autocast_enabled("cpu")):  # as CUDA autocast would
                pos = pos.to(x.dtype)
            x = x + pos
            x = x + self.mlp(self.norm(x))
            return self.head(x.mean(1))

    def build(num_classes=10, img_size=32):
        return ViT(num_classes, img_size)
"""


def test_a_float64_buffer_is_named_with_its_fix(tmp_path):
    from reproscope.model.dtypes import MIXED_DTYPE, dtype_message, dtype_outliers
    m = user_model(f"{_file(tmp_path, VIT64.format(cast=False))}:build", 10, img_size=32)()
    assert dtype_outliers(m) == [("pos_embed", "buffer", torch.float64)]
    msg = dtype_message(m)
    assert "pos_embed" in msg and ".float()" in msg and "dtype=torch.float32" in msg and "\n" not in msg
    assert dtype_outliers(m.float()) == [] and dtype_message(m) is None and MIXED_DTYPE == "mixed-dtype"


def test_train_refuses_a_float64_buffer_before_writing_the_run(tmp_path, capsys):
    """The issue's case: the paper-figure probe at train start crashed with `mixed dtype (CPU)` and left a
    half-made run folder. Now the start is refused, naming the buffer, and the run folder is not made."""
    from reproscope.config import apply_overrides
    from reproscope.launch import train
    from reproscope.model.dtypes import MixedDtypeError
    from reproscope.recipes import get_recipe
    src = _file(tmp_path, VIT64.format(cast=False))
    r = apply_overrides(get_recipe("quickstart"), {"data.train_size": 256, "data.val_size": 64, "sched.max_steps": 2,
                                                   "run.progress": False, "instrument.probes": True})
    with pytest.raises(MixedDtypeError) as e:
        train(r, run_dir=tmp_path / "run", model_spec=f"{src}:build")
    assert e.value.code == "mixed-dtype" and [n for n, _, _ in e.value.outliers] == ["pos_embed"]
    assert not (tmp_path / "run").exists()  # no half-made run folder (model_src/ included)
    rc = main(["train", "--model", f"{src}:build", "--run-dir", str(tmp_path / "run"), *TRAIN])
    err = capsys.readouterr().err
    assert rc == 2 and "pos_embed" in err and "[mixed-dtype" in err and "Traceback" not in err


def test_train_warns_about_a_float64_buffer_that_its_model_casts(tmp_path, capsys):
    src = _file(tmp_path, VIT64.format(cast=True))
    rd = tmp_path / "run"
    assert main(["train", "--model", f"{src}:build", "--run-dir", str(rd), *TRAIN]) == 0
    out = capsys.readouterr().out
    assert sum("pos_embed" in ln and "[mixed-dtype]" in ln for ln in out.splitlines()) == 1
    assert (rd / "summary.json").is_file()


def test_a_model_that_runs_only_under_autocast_trains_and_its_probes_say_not_measured(tmp_path, capsys):
    """The issue's model on CUDA with bf16 autocast (LayerNorm then runs in float32) trains, but the
    paper-figure probes, which run outside autocast, crashed at train start: now they record it."""
    import json
    src = _file(tmp_path, VIT64.format(cast='"autocast"'))
    rd = tmp_path / "run"
    assert main(["train", "--model", f"{src}:build", "--run-dir", str(rd), "--set", "precision.amp=bf16",
                 "--set", "instrument.probes=true", *TRAIN]) == 0
    rows = [json.loads(ln) for ln in (rd / "paper_probes.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [-1, 0] and all(r["not_measured"].startswith("mixed-dtype") for r in rows)
    assert json.loads((rd / "summary.json").read_text())["steps"] == 8
    assert capsys.readouterr().out.count("paper-figure probes not measured") == 1


def test_the_paper_probes_do_not_raise_on_mixed_dtypes(tmp_path):
    """A model whose forward raises for mixed dtypes: the probes say 'not measured' instead of raising."""
    from reproscope.instrument.paper_probes import collect, probe_findings, summary
    m = user_model(f"{_file(tmp_path, VIT64.format(cast=False))}:build", 10, img_size=32)()
    data = collect(m, torch.randn(4, 3, 32, 32))
    assert data["norm_curves"] == {} and data["not_measured"].startswith("mixed-dtype")
    assert summary(data) == {"not_measured": data["not_measured"]} and probe_findings(data) == {}


def test_diagnose_names_a_float64_buffer_not_the_image_size(tmp_path, capsys):
    import json
    src = _file(tmp_path, VIT64.format(cast=False))
    rc = main(["diagnose", "all", "--model", f"{src}:build", *SMALL, "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 1 and [(r["name"], r["status"], r["codes"]) for r in res] == [("model-dtypes", "fail", ["mixed-dtype"])]
    assert res[0]["details"]["outliers"] == [{"name": "pos_embed", "kind": "buffer", "dtype": "float64"}]
    from reproscope.config import apply_overrides
    from reproscope.diagnostics.diagnose import run_diagnosis
    from reproscope.recipes import get_recipe
    src = _file(tmp_path, VIT64.format(cast=True), name="casts.py")  # it runs: a WARN, then the checks
    r = apply_overrides(get_recipe("quickstart"), {"data.train_size": 512, "data.val_size": 128})
    res = run_diagnosis(r, "recipe-audit", model_spec=f"{src}:build")
    assert [(x.name, x.status, x.codes) for x in res] == [("model-dtypes", "warn", ["mixed-dtype"]),
                                                          ("recipe-audit", res[1].status, res[1].codes)]
