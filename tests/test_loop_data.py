"""describe_data: a user's data pipeline read into recipe keys (torchvision v1/v2, timm, DataLoader)."""

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data.distributed import DistributedSampler
from torchvision import transforms as T
from torchvision.transforms import v2

from reproscope.config import SECTIONS
from reproscope.instrument.loop_data import describe_data

BICUBIC = T.InterpolationMode.BICUBIC
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def deit_train_v1():
    return T.Compose([T.RandomResizedCrop(224, scale=(0.08, 1.0), interpolation=BICUBIC), T.RandomHorizontalFlip(),
                      T.RandAugment(2, 9), T.ColorJitter(0.4, 0.4, 0.4), T.ToTensor(), T.Normalize(MEAN, STD),
                      T.RandomErasing(0.25)])


def deit_train_v2():
    return v2.Compose([v2.RandomResizedCrop(224, scale=(0.08, 1.0), interpolation=BICUBIC), v2.RandomHorizontalFlip(),
                       v2.RandAugment(2, 9), v2.ColorJitter(0.4, 0.4, 0.4), v2.ToImage(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD), v2.RandomErasing(0.25)])


def deit_val(tv=T):
    return tv.Compose([tv.Resize(256, interpolation=BICUBIC), tv.CenterCrop(224), tv.ToTensor() if tv is T
                       else tv.ToImage(), tv.Normalize(MEAN, STD)])


def tiny_loader(**kw):
    return DataLoader(TensorDataset(torch.zeros(10, 3), torch.zeros(10, dtype=torch.long)), batch_size=4, **kw)


class MyAug:
    def __call__(self, img):
        return img


class FolderLike(Dataset):
    """Stands in for ImageFolder / CIFAR10: a dataset with a .transform."""

    def __init__(self, transform):
        self.transform = transform

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.zeros(3, 8, 8), 0


def recipe_keys():
    return {f"{s}.{f}" for s, cls in SECTIONS.items() for f in cls.__dataclass_fields__}


@pytest.mark.parametrize("build", [deit_train_v1, deit_train_v2], ids=["v1", "v2"])
def test_deit_train_pipeline(build):
    r = describe_data(train=build())
    obs = r["observed"]
    assert obs["data.img_size"] == 224
    assert obs["aug.rrc_scale_min"] == pytest.approx(0.08)
    assert obs["aug.interpolation"] == "bicubic"
    assert obs["aug.hflip"] == 0.5
    assert (obs["aug.randaug_n"], obs["aug.randaug_m"], obs["aug.randaug_mstd"]) == (2, 9.0, 0.0)
    assert obs["aug.color_jitter"] == pytest.approx(0.4)
    assert obs["aug.random_erasing"] == 0.25
    assert obs["aug.mixup_alpha"] == 0.0 and obs["aug.cutmix_alpha"] == 0.0  # train pipeline seen, no mixup
    assert "data.batch_size" not in obs and "data.eval_crop_pct" not in obs  # no loader, no val
    assert "aug.crop_pad" not in obs
    d = r["details"]
    assert d["mean"] == [0.485, 0.456, 0.406] and d["std"] == [0.229, 0.224, 0.225]
    assert d["rrc_ratio"] == (0.75, 1.3333)
    assert d["randaug_m_timm_scale"] == 3.0 and "0..30" in d["randaug_scale"]
    assert d["sources"]["aug.hflip"] == "RandomHorizontalFlip"
    assert any("0..30" in n for n in r["notes"])
    assert not any("not recognised" in n for n in r["notes"])
    assert set(obs) - {"data.shuffle"} <= recipe_keys()


@pytest.mark.parametrize("tv", [T, v2], ids=["v1", "v2"])
def test_val_pipeline_crop_pct(tv):
    r = describe_data(val=deit_val(tv))
    assert r["observed"] == {"data.eval_crop_pct": 0.875}
    assert r["details"]["val_interpolation"] == "bicubic"
    assert r["details"]["eval_img_size"] == 224
    assert r["details"]["val_mean"] == [0.485, 0.456, 0.406]


def test_val_crop_only_and_resize_to_crop():
    # a CenterCrop alone: the resize happened before the pipeline (a cache) or never; the ratio was not shown
    crop_only = describe_data(val=T.CenterCrop(32))
    assert "data.eval_crop_pct" not in crop_only["observed"] and crop_only["details"]["eval_img_size"] == 32
    both = describe_data(val=T.Compose([T.Resize(224), T.CenterCrop(224)]))
    assert both["observed"]["data.eval_crop_pct"] == 1.0
    assert describe_data(val=T.Resize((64, 64)))["observed"]["data.eval_crop_pct"] == 1.0


