import pytest
import torch

from reproscope.config import apply_overrides
from reproscope.recipes import get_recipe

torch.set_num_threads(min(2, torch.get_num_threads()))

TINY = {
    "data.train_size": 320, "data.val_size": 100, "data.batch_size": 32, "data.eval_batch_size": 50,
    "sched.epochs": 2, "sched.warmup_epochs": 0.5, "run.progress": False, "run.log_every": 2,
    "model.patch_size": 8,
}


@pytest.fixture
def tiny_recipe(tmp_path):
    """The quickstart shrunk to seconds: 320 images, 2 epochs, 10 steps per epoch."""
    return apply_overrides(get_recipe("quickstart"), {**TINY, "run.out_dir": str(tmp_path / "runs")})
