"""The checks on the papers' layers (checks/layers.py): plain tensor attributes, rational poles, paper init.

Each check passes a faithful model and fails (or warns on) a planted bug with its code; the codes are
matched, never the wording (except that a sentence names the tensor)."""

import textwrap

import pytest
import torch
import torch.nn as nn

from reproscope.checks import CHECKS, CheckData, run_checks
from reproscope.cli import main
from reproscope.model import create_model
from reproscope.model.kat import GroupRational

LAYER_CHECKS = ["tensor-attributes", "rational-denominator", "paper-init"]


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return CheckData(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g), 10)


def one(make_model, data, name):
    return run_checks(make_model, data, [name])[0]


# ----------------------------------------------------------------------------- a student's DyT ViT


class StudentDyT(nn.Module):
    """DyT written from the paper, with the names the other way round: ``beta`` scales, ``gamma`` shifts."""

    def __init__(self, dim, alpha0=0.5, scale0=1.0, shift0=0.0, declare=False):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), alpha0))
        self.beta = nn.Parameter(torch.full((dim,), scale0))  # multiplies tanh
        self.gamma = nn.Parameter(torch.full((dim,), shift0))  # added
        if declare:
            self.alpha0 = alpha0

    def forward(self, x):
        return self.beta * torch.tanh(self.alpha * x) + self.gamma


class Tiny(nn.Module):
    """patchify -> (norm, linear) x 2 -> norm -> mean -> head, with ``norm`` and extras pluggable."""

    def __init__(self, norm=lambda d: nn.LayerNorm(d), num_classes=10, d=32, plain_tensor=False, unused_tensor=False):
        super().__init__()
        self.embed = nn.Conv2d(3, d, 8, 8)
        self.blocks = nn.ModuleList([nn.Sequential(norm(d), nn.Linear(d, d)) for _ in range(2)])
        self.norm = norm(d)
        self.head = nn.Linear(d, num_classes)
        if plain_tensor:
            self.blocks[1][1].scale = torch.ones(d)  # bug: a plain tensor, read in forward
            self.blocks[1][1].register_forward_hook(lambda m, i, o: o * m.scale)
        if unused_tensor:
            self.cache = torch.zeros(3)  # never read in forward: not flagged

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, N, C]
        for b in self.blocks:
            x = x + b(x)
        return self.head(self.norm(x).mean(1))


def test_the_checks_are_registered_for_diagnose_all():
    assert set(LAYER_CHECKS) <= set(CHECKS)
    from reproscope.diagnostics.diagnose import CHECK_NAMES
    assert set(LAYER_CHECKS) <= set(CHECK_NAMES)


@pytest.mark.parametrize("name, kw", [("vit_tiny_dyt", {"patch_size": 8}), ("kat_quick", {}), ("mambaout_quick", {}),
                                      ("vit_quick", {})])
def test_our_faithful_models_pass_every_layer_check(data, name, kw):
    results = run_checks(lambda: create_model(name, num_classes=10, img_size=32, **kw), data, LAYER_CHECKS)
    assert all(r.status == "pass" and not r.codes for r in results), [(r.summary(), r.causes) for r in results]
    checked = [not r.measured.endswith("nothing to check") for r in results]  # no rationals: no denominator
    assert checked == [True, name == "kat_quick", name != "vit_quick"], [r.summary() for r in results]


# ----------------------------------------------------------------------------- item 2: plain tensors


def test_a_plain_tensor_attribute_used_in_forward_fails_with_its_name(data):
    r = one(lambda: Tiny(plain_tensor=True), data, "tensor-attributes")
    assert r.status == "fail" and r.codes == ["plain-tensor-attribute"]
    assert "blocks.1.1.scale" in r.causes[0]
    ok = one(lambda: Tiny(unused_tensor=True), data, "tensor-attributes")
    assert ok.status == "pass" and not ok.codes, ok.causes


def test_a_learnable_tensor_kept_as_a_plain_attribute_is_named_as_never_trained(data):
    class Scaled(Tiny):
        def __init__(self):
            super().__init__()
            self.gain = torch.ones(10, requires_grad=True)  # meant to learn; the optimizer never sees it

        def forward(self, x):
            return super().forward(x) * self.gain
    r = one(Scaled, data, "tensor-attributes")
    assert r.status == "fail" and r.codes == ["plain-tensor-attribute"]
    assert "gain" in r.causes[0] and "never sees it" in r.causes[0]


# ----------------------------------------------------------------------------- item 6: rational poles