def test_train_and_val_together_note_differences():
    train = T.Compose([T.RandomResizedCrop(192, interpolation=BICUBIC), T.ToTensor()])
    r = describe_data(train=train, val=T.Compose([T.Resize(256), T.CenterCrop(224)]))
    assert r["observed"]["data.img_size"] == 192 and r["observed"]["data.eval_crop_pct"] == 0.875
    assert any("evaluation at 224 px, training at 192 px" in n for n in r["notes"])
    assert any("interpolation is bilinear" in n for n in r["notes"])


def test_cifar_pipeline():
    r = describe_data(train=T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()]))
    obs = r["observed"]
    assert obs["data.img_size"] == 32 and obs["aug.crop_pad"] == 4 and obs["aug.rrc_scale_min"] == 0.0
    assert obs["aug.hflip"] == 0.5
    assert obs["aug.randaug_n"] == 0 and obs["aug.random_erasing"] == 0.0 and obs["aug.color_jitter"] == 0.0
    assert "aug.interpolation" not in obs
    assert r["details"]["crop_padding_mode"] == "constant"
    # v2 stores the padding as four values
    assert describe_data(train=v2.RandomCrop(32, padding=4))["observed"]["aug.crop_pad"] == 4


def test_absent_flip_is_zero_only_when_train_seen():
    assert describe_data(train=T.Compose([T.RandomCrop(32, padding=2)]))["observed"]["aug.hflip"] == 0.0
    assert "aug.hflip" not in describe_data(val=deit_val())["observed"]
    assert describe_data()["observed"] == {}


def test_nested_containers_fold_probabilities():
    train = v2.Compose([v2.RandomResizedCrop(64),
                        v2.RandomApply([v2.RandomHorizontalFlip(p=1.0)], p=0.5),
                        v2.RandomChoice([v2.RandomErasing(p=1.0), v2.Identity()], p=[1, 3]),
                        T.Compose([T.RandomApply([T.ColorJitter(0.3, 0.3, 0.3)], p=0.8)])])
    r = describe_data(train=train)
    obs = r["observed"]
    assert obs["aug.hflip"] == 0.5
    assert obs["aug.random_erasing"] == 0.25
    assert obs["aug.color_jitter"] == pytest.approx(0.3)
    assert any("ColorJitter is applied with probability 0.8" in n for n in r["notes"])
    assert "RandomHorizontalFlip[p=0.5]" in r["details"]["train_transforms"]


def test_unequal_color_jitter_and_auto_augment_variants():
    r = describe_data(train=T.Compose([T.ColorJitter(0.4, 0.2), T.TrivialAugmentWide()]))
    assert "aug.color_jitter" not in r["observed"]
    assert r["details"]["color_jitter"] == (0.4, 0.2, 0.0, 0.0)
    assert r["details"]["auto_augment"] == "trivialaugment"
    assert "aug.randaug_n" not in r["observed"]
    assert any("describe RandAugment" in n for n in r["notes"])
    assert describe_data(train=T.AutoAugment())["details"]["auto_augment"] == "autoaugment-imagenet"


def test_unknown_transforms_are_notes_not_errors():
    r = describe_data(train=T.Compose([T.RandomHorizontalFlip(), MyAug(), T.Lambda(lambda x: x)]),
                      val=T.Compose([T.RandomHorizontalFlip(), T.Resize(36), T.CenterCrop(32), MyAug()]))
    notes = "\n".join(r["notes"])
    assert "train transform MyAug not recognised: its effect is not observed" in notes
    assert "train transform Lambda(<lambda>) not recognised" in notes
    assert "val transform MyAug not recognised" in notes
    assert "val transform RandomHorizontalFlip is a random augmentation" in notes
    assert r["observed"]["aug.hflip"] == 0.5
    assert r["observed"]["data.eval_crop_pct"] == pytest.approx(32 / 36, abs=1e-6)
    # objects that are no pipeline at all, and a transform with missing attributes
    broken = T.RandomHorizontalFlip()
    del broken.p
    r = describe_data(train=42, val=broken, mixup=object())
    assert r["observed"] == {}
    assert any("neither a DataLoader" in n for n in r["notes"])
    assert any("mixup object not recognised" in n for n in r["notes"])


def test_subclass_reads_as_parent_lookalike_does_not():
    class MyFlip(T.RandomHorizontalFlip):
        pass

    class RandomHorizontalFlip:  # same name, not torchvision's (e.g. another library)
        p = 0.9

        def __call__(self, x):
            return x

    assert describe_data(train=MyFlip(p=0.3))["observed"]["aug.hflip"] == 0.3
    r = describe_data(train=RandomHorizontalFlip())
    assert r["observed"]["aug.hflip"] == 0.0
    assert any("RandomHorizontalFlip not recognised" in n for n in r["notes"])


def test_dataset_given_directly():
    r = describe_data(train=FolderLike(T.Compose([T.RandomResizedCrop(96), T.RandomHorizontalFlip(0.3)])),
                      val=FolderLike(deit_val()))
    obs = r["observed"]
    assert obs["data.img_size"] == 96 and obs["aug.hflip"] == 0.3 and obs["data.eval_crop_pct"] == 0.875
    assert obs["aug.interpolation"] == "bilinear"
    # a Subset of it, and a dataset without transforms
    sub = torch.utils.data.Subset(FolderLike(T.RandomHorizontalFlip()), [0, 1])
    assert describe_data(train=sub)["observed"]["aug.hflip"] == 0.5
    r = describe_data(train=FolderLike(None))
    assert r["observed"] == {} and any("has no transform" in n for n in r["notes"])


def test_torchvision_dataset_class():
    datasets = pytest.importorskip("torchvision.datasets")
    ds = datasets.FakeData(size=2, image_size=(3, 40, 40), transform=T.Compose([T.RandomCrop(32, padding=4)]))
    assert describe_data(train=ds)["observed"]["aug.crop_pad"] == 4


def test_dataloader_shuffle_and_drop_last():
    r = describe_data(train=tiny_loader(shuffle=True, drop_last=True), val=tiny_loader(shuffle=False))
    obs, d = r["observed"], r["details"]
    assert obs["data.batch_size"] == 4 and obs["data.eval_batch_size"] == 4
    assert obs["data.shuffle"] is True and d["shuffle"] is True and d["drop_last"] is True
    assert d["val_shuffle"] is False and d["val_drop_last"] is False
    assert any("TensorDataset has no transform" in n for n in r["notes"])
    assert "aug.hflip" not in obs and "aug.mixup_alpha" not in obs  # no transform pipeline seen
    r = describe_data(train=tiny_loader(shuffle=False))
    assert r["observed"]["data.shuffle"] is False and r["details"]["drop_last"] is False


def test_dataloader_samplers():
    ds = TensorDataset(torch.zeros(8, 3))
    dist = DataLoader(ds, batch_size=2, sampler=DistributedSampler(ds, num_replicas=4, rank=0, shuffle=True))
    r = describe_data(train=dist)
    assert r["observed"]["data.shuffle"] is True and r["details"]["world_size"] == 4
    assert any("global batch is 8" in n for n in r["notes"])

    class MySampler(torch.utils.data.Sampler):
        def __iter__(self):
            return iter(range(8))

        def __len__(self):
            return 8

    r = describe_data(train=DataLoader(ds, batch_size=2, sampler=MySampler()))
    assert "data.shuffle" not in r["observed"] and "shuffle" not in r["details"]
    assert any("sampler MySampler not recognised" in n for n in r["notes"])
    batched = DataLoader(ds, batch_sampler=torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(ds), 3, True))
    r = describe_data(train=batched)
    assert r["observed"]["data.batch_size"] == 3 and r["observed"]["data.shuffle"] is True
    assert r["details"]["drop_last"] is True


def test_loader_with_transform_dataset_and_custom_collate():
    loader = DataLoader(FolderLike(T.RandomHorizontalFlip()), batch_size=2, shuffle=True)
    r = describe_data(train=loader)
    assert r["observed"]["aug.hflip"] == 0.5 and r["observed"]["aug.mixup_alpha"] == 0.0
    custom = DataLoader(FolderLike(T.RandomHorizontalFlip()), batch_size=2, collate_fn=lambda b: b)
    r = describe_data(train=custom)
    assert "aug.mixup_alpha" not in r["observed"]  # the unknown collate_fn could mix
    assert any("collate_fn <lambda> not recognised" in n for n in r["notes"])


