import dataclasses
import json

import pytest

from reproscope.cli import main
from reproscope.config import ConfigError, Recipe, apply_overrides, recipe_from_dict
from reproscope.recipes import get_recipe, list_recipes


def test_overrides_parse_types():
    r = apply_overrides(get_recipe("quickstart"), ["optim.lr=1e-3", "data.batch_size=64",
                                                   "precision.compile=true", "model.norm=ln"])
    assert r.optim.lr == 1e-3 and r.data.batch_size == 64 and r.precision.compile is True
    assert r.model.norm == "ln"
    assert get_recipe("quickstart").optim.lr != 1e-3  # recipes are frozen, overrides copy


def test_recipe_is_frozen():
    r = get_recipe("quickstart")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.optim.lr = 1.0


@pytest.mark.parametrize("item, needle", [
    ("optim.lrr=1", "did you mean 'optim.lr'"),
    ("optm.lr=1", "did you mean 'optim.lr'"),
    ("data.batchsize=3", "did you mean 'data.batch_size'"),
    ("lr=1", "section.name"),
])
def test_unknown_key_suggests_nearest(item, needle):
    with pytest.raises(ConfigError, match=needle):
        apply_overrides(get_recipe("quickstart"), [item])


@pytest.mark.parametrize("item, needle", [
    ("optim.lr=-1", "optim.lr=-1.0: out of range, accepted: float > 0"),
    ("optim.lr=abc", "optim.lr='abc': expected a number"),
    ("data.batch_size=0", "data.batch_size=0: out of range, accepted: int >= 1"),
    ("data.batch_size=1.5", "expected an integer"),
    ("model.norm=rms", "accepted values are one of default, ln, dyt"),
    ("precision.compile=maybe", "expected a boolean"),
    ("reg.label_smoothing=2", "<= 1"),
    ("optim.lr", "expected KEY=VALUE"),
])
def test_bad_values_name_key_and_accepted(item, needle):
    with pytest.raises(ConfigError) as e:
        apply_overrides(get_recipe("quickstart"), [item])
    assert needle in str(e.value)


def test_unknown_recipe_suggests():
    with pytest.raises(ConfigError, match="did you mean 'quickstart'"):
        get_recipe("quickstrat")


def test_recipe_round_trip_through_json():
    r = apply_overrides(get_recipe("quickstart"), {"optim.lr": 5e-4, "sched.epochs": 3})
    back = recipe_from_dict(json.loads(r.to_json()))
    assert back == r


def test_saved_config_with_unknown_key_is_an_error():
    d = json.loads(get_recipe("quickstart").to_json())
    d["optim"]["lrate"] = 1
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        recipe_from_dict(d)


def test_every_registered_recipe_validates():
    assert {r.name for r in list_recipes()} >= {"quickstart", "quickstart-dyt"}
    for r in list_recipes():
        assert isinstance(r, Recipe) and r.description


def test_cli_recipes_and_errors(capsys):
    assert main(["recipes"]) == 0
    assert "quickstart" in capsys.readouterr().out
    assert main(["recipes", "show", "quickstart", "--set", "optim.lr=0.01"]) == 0
    assert json.loads(capsys.readouterr().out)["optim"]["lr"] == 0.01
    assert main(["train", "--set", "optim.lrr=1"]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err


def test_keys_lists_type_default_and_accepted_values(capsys):
    from reproscope.cli import main
    assert main(["keys"]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()}
    assert "one of auto, bf16, fp16, fp32" in lines["precision.amp"] and "default 'auto'" in lines["precision.amp"]
    assert "float > 0" in lines["optim.lr"] and "default" in lines["optim.lr"]
    assert main(["keys", "--names"]) == 0
    from reproscope.config import all_keys
    assert capsys.readouterr().out.split() == all_keys()


@pytest.mark.parametrize("columns", [150, 100])
def test_keys_wraps_the_meaning_to_the_terminal_width(columns, capsys, monkeypatch):
    """#49: no `reproscope keys` line is wider than the terminal (rows reached 277 characters): the
    meaning wraps in its column at 150, below its key at 100; every key, default and meaning is whole."""
    from reproscope.cli import main
    from reproscope.config import key_table
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["keys"]) == 0
    out = capsys.readouterr().out
    assert max(len(ln) for ln in out.splitlines()) <= columns
    starts = [ln.split()[0] for ln in out.splitlines() if not ln.startswith(" ")]
    rows = key_table()
    assert starts == [r[0] for r in rows]
    flat = " ".join(out.split())
    for key, accepted, default, help_ in rows:
        assert " ".join(f"{key} {accepted} default {default} {help_}".split()) in flat


def test_train_starts_from_a_config_file(tmp_path):
    """--config: a run's config.json, or a JSON/YAML mapping of overrides; bad keys name the file."""
    import json

    from reproscope.config import ConfigError
    from reproscope.recipes import get_recipe, recipe_from_file
    run_cfg = tmp_path / "config.json"
    run_cfg.write_text(get_recipe("quickstart-dyt").to_json())
    assert recipe_from_file(str(run_cfg)).model.norm == "dyt"
    over = tmp_path / "over.json"
    over.write_text(json.dumps({"recipe": "quickstart", "optim.lr": 1e-3, "data": {"batch_size": 64}}))
    r = recipe_from_file(str(over))
    assert (r.optim.lr, r.data.batch_size, r.name) == (1e-3, 64, "quickstart")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"optim.lrr": 1e-3}))
    with pytest.raises(ConfigError, match=r"bad.json: unknown key 'optim.lrr' \(did you mean 'optim.lr'\?\)"):
        recipe_from_file(str(bad))
    yml = tmp_path / "over.yaml"
    yml.write_text("optim:\n  lr: 0.002\nsched.epochs: 3\n")
    pytest.importorskip("yaml")
    assert recipe_from_file(str(yml)).sched.epochs == 3
    with pytest.raises(ConfigError, match="no such file"):
        recipe_from_file(str(tmp_path / "missing.json"))


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_cli_help_and_a_closed_pipe(tmp_path):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "reproscope", "--help"], capture_output=True, text=True)
    assert "COMMAND --help" in out.stdout
    piped = subprocess.run(f"{sys.executable} -m reproscope keys --names | head -2", shell=True, capture_output=True,
                           text=True)
    assert len(piped.stdout.splitlines()) == 2 and "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr
