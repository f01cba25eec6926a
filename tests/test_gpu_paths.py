"""The CUDA code paths as far as a CPU can take them (issue 19, docs/gpu.md): bf16 autocast per model
family, channels_last for the conv families, a checkpoint carrying CUDA RNG state, MFU against the
known-GPU table."""

from __future__ import annotations

import math

import pytest
import torch

from reproscope.config import apply_overrides
from reproscope.hardware import KNOWN_GPUS, mfu
from reproscope.recipes import get_recipe
from reproscope.train.trainer import Trainer

FAMILIES = ["quickstart", "quickstart-dyt", "dyt-convnext_tiny", "kat-kat_tiny", "mambaout-mambaout_femto"]
SMALL = {"data.train_size": 64, "data.val_size": 16, "data.batch_size": 16, "data.eval_batch_size": 16,
         "sched.epochs": 1, "sched.warmup_epochs": 0, "run.progress": False, "instrument.enabled": False}


def _trainer(name, tmp_path, **over):
    r = apply_overrides(get_recipe(name), {**SMALL, **over})
    torch.manual_seed(0)
    return Trainer(r, tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}", tensorboard=False)


@pytest.mark.parametrize("name", FAMILIES)
def test_bf16_autocast_trains_finite_and_close_to_fp32(name, tmp_path):
    """The first step's loss under CPU bf16 autocast within 3 % of fp32 from the same weights and batch
    (bf16 keeps 8 mantissa bits: ~0.4 % per op, a few ops deep; our tolerance), then 3 finite steps."""
    losses = {}
    for amp in ("fp32", "bf16"):
        tr = _trainer(name, tmp_path, **{"precision.amp": amp})
        batch = tr.train_loader.make_batch(torch.arange(16), 0)
        losses[amp] = [tr.train_step([batch])["loss"].item() for _ in range(3)]
    assert all(math.isfinite(v) for v in losses["bf16"]), losses
    assert abs(losses["bf16"][0] - losses["fp32"][0]) <= 0.03 * losses["fp32"][0], losses


@pytest.mark.parametrize("name", ["dyt-convnext_tiny", "mambaout-mambaout_femto"])
def test_channels_last_gives_the_same_steps(name, tmp_path):
    """channels_last (the CUDA default for conv nets) on CPU: the same losses as contiguous tensors."""
    runs = {}
    for cl in ("off", "on"):
        tr = _trainer(name, tmp_path, **{"precision.channels_last": cl})
        batch = tr.train_loader.make_batch(torch.arange(16), 0)
        if cl == "on":
            assert batch[0].is_contiguous(memory_format=torch.channels_last)
        runs[cl] = [tr.train_step([batch])["loss"].item() for _ in range(3)]
    torch.testing.assert_close(runs["on"], runs["off"], rtol=1e-4, atol=1e-5)


def test_a_checkpoint_with_cuda_rng_state_resumes_on_cpu(tmp_path):
    from reproscope.train.checkpoint import atomic_save, load_checkpoint
    tr = _trainer("quickstart", tmp_path)
    tr.fit()
    path = tr.run_dir / "last.pt"
    ckpt = load_checkpoint(path)
    ckpt["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]  # as a CUDA machine writes it
    atomic_save(ckpt, path)
    tr2 = Trainer(apply_overrides(tr.recipe, {"sched.epochs": 2}), tmp_path / "resumed", tensorboard=False)
    tr2.load_state_dict(load_checkpoint(path))  # the CUDA entry is ignored where there is no CUDA
    assert tr2.step == tr.step
    tr2.fit()
    assert tr2.step == 2 * tr.step


def test_mfu_against_the_known_gpu_table():
    h200 = KNOWN_GPUS["H200"]
    assert mfu("NVIDIA H200", 0.45 * h200.bf16, 1.0, "bf16") == (pytest.approx(0.45), h200.bf16)
    assert mfu("NVIDIA H100 80GB HBM3", 1e12, 1.0, "auto")[1] == KNOWN_GPUS["H100"].bf16  # auto is bf16 on a GPU
    assert mfu("NVIDIA L4", 1e12, 1.0, "fp32", tf32=True)[1] == KNOWN_GPUS["L4"].tf32
    assert mfu("NVIDIA L4", 1e12, 1.0, "fp32", tf32=False)[1] == KNOWN_GPUS["L4"].fp32
    assert mfu("Quadro K2000", 1e12, 1.0, "bf16") == (None, None)


@pytest.mark.release  # an inductor compile per family: 40-60 s each on 2 cores
@pytest.mark.parametrize("name", ["dyt-convnext_tiny", "kat-kat_tiny", "mambaout-mambaout_femto"])
def test_compile_with_the_instruments_and_tripwire_per_family(name, tmp_path):
    """torch.compile with probes and tripwire on (probe steps run eager, hooks registered once before
    compile). In the full tier instead: the ViT family trains compiled with its hooks (tests/test_instrument.py::
    test_compiled_model_keeps_working_with_hooks_and_checkpoints_the_uncompiled_module), every family's tiny model
    compiles in one graph to the eager logits (tests/test_all_models.py::test_compile_fullgraph_matches_eager),
    and the GPU session's CPU smoke trains the quickstart compiled with the instruments."""
    from reproscope.launch import train
    r = apply_overrides(get_recipe(name), {**SMALL, "instrument.enabled": True, "precision.compile": True})
    trainer, metrics = train(r, run_dir=tmp_path / "run")
    assert trainer.model is not trainer.orig_model and math.isfinite(metrics["loss"])
    assert (tmp_path / "run" / "stats.jsonl").read_text().count("\n") == 3  # probes at steps 1, 2, 4


def test_the_host_cache_copy_branch_gives_the_same_batches():
    """On CUDA a cache too big for the GPU stays in host memory and each batch is copied over
    (``non_blocking``); a device-resident cache is indexed on the device. ``cpu:0`` is a device that
    is not ``cpu`` to the loader, so the copy branch runs here: both give the same augmented batches."""
    from reproscope.config import AugConfig
    from reproscope.data.augment import BatchTransform
    from reproscope.data.datasets import ArrayDataset, BatchLoader
    g = torch.Generator().manual_seed(0)
    ds = ArrayDataset(torch.randint(0, 256, (64, 3, 36, 36), dtype=torch.uint8, generator=g), torch.arange(64) % 10,
                      tuple("abcdefghij"), "t")
    tf = BatchTransform(AugConfig(), 32, (0.5,) * 3, (0.25,) * 3, 10, 0.0, train=True)
    resident = BatchLoader(ds, 16, torch.device("cpu"), tf, train=True)
    copied = BatchLoader(ds, 16, torch.device("cpu", 0), tf, train=True, device_cache="off")
    assert copied.images.device != copied.device  # the copy branch
    for (xa, ya), (xb, yb) in zip(resident.epoch(1), copied.epoch(1)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