def test_torchvision_v2_mixup_cutmix():
    mix, cut = v2.MixUp(alpha=0.8, num_classes=10), v2.CutMix(alpha=1.0, num_classes=10)
    obs = describe_data(mixup=v2.RandomChoice([mix, cut]))["observed"]
    assert obs == {"aug.mixup_alpha": 0.8, "aug.cutmix_alpha": 1.0, "aug.mix_prob": 1.0,
                   "aug.mix_switch_prob": 0.5}
    obs = describe_data(mixup=v2.RandomApply([v2.RandomChoice([mix, cut], p=[0.25, 0.75])], p=0.8))["observed"]
    assert obs["aug.mix_prob"] == pytest.approx(0.8) and obs["aug.mix_switch_prob"] == pytest.approx(0.75)
    obs = describe_data(mixup=cut)["observed"]
    assert obs == {"aug.mixup_alpha": 0.0, "aug.cutmix_alpha": 1.0, "aug.mix_prob": 1.0}
    assert "reg.label_smoothing" not in obs


# ----------------------------------------------------------------------------- timm

def test_timm_train_transform():
    timm_data = pytest.importorskip("timm.data")
    t = timm_data.create_transform(224, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25,
                                   interpolation="bicubic")
    r = describe_data(train=t)
    obs = r["observed"]
    assert obs["data.img_size"] == 224 and obs["aug.rrc_scale_min"] == pytest.approx(0.08)
    assert obs["aug.interpolation"] == "bicubic" and obs["aug.hflip"] == 0.5
    assert (obs["aug.randaug_n"], obs["aug.randaug_m"], obs["aug.randaug_mstd"]) == (2, 9.0, 0.5)
    assert obs["aug.random_erasing"] == 0.25
    assert obs["aug.color_jitter"] == 0.0  # timm drops colour jitter when auto_augment is on
    d = r["details"]
    assert d["auto_augment"] == "randaugment-timm" and d["randaug_increasing"] is True
    assert d["sources"]["aug.random_erasing"] == "RandomErasing"
    assert d["mean"] == [0.485, 0.456, 0.406]
    assert not any("not recognised" in n for n in r["notes"])


def test_timm_eval_transform_and_random_interpolation():
    timm_data = pytest.importorskip("timm.data")
    r = describe_data(val=timm_data.create_transform(224, is_training=False, interpolation="bicubic"))
    assert r["observed"]["data.eval_crop_pct"] == 0.875 and r["details"]["val_interpolation"] == "bicubic"
    r = describe_data(val=timm_data.create_transform(224, is_training=False, crop_pct=0.9, crop_mode="border"))
    assert r["observed"]["data.eval_crop_pct"] == pytest.approx(224 / 248)
    t = timm_data.create_transform(160, is_training=True, interpolation="random", auto_augment="original")
    r = describe_data(train=t)
    assert r["observed"]["aug.interpolation"] == "random"
    assert r["details"]["auto_augment"] == "autoaugment-timm" and "aug.randaug_n" not in r["observed"]


def test_timm_mixup_and_fast_collate():
    timm_data = pytest.importorskip("timm.data")
    m = timm_data.Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
    r = describe_data(mixup=m)
    assert r["observed"] == {"aug.mixup_alpha": 0.8, "aug.cutmix_alpha": 1.0, "aug.mix_prob": 1.0,
                             "aug.mix_switch_prob": 0.5, "reg.label_smoothing": 0.1}
    assert r["details"]["mixup_num_classes"] == 10 and r["details"]["mixup_mode"] == "batch"
    collate = timm_data.FastCollateMixup(mixup_alpha=0.2, cutmix_alpha=0.0, prob=0.5, label_smoothing=0.0,
                                         num_classes=10)
    loader = DataLoader(FolderLike(T.RandomHorizontalFlip()), batch_size=2, collate_fn=collate)
    obs = describe_data(train=loader)["observed"]
    assert obs["aug.mixup_alpha"] == 0.2 and obs["aug.cutmix_alpha"] == 0.0 and obs["aug.mix_prob"] == 0.5
    assert obs["reg.label_smoothing"] == 0.0


def test_timm_prefetch_loader():
    timm_loader = pytest.importorskip("timm.data.loader")
    timm_data = pytest.importorskip("timm.data")
    t = timm_data.create_transform(64, is_training=True, use_prefetcher=True)
    pre = timm_loader.PrefetchLoader(DataLoader(FolderLike(t), batch_size=2, shuffle=True),
                                     device=torch.device("cpu"), re_prob=0.3)
    r = describe_data(train=pre)
    obs = r["observed"]
    assert obs["data.img_size"] == 64 and obs["data.batch_size"] == 2 and obs["data.shuffle"] is True
    assert obs["aug.random_erasing"] == 0.3
    assert r["details"]["mean"] == [0.485, 0.456, 0.406]
