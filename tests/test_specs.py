"""Model specs with constructor arguments (model/spec.py): one syntax wherever a spec is taken.

``timm:vit_tiny_patch16_224:global_pool=avg,class_token=False``, ``file.py:make:depth=4,dyt=true``,
``vit_tiny_dyt:global_pool=avg``; values are Python literals, true/false/none, or text."""

import json
import textwrap

import pytest
import torch
import torch.nn as nn

from reproscope.cli import main
from reproscope.config import ConfigError
from reproscope.model import create_model, list_models
from reproscope.model.spec import (
    load_factory,
    model_source,
    parse_args,
    parse_spec,
    respec,
    spec_file,
    spec_in_run,
    user_model,
    with_args,
)


@pytest.fixture
def student(tmp_path):
    p = tmp_path / "student.py"
    p.write_text(textwrap.dedent("""
        import torch.nn as nn
        SEEN = {}

        def make(num_classes=10, img_size=32, depth=2, dyt=False, name="net", widths=(8, 8)):
            SEEN.update(num_classes=num_classes, img_size=img_size, depth=depth, dyt=dyt, name=name, widths=widths)
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * img_size * img_size, num_classes))

        def loose(num_classes=10, **kw):
            return make(num_classes=num_classes, **kw)
    """))
    return p


def _seen(p):
    import sys
    return next(m.SEEN for n, m in sys.modules.items() if n.startswith("reproscope_user_") and m.__file__ == str(p))


@pytest.mark.parametrize("text, expected", [
    ("depth=4,dyt=true", {"depth": 4, "dyt": True}),
    ("global_pool=avg,class_token=False", {"global_pool": "avg", "class_token": False}),
    ("x=None,y=NONE,z=TRUE,w=false", {"x": None, "y": None, "z": True, "w": False}),
    ("lr=1e-3, eps = 1e-6", {"lr": 1e-3, "eps": 1e-6}),
    ("size=(32, 32),name='a,b',tags=[1, 2],d={'k': 1}", {"size": (32, 32), "name": "a,b", "tags": [1, 2], "d": {"k": 1}}),
    ("norm=dyt,norm=ln", {"norm": "ln"}),  # the last wins
    ("path=runs/a.pt,", {"path": "runs/a.pt"}),
])
def test_values_are_python_literals_words_or_text(text, expected):
    assert parse_args(text) == expected


@pytest.mark.parametrize("spec, target, kwargs", [
    ("timm:vit_tiny_patch16_224:global_pool=avg,class_token=False", "timm:vit_tiny_patch16_224",
     {"global_pool": "avg", "class_token": False}),
    ("path/to/file.py:factory:depth=4,dyt=true", "path/to/file.py:factory", {"depth": 4, "dyt": True}),
    ("pkg.mod:make:depth=4", "pkg.mod:make", {"depth": 4}),
    ("vit_tiny_dyt:global_pool=avg", "vit_tiny_dyt", {"global_pool": "avg"}),
    ("vit_tiny", "vit_tiny", {}),
    ("timm:resnet18", "timm:resnet18", {}),
])
def test_specs_split_into_target_and_arguments(spec, target, kwargs):
    s = parse_spec(spec)
    assert (s.target, s.kwargs) == (target, kwargs)


def test_arguments_reach_the_factory_and_win_over_the_commands_own(student):
    m = user_model(f"{student}:make:depth=4,dyt=true,name=resnet,widths=(16, 32),img_size=8", num_classes=7,
                   img_size=32)()
    assert _seen(student) == {"num_classes": 7, "img_size": 8, "depth": 4, "dyt": True, "name": "resnet",
                              "widths": (16, 32)}
    assert m[1].in_features == 3 * 8 * 8
    user_model(f"{student}:loose:depth=3", num_classes=5, img_size=16)()  # through **kwargs
    assert _seen(student)["depth"] == 3 and _seen(student)["num_classes"] == 5


def test_a_bad_argument_is_one_line_naming_the_spec_and_the_closest_name(student):
    spec = f"{student}:make:depht=4"
    with pytest.raises(ConfigError) as e:
        load_factory(spec)  # before any model is built: the signature says so
    assert str(e.value) == f"--model {spec!r}: make() takes no argument 'depht' (did you mean 'depth'?)"
    with pytest.raises(ConfigError) as e:  # through **kwargs: the call refuses it, named the same way
        user_model(f"{student}:loose:depht=4", num_classes=10, img_size=32)()
    assert "loose() takes no argument 'depht' (did you mean 'depth'?)" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        user_model("vit_tiny:depht=4", num_classes=10, img_size=32)()
    assert str(e.value) == "--model 'vit_tiny:depht=4': vit_tiny() takes no argument 'depht' (did you mean 'depth'?)"
    for bad, part in ((f"{student}:make:depth", "depth"), ("vit_tiny:avg", "avg"),
                      ("timm:vit_tiny_patch16_224:avg", "avg"), (f"{student}:make:depth=2,dyt", "dyt")):
        with pytest.raises(ConfigError) as e:
            user_model(bad, num_classes=10)()
        assert str(e.value).startswith(f"--model {bad!r}: argument {part!r} is not KEY=VALUE"), str(e.value)
        assert "\n" not in str(e.value)


