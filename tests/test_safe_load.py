"""Loading a checkpoint never runs code: every entry point refuses a pickle payload, and every file
reproscope writes loads with ``torch.load(weights_only=True)``."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from reproscope.cli import main
from reproscope.config import apply_overrides
from reproscope.instrument import Tripwire
from reproscope.launch import train
from reproscope.model import create_model
from reproscope.train.checkpoint import (
    MANIFEST,
    CheckpointError,
    UnsafeCheckpointError,
    load_checkpoint,
    load_file,
    load_weights,
)
from reproscope.train.trainer import Trainer


class Payload:
    """Unpickling this creates ``marker`` (a harmless stand-in for any code a pickle can run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _evil(path: Path, marker: Path, **extra) -> Path:
    torch.save({"model": {}, "step": 5, "payload": Payload(marker), **extra}, path)
    return path


@pytest.fixture
def finished_run(tiny_recipe, tmp_path):
    r = apply_overrides(tiny_recipe, {"run.ckpt_every": 3, "run.keep_last": 3, "instrument.probes": True})
    trainer, _ = train(r, run_dir=tmp_path / "run")
    return r, trainer, tmp_path / "run"


def test_everything_a_run_writes_loads_weights_only(finished_run):
    _, trainer, rd = finished_run
    files = list(rd.glob("*.pt")) + list((rd / "figures").glob("*.pt"))
    assert {"last.pt", "best.pt", "probes.pt"} <= {f.name for f in files}
    for f in files:
        torch.load(f, weights_only=True)  # raises on anything beyond tensors and plain containers
    manifest = json.loads((rd / MANIFEST).read_text())
    assert manifest["last.pt"]["step"] == trainer.step and "best.pt" in manifest
    assert {f.name for f in rd.glob("ckpt-step*.pt")} <= set(manifest)
    exported = load_weights(rd / "model.safetensors")
    assert all(torch.equal(v, trainer.orig_model.state_dict()[k]) for k, v in exported.items())


def test_reproducer_loads_weights_only_and_replays(tiny_recipe, tmp_path, capsys):
    model = create_model("vit_quick", num_classes=10, patch_size=8)
    with torch.no_grad():
        model.blocks[1].mlp.fc1.weight[0, 0] = float("inf")
    r = apply_overrides(tiny_recipe, {"instrument.enabled": False})
    Trainer(r, tmp_path / "run", model=model, tensorboard=False, callbacks=[Tripwire()]).fit()
    rep = next((tmp_path / "run").glob("nonfinite-step*.pt"))
    torch.load(rep, weights_only=True)
    assert main(["diagnose", "replay", str(rep)]) == 1
    assert "blocks.1.mlp.fc1" in capsys.readouterr().out


def test_resume_file_with_a_payload_is_refused(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = _evil(tmp_path / "evil.pt", marker)
    assert main(["train", "--resume", str(evil), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--trust-pickle" in err and str(evil) in err and "Traceback" not in err
    assert not marker.exists()


def test_weights_file_with_a_payload_is_refused(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = _evil(tmp_path / "evil.pth", marker)
    assert main(["train", "--weights", str(evil), "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "--trust-pickle" in capsys.readouterr().err and not marker.exists()


def test_replay_of_a_payload_is_refused(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = _evil(tmp_path / "nonfinite-step3.pt", marker)
    assert main(["diagnose", "replay", str(evil)]) == 2
    assert "--trust-pickle" in capsys.readouterr().err and not marker.exists()


def test_trust_pickle_is_the_only_way_in_and_warns(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = _evil(tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeCheckpointError):
        load_file(evil)
    assert not marker.exists()
    load_file(evil, trust_pickle=True)
    assert marker.exists() and f"unpickling {evil}" in capsys.readouterr().err


def test_resume_auto_never_opens_a_planted_file(finished_run, tmp_path, capsys):
    r, trainer, rd = finished_run
    marker = tmp_path / "ran"
    _evil(rd / "ckpt-step99999999.pt", marker, )  # newest name, newest mtime, highest step in its name
    r2 = apply_overrides(r, {"sched.epochs": 3})
    t2, _ = train(r2, run_dir=rd, resume="auto")
    out = capsys.readouterr().out
    assert not marker.exists()
    assert "not in its checkpoint manifest" in out and "ckpt-step99999999.pt" in out
    assert t2.step == t2.total_steps


def test_resume_auto_takes_the_highest_step_and_skips_a_changed_file(finished_run, capsys):
    r, trainer, rd = finished_run
    ckpts = sorted(rd.glob("ckpt-step*.pt"))
    newest, older = ckpts[-1], ckpts[-2]
    older.touch()  # a newer mtime must not make it win (cp -r of a run folder does this)
    from reproscope.train.run import find_resume_checkpoint
    chosen = find_resume_checkpoint(r, rd)
    assert load_checkpoint(chosen)["step"] == trainer.step
    data = bytearray(newest.read_bytes())
    data[-100] ^= 0xFF
    newest.write_bytes(bytes(data))
    (rd / "last.pt").unlink()
    (rd / "best.pt").unlink()
    chosen = find_resume_checkpoint(r, rd)
    assert chosen == older and "sha256 mismatch" in capsys.readouterr().out


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_weights_from_safetensors_start_a_run(finished_run, tmp_path):
    r, trainer, rd = finished_run
    src = tmp_path / "w.safetensors"
    shutil.copyfile(rd / "model.safetensors", src)
    seen = {}

    class Grab:
        def on_train_start(self, t):
            seen.update({k: v.clone() for k, v in t.orig_model.state_dict().items()})
    train(apply_overrides(r, {"sched.epochs": 1}), run_dir=tmp_path / "new", weights=src, callbacks=[Grab()])
    want = trainer.orig_model.state_dict()
    assert seen and all(torch.equal(seen[k], want[k]) for k in want)


@pytest.mark.slow  # over 5 s on 2 cores: the full tier
def test_weights_that_do_not_fit_name_the_keys(finished_run, tmp_path, capsys):
    r, _, rd = finished_run
    rc = main(["train", "--weights", str(rd / "model.safetensors"), "--set", "model.name=vit_tiny",
               "--run-dir", str(tmp_path / "x"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "do not fit the model" in err and "Traceback" not in err


def test_resume_from_safetensors_says_what_to_do(finished_run, capsys):
    _, _, rd = finished_run
    with pytest.raises(CheckpointError, match="--weights"):
        load_checkpoint(rd / "model.safetensors")
