"""DDP under torchrun with 2 CPU processes (gloo) matches one process with the same global batch."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
from conftest import assert_weights_match

from reproscope.config import ConfigError
from reproscope.runtime import distributed
from reproscope.train.checkpoint import load_checkpoint
from reproscope.train.rundir import read_metrics

ARGS = ["--set", "data.train_size=256", "--set", "data.val_size=50", "--set", "data.batch_size=32",
        "--set", "sched.epochs=2", "--set", "model.patch_size=8", "--set", "aug.hflip=0", "--set", "aug.crop_pad=0",
        "--set", "run.threads=1", "--set", "run.log_every=1", "--set", "instrument.probe_every=5",
        "--set", "instrument.probes=false", "--no-progress"]
# Tolerance: the two runs differ only in the order of floating-point reductions (per-rank means
# averaged by all-reduce vs one mean over the batch). Losses and weights agree to ~1e-6. Elements
# whose true gradient is zero (the key slice of attn.qkv.bias) get rounding noise that AdamW turns
# into lr-sized steps; they are left out of the weight comparison (conftest.zero_true_gradient).
RTOL, ATOL = 1e-4, 1e-5


@pytest.mark.slow
def test_two_process_gloo_matches_single_process(tmp_path):
    single = tmp_path / "single"
    subprocess.run([sys.executable, "-m", "reproscope", "train", "--run-dir", str(single), *ARGS],
                   check=True, capture_output=True)
    ddp = tmp_path / "ddp"
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                          "-m", "reproscope", "train", "--run-dir", str(ddp), *ARGS], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assb = [r["loss"] for r in read_metrics(single) if r["kind"] == "train" and "loss" in r]
    ddpl = [r["loss"] for r in read_metrics(ddp) if r["kind"] == "train" and "loss" in r]
    assert len(assb) == len(ddpl) == 16
    torch.testing.assert_close(torch.tensor(ddpl), torch.tensor(assb), rtol=RTOL, atol=ATOL)
    a, b = load_checkpoint(single / "last.pt")["model"], load_checkpoint(ddp / "last.pt")["model"]
    assert_weights_match(a, b, rtol=RTOL, atol=ATOL)
    env = (ddp / "environment.json").read_text()
    assert '"world_size": 2' in env
    # rank 0 alone wrote logs: one metrics file, one stats file, with reduced probe statistics
    stats = (ddp / "stats.jsonl").read_text().splitlines()
    assert len(stats) == len((single / "stats.jsonl").read_text().splitlines())


# --- #46: the DDP faults reproscope names ------------------------------------------------------------------

# a user's model with BatchNorm and a distillation head it keeps but never uses in forward
HEAD_DIST = """
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1),
                                      nn.ReLU())
            self.head = nn.Linear(16, num_classes)
            self.head_dist = nn.Linear(16, num_classes)

        def forward(self, x):
            return self.head(self.body(x).mean((2, 3)))

    def make(num_classes):
        return Net(num_classes)
"""
TINY = ["--set", "data.train_size=128", "--set", "data.val_size=32", "--set", "data.batch_size=32", "--set",
        "sched.epochs=2", "--set", "run.threads=1", "--set", "instrument.probes=false", "--no-progress"]
# runs the CLI with the check before the first step turned off: DDP's own error at step 2 is then caught
NO_PRECHECK = """
import sys
import reproscope.train.run as run
run.check_unused_parameters = lambda trainer: None
from reproscope.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _torchrun(port: int, *args, script=None):
    target = [str(script)] if script else ["-m", "reproscope"]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                           *target, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _model_file(tmp_path):
    p = tmp_path / "headdist.py"
    p.write_text(textwrap.dedent(HEAD_DIST))
    return p


@pytest.mark.slow
def test_ddp_unused_parameters_are_named_before_the_first_step_and_at_ddps_error(tmp_path):
    """A head kept in the model but not in the loss: DDP's own error is a traceback per rank with parameter
    indices; reproscope names them, before the first step (and, with that check off, at DDP's error)."""
    src = _model_file(tmp_path)
    for port, script, rd in ((29561, None, tmp_path / "pre"), (29563, tmp_path / "noprecheck.py", tmp_path / "ddp")):
        if script:
            script.write_text(NO_PRECHECK)
        out = _torchrun(port, "train", "--model", f"{src}:make", "--run-dir", str(rd), *TINY, script=script)
        assert out.returncode != 0
        # one error per process; the two processes share the pipe, so their lines may run together
        mine = ["reproscope: error: DDP:" + m for m in out.stderr.split("reproscope: error: DDP:")[1:]]
        assert len(mine) == 2, out.stderr[-3000:]
        assert "head_dist.weight, head_dist.bias" in mine[0] and "[ddp-unused-parameters]" in mine[0]
        assert "--set dist.find_unused_parameters=true" in mine[0]
        assert "[rank0]: Traceback" not in out.stderr and "[rank1]: Traceback" not in out.stderr
        if script is None:
            assert not rd.exists()  # refused before the run record: the new run folder is removed