def test_a_bad_timm_argument_suggests_the_timm_models_own_keyword():
    pytest.importorskip("timm")
    with pytest.raises(ConfigError) as e:
        user_model("timm:vit_tiny_patch16_224:globl_pool=avg", num_classes=10, img_size=32)()
    assert str(e.value) == ("--model 'timm:vit_tiny_patch16_224:globl_pool=avg': vit_tiny_patch16_224() takes no "
                            "argument 'globl_pool' (did you mean 'global_pool'?)")


def test_run_records_keep_the_arguments(student, tmp_path):
    spec = f"{student}:make:depth=4,dyt=true"
    assert spec_file(spec) == student
    assert model_source(spec)["spec"] == spec and "sha256" in model_source(spec)
    copy = respec(spec, "model_src/student.py")
    assert copy == "model_src/student.py:make:depth=4,dyt=true"
    run = tmp_path / "run"
    (run / "model_src").mkdir(parents=True)
    (run / "model_src" / "student.py").write_text(student.read_text())
    again = spec_in_run({"spec": spec, "copy": copy}, run)
    assert again == f"{run / 'model_src' / 'student.py'}:make:depth=4,dyt=true"
    user_model(again, num_classes=3, img_size=8)()
    assert _seen(run / "model_src" / "student.py")["depth"] == 4


def test_with_args_appends_and_later_keys_win():
    assert with_args("vit_tiny", ["global_pool=avg", "class_token=False"]) == "vit_tiny:global_pool=avg,class_token=False"
    s = with_args("timm:vit_tiny_patch16_224:global_pool=token", ["global_pool=avg"])
    assert parse_spec(s).kwargs == {"global_pool": "avg"}
    with pytest.raises(ConfigError, match="--ref-arg 'avg': argument 'avg' is not KEY=VALUE"):
        with_args("vit_tiny", ["avg"], "--ref-arg")


# ----------------------------------------------------------------------------- the DyT ViT family


@pytest.mark.parametrize("name, width", [("vit_tiny_dyt", 192), ("vit_small_dyt", 384), ("vit_base_dyt", 768)])
def test_dyt_vits_at_every_planner_size_with_the_references_pooling(name, width):
    from reproscope.model.layers import DyT
    assert name in list_models()
    with torch.device("meta"):
        m = create_model(name, global_pool="avg", class_token=False)
    norms = [x for x in m.modules() if isinstance(x, (nn.LayerNorm, DyT))]
    assert norms and all(isinstance(x, DyT) for x in norms) and len(norms) == 2 * 12 + 1  # every block's two + fc_norm
    assert all(x.alpha.shape == (1,) for x in norms) and m.pos_embed.shape == (1, 196, width) and m.cls_token is None


def test_no_class_token_gives_n_tokens_and_needs_average_pooling():
    m = create_model("vit_tiny_dyt", num_classes=5, img_size=32, patch_size=8, global_pool="avg", class_token=False)
    assert m.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 16, 192)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 5) and "cls_token" not in m.state_dict()
    with pytest.raises(ConfigError, match="class_token=False needs global_pool='avg'"):
        user_model("vit_tiny_dyt:class_token=False", num_classes=5, img_size=32)()


# ----------------------------------------------------------------------------- align with arguments

REF = "timm:vit_tiny_patch16_224:global_pool=avg,class_token=False,patch_size=8"


def test_align_a_dyt_student_without_class_token_against_timm_gets_past_the_shapes():
    """The issue: 'outputs (2, 196, 768) but REF's (2, 197, 768)'; with arguments on both sides the token
    counts agree and align gets to the layers (DyT vs LN differ at the norms, as they should)."""
    pytest.importorskip("timm")
    from reproscope.diagnostics.align import align
    r = align("vit_tiny_dyt:global_pool=avg,class_token=False,patch_size=8", REF, img_size=32, num_classes=10)
    assert r.forward is not None and r.forward.kind != "shape", r.forward.sentence()
    assert not any("pos_embed" in n for n in r.unmatched_mine + r.unmatched_ref)
    assert r.unmatched_mine and all(n.endswith(".alpha") for n in r.unmatched_mine)  # DyT's only new tensors


def test_align_cli_ref_arg_and_mine_arg(capsys, tmp_path):
    pytest.importorskip("timm")
    rc = main(["align", "vit_tiny", "timm:vit_tiny_patch16_224", "--img-size", "32", "--num-classes", "10",
               "--mine-arg", "global_pool=avg", "--mine-arg", "class_token=False", "--mine-arg", "patch_size=8",
               "--ref-arg", "global_pool=avg", "--ref-arg", "class_token=False", "--ref-arg", "patch_size=8", "--json",
               "--out", str(tmp_path / "align")])  # map.json in the test's folder, not the repository
    out = capsys.readouterr().out
    assert rc == 0 and json.loads(out)["agree"], out
    rc = main(["align", "vit_tiny:patch_size=8", REF, "--img-size", "32", "--num-classes", "10", "--ref-arg",
               "globl_pool=avg"])
    err = capsys.readouterr().err
    assert rc == 2 and "REF " in err and "takes no argument 'globl_pool' (did you mean 'global_pool'?)" in err


def test_a_runs_copy_of_the_model_file_keeps_the_arguments(student, tmp_path):
    from reproscope.recipes import get_recipe
    from reproscope.train.run import _user_factory
    factory, source = _user_factory(f"{student}:make:depth=4", get_recipe("quickstart"), tmp_path / "run", True)
    assert source["copy"] == "model_src/student.py:make:depth=4" and (tmp_path / "run/model_src/student.py").is_file()
    factory(3)
    assert _seen(student)["depth"] == 4