class PlainRational(nn.Module):
    """A student's rational P(x) / (1 + sum b_i x^i): no absolute value anywhere."""

    def __init__(self, b1=0.0):
        super().__init__()
        self.numerator = nn.Parameter(torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0]))
        self.denominator = nn.Parameter(torch.tensor([b1, 0.0, 0.0, 0.0]))

    def forward(self, x):
        p = sum(c * x ** k for k, c in enumerate(self.numerator))
        q = 1 + sum(c * x ** (k + 1) for k, c in enumerate(self.denominator))
        return p / q


def _with_rationals(make_rational):
    def make():
        m = Tiny()
        for b in m.blocks:
            b.insert(1, make_rational())  # norm -> rational -> linear
        return m
    return make


def test_a_denominator_that_reaches_zero_fails_with_where(data):
    r = one(_with_rationals(lambda: PlainRational(b1=-0.5)), data, "rational-denominator")  # Q = 1 - x/2: 0 at x = 2
    assert r.status == "fail" and "rational-pole" in r.codes, (r.summary(), r.causes)
    row = r.details["rationals"]["blocks.0.1"]
    assert row["form"] == "plain" and row["min_abs_q"] < 1e-3 and row["sign_change"]
    assert "blocks.0.1" in r.causes[0]


def test_our_rational_with_a_signed_denominator_planted_pole_fails():
    def make():
        m = GroupRational(16, groups=2, init="swish", denominator="signed_terms")
        with torch.no_grad():
            m.b.copy_(torch.tensor([[0.0, 0.0, 1.0, 0.0]] * 2))  # Q = 1 + |b3| x^3: 0 at x = -1
        return nn.Sequential(m, nn.Linear(16, 10))
    x = torch.randn(4, 16)
    r = one(make, CheckData(x, torch.zeros(4, dtype=torch.long), 10), "rational-denominator")
    assert r.status == "fail" and "rational-pole" in r.codes
    row = r.details["rationals"]["0"]
    assert row["form"] == "signed_terms" and row["found"] == "declared" and abs(row["x"] + 1) < 1e-2


@pytest.mark.parametrize("denominator, status, codes", [("paper", "pass", []), ("abs_terms", "pass", []),
                                                        ("signed_terms", "warn", ["rational-pole-possible"])])
def test_kat_denominator_forms_at_init(data, denominator, status, codes):
    r = one(lambda: create_model("kat_quick", num_classes=10, denominator=denominator), data, "rational-denominator")
    assert (r.status, r.codes) == (status, codes), (r.summary(), r.causes)


def test_a_students_paper_form_is_found_from_its_outputs_and_passes(data):
    class PaperRational(PlainRational):
        def forward(self, x):
            p = sum(c * x ** k for k, c in enumerate(self.numerator))
            return p / (1 + sum(c * x ** (k + 1) for k, c in enumerate(self.denominator)).abs())
    r = one(_with_rationals(lambda: PaperRational(b1=-0.5)), data, "rational-denominator")
    assert r.status == "pass" and r.details["rationals"]["blocks.0.1"]["form"] == "paper", (r.summary(), r.causes)


def test_a_rational_of_unknown_form_is_not_measured(data):
    class OddRational(PlainRational):
        def forward(self, x):
            p = sum(c * x ** k for k, c in enumerate(self.numerator))
            return p / (2 + self.denominator[0] * x * x)
    r = one(_with_rationals(lambda: OddRational(b1=0.3)), data, "rational-denominator")
    assert r.status in ("pass", "skip") and r.measured.startswith("not measured") and "blocks.0.1" in r.measured


# ----------------------------------------------------------------------------- item 9: paper init values


def test_dyt_beta_initialised_to_ones_fails_naming_the_shift_whatever_its_name(data):
    """The third-party reproduction that initialised beta to ones: the student calls the shift 'gamma'."""
    good = one(lambda: Tiny(norm=lambda d: StudentDyT(d)), data, "paper-init")
    assert good.status == "pass", (good.summary(), good.causes)
    assert good.details["layers"]["norm"]["roles"] == {"beta": "scale", "gamma": "shift"}
    bad = one(lambda: Tiny(norm=lambda d: StudentDyT(d, shift0=1.0)), data, "paper-init")
    assert bad.status == "fail" and set(bad.codes) == {"paper-init"}
    assert "blocks.0.0.gamma (the shift) starts at 1; the paper's beta starts at 0" in bad.causes[0]
    scale = one(lambda: Tiny(norm=lambda d: StudentDyT(d, scale0=0.0)), data, "paper-init")
    assert scale.status == "fail" and "(the scale) starts at 0; the paper's gamma starts at 1" in scale.causes[0]


