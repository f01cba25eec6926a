"""Disk datasets: every layout from small generated files, the cache, and errors that name the file."""

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reproscope.cli import main
from reproscope.config import DataConfig
from reproscope.data import folders
from reproscope.data.datasets import build_datasets
from reproscope.data.folders import DataError, imagenet100_classes

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _img(path: Path, mode="RGB", size=(12, 10), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if mode == "L":
        arr = rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8)
    else:
        arr = rng.integers(0, 255, (size[1], size[0], len(mode)), dtype=np.uint8)
    Image.fromarray(arr, mode).save(path, "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else None)


def _folder(root: Path, classes=("a", "b"), n=3, splits=("train", "val"), ext=".jpg"):
    for s in splits:
        for ci, c in enumerate(classes):
            for i in range(n):
                _img(root / s / c / f"{i}{ext}", seed=ci * 10 + i)
    return root


def _cfg(tmp_path, dataset, root, **kw):
    return DataConfig(dataset=dataset, root=str(root), img_size=8, cache_dir=str(tmp_path / "cache"), **kw)


def test_imagefolder_and_cache_reuse(tmp_path, capsys):
    root = _folder(tmp_path / "data")
    tr, va = build_datasets(_cfg(tmp_path, "imagefolder", root), progress=False)
    out = capsys.readouterr().out  # #18: never silent while the cache is built, even without a bar
    assert "caching imagefolder/train at 9px: decoding 6 images" in out and "6 images cached in" in out
    assert tr.images.shape == (6, 3, 9, 9) and tr.images.dtype == torch.uint8  # cache_res = 8 / 0.875
    assert tr.classes == ("a", "b") and sorted(tr.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    man = json.loads(next((tmp_path / "cache").glob("imagefolder-train-*/manifest.json")).read_text())
    assert man["complete"] and man["n"] == 6
    tr2, _ = build_datasets(_cfg(tmp_path, "imagefolder", root), progress=False)
    assert torch.equal(tr.images, tr2.images)
    out = capsys.readouterr().out
    assert "rebuilding" not in out and "caching" not in out  # reused
    _img(root / "train" / "a" / "new.jpg", seed=99)
    tr3, _ = build_datasets(_cfg(tmp_path, "imagefolder", root), progress=False)
    assert len(tr3) == 7 and "source changed" in capsys.readouterr().out


def test_two_runs_building_the_same_cache_at_once_both_get_it(tmp_path, capsys):
    """A campaign's --jobs 2 starts two runs on the same data: the second used to crash renaming the
    temporary file the first had already moved (FileNotFoundError images.npy.tmp). Now it waits for the
    first builder and reads its cache."""
    import threading
    root = _folder(tmp_path / "data", n=150)
    barrier, got, errors = threading.Barrier(2), [], []

    def run():
        barrier.wait()
        try:
            got.append(build_datasets(_cfg(tmp_path, "imagefolder", root), progress=False))
        except Exception as e:  # noqa: BLE001 - the test reports it
            errors.append(e)
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert torch.equal(got[0][0].images, got[1][0].images) and torch.equal(got[0][1].labels, got[1][1].labels)
    out = capsys.readouterr().out
    assert out.count("caching imagefolder/train at 9px: decoding 300 images") == 1
    assert "another process is building the cache" in out and "the other process finished; reading its cache" in out


def test_the_same_files_through_another_root_reuse_the_cache(tmp_path, capsys, monkeypatch):
    """A relative root, an absolute one and a symlink to the same folder are the same data: one cache,
    not a rebuild announced as 'source changed'."""
    root = _folder(tmp_path / "data")
    (tmp_path / "link").symlink_to(root)
    build_datasets(_cfg(tmp_path, "imagefolder", root), progress=False)
    assert "caching imagefolder/train" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    for other in ("link", "data", str(tmp_path / "link")):
        build_datasets(_cfg(tmp_path, "imagefolder", other), progress=False)
        out = capsys.readouterr().out
        assert "caching" not in out and "source changed" not in out, (other, out)
    _img(root / "train" / "a" / "0.jpg", seed=42)  # a file that really changed still rebuilds
    build_datasets(_cfg(tmp_path, "imagefolder", "link"), progress=False)
    assert "source changed" in capsys.readouterr().out


def test_imagenette_official_archive_layout(tmp_path):
    _folder(tmp_path / "data" / "imagenette2-160", classes=("n01440764", "n02102040"))
    tr, va = build_datasets(_cfg(tmp_path, "imagenette", tmp_path / "data"), progress=False)
    assert len(tr) == 6 and len(va) == 6 and tr.classes[0] == "n01440764"


def test_tiny_imagenet_official_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    for ci, c in enumerate(("n01", "n02")):
        for i in range(2):
            _img(root / "train" / c / "images" / f"{c}_{i}.JPEG", seed=ci + i)
    lines = []
    for i, c in enumerate(("n02", "n01", "n02")):
        _img(root / "val" / "images" / f"val_{i}.JPEG", seed=10 + i)
        lines.append(f"val_{i}.JPEG\t{c}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    tr, va = build_datasets(_cfg(tmp_path, "tiny-imagenet", tmp_path), progress=False)
    assert len(tr) == 4 and va.labels.tolist() == [1, 0, 1]


@pytest.mark.parametrize("val_sub, train_sub", [("images", "images"), ("", "images"), ("images", ""), ("", "")])
def test_tiny_imagenet_reorganised_layouts(tmp_path, capsys, val_sub, train_sub):
    """The layouts people reorganise Tiny-ImageNet into: val/<wnid>/images/*.JPEG or val/<wnid>/*.JPEG
    (with or without val_annotations.txt left behind), and train without the images/ level."""
    root = tmp_path / "tiny-imagenet-200"
    for ci, c in enumerate(("n01", "n02")):
        for i in range(2):
            _img(root / "train" / c / train_sub / f"{c}_{i}.JPEG", seed=ci + i)
        for i in range(ci + 1):
            _img(root / "val" / c / val_sub / f"val_{c}_{i}.JPEG", seed=20 + ci + i)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01\t0\t0\t10\t10\n")  # left behind, stale
    tr, va = build_datasets(_cfg(tmp_path, "tiny-imagenet", tmp_path), progress=False)
    assert len(tr) == 4 and sorted(va.labels.tolist()) == [0, 1, 1] and va.classes == ("n01", "n02")
    assert f"val reorganised as val/<wnid>/{val_sub + '/' if val_sub else ''}*" in capsys.readouterr().out


def test_flat_validation_folder_is_named_as_such(tmp_path):
    root = _folder(tmp_path / "d", splits=("train",))
    for i in range(3):
        _img(root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", seed=i)
    with pytest.raises(DataError, match=r"holds 3 image files but no class folders: a flat validation folder"):
        build_datasets(_cfg(tmp_path, "imagefolder", root), progress=False)


def test_an_empty_split_after_skipping_is_refused(tmp_path):
    root = _folder(tmp_path / "d", n=1)
    for c in ("a", "b"):
        (root / "val" / c / "0.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"imagefolder/val has no readable images left \(2 skipped"):
        build_datasets(_cfg(tmp_path, "imagefolder", root, skip_corrupt=True), progress=False)


def _fake_cifar10(base):
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(base / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in base.iterdir()}


def test_cifar_batches_with_another_checksum_are_never_unpickled(tmp_path):
    base = tmp_path / "bin" / "cifar-10-batches-py"
    _fake_cifar10(base)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    with open(base / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Payload()}, f)
    with pytest.raises(DataError, match="official checksum") as e:
        build_datasets(_cfg(tmp_path, "cifar10", tmp_path / "bin"), progress=False)
    assert str(base / "data_batch_3") in str(e.value) and not marker.exists()


def test_cifar_binary_and_folder_layouts(tmp_path, monkeypatch):
    md5 = _fake_cifar10(tmp_path / "bin" / "cifar-10-batches-py")
    monkeypatch.setattr(folders, "cifar_md5", lambda num_classes: md5)  # our fake batches' own checksums
    tr, va = build_datasets(_cfg(tmp_path, "cifar10", tmp_path / "bin"), progress=False)
    assert tr.images.shape == (20, 3, 32, 32) and len(va) == 4 and len(tr.classes) == 10
    _folder(tmp_path / "folders", classes=("cat", "dog"), splits=("train", "test"))
    tr, va = build_datasets(_cfg(tmp_path, "cifar100", tmp_path / "folders"), progress=False)
    assert len(tr) == 6 and len(va) == 6


def test_imagenet100_subset(tmp_path):
    classes = imagenet100_classes()
    assert len(classes) == 100 == len(set(classes))
    root = tmp_path / "in"
    for s in ("train", "val"):
        for c in classes + ["n99999999"]:  # an extra class that the subset must ignore
            _img(root / s / c / "x.JPEG", size=(8, 8))
    tr, va = build_datasets(_cfg(tmp_path, "imagenet-100", root, workers=2), progress=False)
    assert len(tr.classes) == 100 and "n99999999" not in tr.classes and len(va) == 100


def test_grayscale_cmyk_rgba_are_converted(tmp_path):
    root = _folder(tmp_path / "d")
    _img(root / "train" / "a" / "gray.jpg", mode="L")
    _img(root / "train" / "a" / "cmyk.jpg", mode="CMYK")
    _img(root / "train" / "b" / "rgba.png", mode="RGBA")
    tr, _ = build_datasets(_cfg(tmp_path, "imagefolder", root), progress=False)
    assert len(tr) == 9 and tr.images.shape[1] == 3


@pytest.mark.parametrize("case, needle", [
    ("missing_root", "does not exist"),
    ("empty_class", "is empty"),
    ("mismatch", "train and val classes differ"),
    ("corrupt", "corrupt.jpg"),
    ("truncated", "truncated.jpg"),
    ("non_image", "notes.txt"),
])
def test_bad_data_errors_name_the_file(tmp_path, case, needle):
    root = _folder(tmp_path / "d")
    if case == "missing_root":
        root = tmp_path / "nowhere"
    elif case == "empty_class":
        (root / "train" / "c").mkdir()
        (root / "val" / "c").mkdir()
    elif case == "mismatch":
        _img(root / "val" / "z" / "0.jpg")
    elif case == "corrupt":
        (root / "train" / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    elif case == "truncated":
        good = (root / "train" / "a" / "0.jpg").read_bytes()
        _img(root / "train" / "a" / "big.jpg", size=(64, 64))
        big = (root / "train" / "a" / "big.jpg").read_bytes()
        (root / "train" / "a" / "truncated.jpg").write_bytes(big[: len(big) // 2])
        assert good
    elif case == "non_image":
        (root / "train" / "a" / "notes.txt").write_text("hello")
    with pytest.raises(DataError) as e:
        build_datasets(_cfg(tmp_path, "imagefolder", root), progress=False)
    assert needle in str(e.value)


def test_all_bad_files_listed_and_skip_corrupt(tmp_path, capsys):
    root = _folder(tmp_path / "d")
    (root / "train" / "a" / "bad1.jpg").write_bytes(b"nope")
    (root / "train" / "b" / "bad2.jpg").write_bytes(b"nope")
    (root / "val" / "a" / "bad3.jpg").write_bytes(b"nope")
    with pytest.raises(DataError) as e:  # both splits named in one pass
        build_datasets(_cfg(tmp_path, "imagefolder", root), progress=False)
    msg = str(e.value)
    assert "2 of 8 image files in imagefolder/train are unreadable" in msg and "1 of 7 image files in imagefolder/val" in msg
    assert all(f"bad{i}.jpg" in msg for i in (1, 2, 3))
    tr, va = build_datasets(_cfg(tmp_path, "imagefolder", root, skip_corrupt=True), progress=False)
    assert len(tr) == 6 and tr.skipped == 2 and va.skipped == 1 and "skipped 2 unreadable" in capsys.readouterr().out


def test_cli_bad_root_is_a_message_not_a_traceback(tmp_path, capsys):
    rc = main(["train", "--set", "data.dataset=imagefolder", "--set", f"data.root={tmp_path}/missing",
               "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and "Traceback" not in err
    assert "--set data.root=PATH" in err and "relative" not in err  # an absolute root: no cwd hint


def test_a_relative_data_root_that_is_missing_says_where_it_was_read_from(tmp_path, capsys, monkeypatch):
    """A recipe's relative root (the CPU recipes' ../shared/datasets/...) resolves against the folder the
    user runs in: the error says so and how to point the run elsewhere."""
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "--recipe", "dyt-vit_quick-cifar10-cpu", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and f"data root ../shared/datasets/cifar10 (here: {tmp_path}/../shared/datasets/cifar10) does not exist" in err
    assert "--set data.root=PATH (a relative root is read from the folder you run in)" in err
    assert not (tmp_path / "run").exists()  # the failed start leaves no empty run folder behind
    (tmp_path / "mine").mkdir()  # ... but a folder the user made stays
    assert main(["train", "--recipe", "dyt-vit_quick-cifar10-cpu", "--run-dir", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine").is_dir()


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "imagenette").is_dir(), reason="shared Imagenette copy not present")
def test_shared_imagenette_copy(tmp_path):
    tr, va = build_datasets(_cfg(tmp_path, "imagenette", SHARED / "imagenette"), progress=False)
    assert (len(tr), len(va)) == (9469, 3925) and len(tr.classes) == 10


@pytest.mark.parametrize("command", ["train", "diagnose"])
def test_labels_beyond_num_classes_are_refused_once_before_anything_runs(tmp_path, capsys, command):
    """A 3-class folder with data.num_classes=2: one message naming the classes and the key."""
    root = _folder(tmp_path / "data", classes=("cat", "dog", "fox"), n=4)
    sets = ["--set", "data.dataset=imagefolder", "--set", f"data.root={root}", "--set", "data.num_classes=2",
            "--set", "data.img_size=16", "--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--set", "data.batch_size=4", "--set", "model.patch_size=4"]
    args = ["train", "--run-dir", str(tmp_path / "run"), "--no-progress", *sets] if command == "train" \
        else ["diagnose", "all", *sets, "--out", str(tmp_path / "diag")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("data.num_classes=2") == 1 and "cat, dog, fox" in err and "--set data.num_classes=3" in err
    assert "Traceback" not in err


def _gradient_modes(tmp_path):
    """One 16x16 image per Pillow mode, each a left-to-right ramp, with the 8-bit value it must decode to."""
    from PIL import Image
    ramp = np.tile(np.linspace(0, 1, 16), (16, 1))  # [16, 16] in [0, 1]
    out = {}
    im16 = Image.fromarray((ramp * 65535).astype(np.uint16))  # mode I;16
    out["I;16"] = (im16, ramp)
    out["I"] = (Image.fromarray((ramp * 65535).astype(np.int32), "I"), ramp)
    out["F"] = (Image.fromarray(ramp.astype(np.float32), "F"), ramp)
    out["L"] = (Image.fromarray((ramp * 255).astype(np.uint8), "L"), ramp)
    out["LA"] = (out["L"][0].convert("LA"), ramp)
    out["1"] = (Image.fromarray(ramp >= 0.5), (ramp >= 0.5).astype(float))
    pal = out["L"][0].convert("P")
    pal.info["transparency"] = 0
    out["P+transparency"] = (pal, ramp)
    rgb = Image.fromarray(np.stack([(ramp * 255).astype(np.uint8)] * 3, -1), "RGB")
    out["CMYK"] = (rgb.convert("CMYK"), ramp)
    out["YCbCr"] = (rgb.convert("YCbCr"), ramp)
    return out


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "L", "LA", "1", "P+transparency", "CMYK", "YCbCr"])
def test_every_pillow_mode_decodes_to_the_right_8bit_rgb(tmp_path, mode):
    from reproscope.data.folders import decode_image
    im, want = _gradient_modes(tmp_path)[mode]
    path = tmp_path / ("img.tiff" if mode in ("I", "F", "CMYK", "YCbCr", "LA") else "img.png")
    if mode == "YCbCr":
        path = tmp_path / "img.jpg"
    im.save(path)
    got = decode_image(str(path), 16).astype(float)  # [3, 16, 16]
    assert got.shape == (3, 16, 16)
    tol = 12 if mode == "YCbCr" else 2  # JPEG is lossy
    assert np.abs(got - want[None] * 255).max() <= tol, (mode, got[0, 0])


def test_constant_images_are_refused_before_training(tmp_path):
    from reproscope.config import ConfigError
    from reproscope.data.datasets import ArrayDataset, channel_stats
    ds = ArrayDataset(torch.full((8, 3, 4, 4), 255, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), ("a",), "x/train")
    with pytest.raises(ConfigError, match=r"x/train: channel std .* 8 of 8 images are a single constant value"):
        channel_stats(ds)
