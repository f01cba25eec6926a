import torch

from reproscope.config import DataConfig
from reproscope.data.datasets import BatchLoader, batch_indices, build_datasets, random_crop_flip
from reproscope.data.shapes import CLASSES, generate_shapes


def test_shapes_deterministic_and_seeded():
    a, ya = generate_shapes(64, 32, seed=3)
    b, yb = generate_shapes(64, 32, seed=3)
    c, _ = generate_shapes(64, 32, seed=4)
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert not torch.equal(a, c)
    assert a.dtype == torch.uint8 and a.shape == (64, 3, 32, 32)


def test_shapes_sizes_and_balanced_labels():
    for size in (32, 64):
        x, y = generate_shapes(200, size, seed=0)
        assert x.shape == (200, 3, size, size)
    assert len(CLASSES) >= 10
    assert torch.bincount(y, minlength=10).tolist() == [20] * 10
    assert x.float().std() > 20  # not blank


def test_train_and_val_are_disjoint_and_configurable():
    tr, va = build_datasets(DataConfig(train_size=300, val_size=120))
    assert len(tr) == 300 and len(va) == 120
    tr_h = {hash(bytes(im.numpy())) for im in tr.images}
    assert not any(hash(bytes(im.numpy())) in tr_h for im in va.images)


def test_batch_order_resumes_mid_epoch():
    full = list(batch_indices(100, 10, seed=1, epoch=2))
    tail = list(batch_indices(100, 10, seed=1, epoch=2, start_batch=4))
    assert all(torch.equal(a, b) for a, b in zip(full[4:], tail))
    other = list(batch_indices(100, 10, seed=1, epoch=3))
    assert not torch.equal(torch.cat(full), torch.cat(other))


def test_augmentation_is_a_function_of_step():
    tr, _ = build_datasets(DataConfig(train_size=64, val_size=10))
    from reproscope.config import AugConfig
    from reproscope.data.augment import BatchTransform
    tf = BatchTransform(AugConfig(crop_pad=2, hflip=0.5), 32, (0.5,) * 3, (0.25,) * 3, 10, 0.0, train=True)
    L = BatchLoader(tr, 16, torch.device("cpu"), tf, train=True, seed=0)
    idx = torch.arange(16)
    a, _ = L.make_batch(idx, step=5)
    b, _ = L.make_batch(idx, step=5)
    c, _ = L.make_batch(idx, step=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_crop_flip_preserves_content_at_zero_pad():
    x = torch.randn(4, 3, 8, 8)
    y = random_crop_flip(x, pad=0, hflip=1.0, g=None)
    assert torch.equal(y, x.flip(-1))
    z = random_crop_flip(x, pad=2, hflip=0.0, g=torch.Generator().manual_seed(0))
    assert z.shape == x.shape