@pytest.mark.slow
def test_ddp_with_find_unused_parameters_trains_and_says_batchnorm_is_per_process(tmp_path):
    """dist.find_unused_parameters=true reaches DDP; a model with BatchNorm on 2 processes is said to normalise
    with 16 of the recipe's 32 images (start line and deviation log, code bn-per-rank); rank 0 alone prints
    the epoch lines."""
    src = _model_file(tmp_path)
    rd = tmp_path / "run"
    out = _torchrun(29565, "train", "--model", f"{src}:make", "--run-dir", str(rd), *TINY,
                    "--set", "dist.find_unused_parameters=true")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    bn = [line for line in lines if "BatchNorm statistics per process" in line]
    assert len(bn) == 1 and "16 images per rank where the recipe's batch is 32" in bn[0]
    assert "--set dist.sync_bn=true" in bn[0]
    assert sum(line.startswith("epoch ") for line in lines) == 2  # 2 epochs, rank 0 alone
    assert sum(line.startswith("view it with:") for line in lines) == 1
    devs = json.loads((rd / "deviations.json").read_text())["deviations"]
    row = next(d for d in devs if d.get("code") == distributed.BN_PER_RANK_CODE)
    assert (row["key"], row["parent"], row["value"]) == ("dist.sync_bn", True, False) and "16 images" in row["reason"]
    assert json.loads((rd / "config.json").read_text())["dist"]["find_unused_parameters"] is True


def test_unused_parameter_indices_are_ddps_order_of_trainable_parameters():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].weight.requires_grad_(False)  # DDP leaves frozen parameters out of its numbering
    err = RuntimeError("Expected to have finished reduction in the prior iteration ...\n"
                       "Parameter indices which did not receive grad for rank 1: 3 4\n In addition, you can set ...")
    assert distributed.unused_parameter_names(err, model) == ["2.weight", "2.bias"]
    assert distributed.unused_parameter_names(RuntimeError("something else"), model) is None
    e = distributed.UnusedParametersError(["head_dist.weight", "head_dist.bias"])
    assert isinstance(e, ConfigError) and e.code == "ddp-unused-parameters" and e.names == ["head_dist.weight",
                                                                                            "head_dist.bias"]


def test_sync_bn_is_refused_off_cuda_and_batchnorm_per_process_is_said():
    two = distributed.Dist(0, 2, 0)
    bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ConfigError, match="CUDA only"):
        distributed.sync_batchnorm(bn, two, "cpu")
    assert distributed.sync_batchnorm(bn, distributed.SINGLE, "cpu") is bn  # one process: nothing to sync
    assert distributed.batchnorm_per_rank(bn, 128, 2) == (
        "BatchNorm statistics per process: 64 images per rank where the recipe's batch is 128; "
        "--set dist.sync_bn=true to sync them (on CUDA: torch's SyncBatchNorm has no CPU path)")
    (row,) = distributed.batchnorm_deviations(bn, 128, 2)
    assert (row["key"], row["parent"], row["value"], row["code"]) == ("dist.sync_bn", True, False, "bn-per-rank")
    assert distributed.batchnorm_per_rank(bn, 128, 1) == "" and distributed.batchnorm_deviations(bn, 128, 1) == []
    assert distributed.batchnorm_per_rank(nn.Linear(2, 2), 128, 2) == ""
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(bn)
    assert distributed.batchnorm_per_rank(synced, 128, 2) == ""


WATCHED_DDP = """
import torch, torch.distributed as dist, torch.nn as nn, torch.nn.functional as F
import reproscope
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
ddp = nn.parallel.DistributedDataParallel(model)
opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
g = torch.Generator().manual_seed(rank)
with reproscope.watch(ddp, opt, run_dir={run!r}, against="dyt-vit_tiny-cifar10-quick", tensorboard=False) as w:
    for epoch in range(2):
        for _ in range(4):
            x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
            loss = F.cross_entropy(ddp(x), y)
            loss.backward()  # never clipped
            w.step(loss, targets=y)
            opt.step()
            opt.zero_grad()
        with torch.no_grad():
            ddp(x)  # evaluated in train mode; the model has no BatchNorm, dropout or drop path
        w.evaluate(top1=10.0)
dist.barrier()  # both ranks past watch's close before the group goes (a rank leaving early aborted in gloo)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_a_watched_ddp_loop_that_never_clips_is_not_said_to_clip(tmp_path):
    """DDP's all-reduce changes the gradient norm between backward and the step: that ratio is no clip.
    Evaluating in train mode a model with no BatchNorm, dropout or drop path is said, not a likely mistake;
    rank 0 alone warns."""
    script, run = tmp_path / "watched_ddp.py", tmp_path / "run"
    script.write_text(WATCHED_DDP.format(run=str(run)))
    out = _torchrun(29567, script=script)
    assert out.returncode == 0, out.stderr[-3000:]
    audit = json.loads((run / "deviations.json").read_text())
    codes = {r["code"] for r in audit["deviations"]}
    assert "grad-clip" not in codes and "clip-before-unscale" not in codes, audit["deviations"]
    assert "optim.grad_clip" in audit["not_observed"]
    loop = json.loads((run / "loop.json").read_text())
    assert "optim.grad_clip" not in loop["facts"] and "DDP" in loop["details"]["clipping"]["note"]
    row = next(r for r in audit["deviations"] if r["code"] == "eval-train-mode")
    assert row["mistake"] is False and loop["facts"]["eval.train_mode_modules"] == []
    said = out.stdout + out.stderr
    assert said.count("warning: the model was in train mode") == 1