def test_ours_with_beta_ones_fails_and_the_causes_are_capped(data):
    def make():
        m = create_model("vit_quick", num_classes=10, norm="dyt")
        for mod in m.modules():
            if hasattr(mod, "alpha"):
                nn.init.ones_(mod.bias)
        return m
    r = one(make, data, "paper-init")
    assert r.status == "fail" and set(r.codes) == {"paper-init"} and len(r.codes) == 4
    assert "blocks.0.norm1.bias (the shift) starts at 1" in r.causes[0] and "more" in r.causes[-1]


def test_dyt_alpha0_other_than_the_papers_warns_unless_declared(data):
    r = one(lambda: Tiny(norm=lambda d: StudentDyT(d, alpha0=1.0)), data, "paper-init")
    assert r.status == "warn" and r.codes and set(r.codes) == {"paper-init"}
    assert "alpha starts at 1; the paper's alpha0 is 0.5" in r.causes[0]
    assert one(lambda: Tiny(norm=lambda d: StudentDyT(d, alpha0=1.0, declare=True)), data, "paper-init").status == "pass"
    ours = one(lambda: create_model("vit_quick", num_classes=10, norm="dyt", dyt_alpha0=1.0), data, "paper-init")
    assert ours.status == "pass", ours.causes  # the model's cfg declares it (a recipe's model.dyt_alpha0)


def test_kat_rationals_started_off_the_papers_fit_warn(data):
    def make():
        m = create_model("kat_quick", num_classes=10)
        swish = GroupRational(96, init="swish")
        for blk in m.blocks:
            blk.mlp.layer1.rational.a.data.copy_(swish.a.data)  # F1 = Swish instead of the identity
            blk.mlp.layer1.rational.b.data.copy_(swish.b.data)
        return m
    r = one(make, data, "paper-init")
    assert r.status == "warn" and r.codes == ["paper-init"]
    assert "blocks.0.mlp.layer1.rational (F1) starts as Swish" in r.causes[0]


def test_gated_cnn_weights_off_trunc_normal_002_warn(data):
    def make():
        m = create_model("mambaout_quick", num_classes=10)
        from reproscope.model.mambaout import GatedCNNBlock
        for blk in m.modules():
            if isinstance(blk, GatedCNNBlock):
                blk.fc1.reset_parameters()  # PyTorch's default init, not the paper's trunc_normal(0.02)
        return m
    r = one(make, data, "paper-init")
    assert r.status == "warn" and r.codes == ["paper-init"] and "fc1.weight" in r.causes[0]


def test_a_model_without_the_papers_layers_has_nothing_to_check(data):
    r = one(Tiny, data, "paper-init")
    assert r.status == "pass" and r.measured.endswith("nothing to check")


# ----------------------------------------------------------------------------- from the command line


def test_diagnose_with_a_spec_argument_tells_the_planted_beta_from_the_fix(tmp_path, capsys):
    """Before these checks, diagnose gave the same verdicts with beta = 1 and beta = 0."""
    (tmp_path / "student.py").write_text(textwrap.dedent('''
        import torch, torch.nn as nn

        class DyT(nn.Module):
            def __init__(self, d, beta0):
                super().__init__()
                self.alpha = nn.Parameter(torch.full((1,), 0.5))
                self.gamma = nn.Parameter(torch.ones(d))
                self.beta = nn.Parameter(torch.full((d,), float(beta0)))

            def forward(self, x):
                return self.gamma * torch.tanh(self.alpha * x) + self.beta

        class Net(nn.Module):
            def __init__(self, num_classes, beta0):
                super().__init__()
                self.embed = nn.Conv2d(3, 16, 8, 8)
                self.norm = DyT(16, beta0)
                self.head = nn.Linear(16, num_classes)

            def forward(self, x):
                return self.head(self.norm(self.embed(x).flatten(2).transpose(1, 2)).mean(1))

        def make(num_classes=10, beta0=0.0):
            return Net(num_classes, beta0)
    '''))
    sets = ["--set", "data.train_size=200", "--set", "data.val_size=64", "--set", "data.batch_size=32"]
    spec = f"{tmp_path / 'student.py'}:make"
    assert main(["diagnose", "paper-init", *sets, "--model", f"{spec}:beta0=1.0"]) == 1
    out = capsys.readouterr().out
    assert "[paper-init] norm.beta (the shift) starts at 1; the paper's beta starts at 0" in out
    assert main(["diagnose", "paper-init", *sets, "--model", f"{spec}:beta0=0"]) == 0, capsys.readouterr().out
