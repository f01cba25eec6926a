"""The panel of correct models that the checks must not fail: 36 small variants of widely used
torchvision and timm models, split once into a tuning half and a held-back half.

The checks' thresholds were tuned on ``TUNING`` only; ``HELD_BACK`` was run after the checks were
final, and the README's false-alarm table reports both halves (``benchmarks/check_panel.py``
prints it; ``tests/test_panel.py`` asserts 0 FAIL and 0 raised on each model). No pretrained
weights: every model is built from its constructor, as a user's re-implementation starts.
"""

from __future__ import annotations

import random
from typing import Callable

from torch import nn

# (family, library, name, extra constructor arguments): small variants of correct, widely used models
PANEL_MODELS = [
    ("residual CNN", "torchvision", "resnet18", {}),
    ("non-residual CNN (channel shuffle)", "torchvision", "shufflenet_v2_x0_5", {}),
    ("non-residual CNN (fire modules)", "torchvision", "squeezenet1_1", {}),
    ("inverted residual", "torchvision", "mobilenet_v2", {}),
    ("inverted residual (NAS)", "torchvision", "mnasnet0_5", {}),
    ("SE net (RegNetY)", "torchvision", "regnet_y_400mf", {}),
    ("residual CNN (RegNetX)", "torchvision", "regnet_x_400mf", {}),
    ("one-shot concatenation (VoVNet + eSE)", "timm", "ese_vovnet19b_slim_dw", {}),
    ("ConvNeXt (layer scale 1e-6)", "torchvision", "convnext_tiny", {}),
    ("inverted residual + SE", "torchvision", "mobilenet_v3_large", {}),
    ("inception (non-residual)", "torchvision", "googlenet", {"aux_logits": False, "init_weights": True}),
    ("SE ResNet", "timm", "legacy_seresnet18", {}),
    ("ConvNeXt", "timm", "convnext_femto", {}),
    ("ViT", "timm", "vit_tiny_patch16_224", {"img_size": 32}),
    ("metaformer (pooling)", "timm", "poolformer_s12", {}),
    ("metaformer hybrid (conv + attention)", "timm", "caformer_s18", {}),
    ("MLP-Mixer", "timm", "mixer_s16_224", {"img_size": 32}),
    ("MLP (ResMLP)", "timm", "resmlp_12_224", {"img_size": 32}),
    ("MLP (gMLP)", "timm", "gmlp_ti16_224", {"img_size": 32}),
    ("hybrid (MobileViT, concat fusion)", "timm", "mobilevit_xxs", {}),
    ("hybrid (EdgeNeXt, conv + XCA)", "timm", "edgenext_xx_small", {}),
    ("re-parameterisable VGG", "timm", "repvgg_a0", {}),
    ("ghost modules + SE", "timm", "ghostnet_050", {}),
    ("non-residual mobile (LCNet)", "timm", "lcnet_050", {}),
    ("partial residual (ReXNet)", "timm", "rexnet_100", {}),
    ("normaliser-free (NF-RegNet)", "timm", "nf_regnet_b0", {}),
    ("re-parameterisable mobile (MobileOne)", "timm", "mobileone_s0", {}),
    ("ViT (XCiT, cross-covariance)", "timm", "xcit_nano_12_p16_224", {"img_size": 32}),
    ("hybrid ViT (ConViT, gated positional attention)", "timm", "convit_tiny", {"img_size": 32}),
    ("hybrid (TinyViT, conv + window attention)", "timm", "tiny_vit_5m_224", {}),  # runs at any size
    ("pyramid ViT (PVTv2)", "timm", "pvt_v2_b0", {}),  # runs at any size
    ("hybrid (FastViT, RepMixer + attention)", "timm", "fastvit_sa12", {}),
    ("deep layer aggregation", "timm", "dla46_c", {}),
    ("MobileNetV4 (universal inverted bottleneck)", "timm", "mobilenetv4_conv_small", {}),
    ("metaformer (inception depthwise)", "timm", "inception_next_atto", {}),
    ("hybrid (CoAtNet, MBConv + attention)", "timm", "coatnet_nano_rw_224", {"img_size": 32}),
]

SPLIT_SEED = 34  # fixed before any check was run on the panel
_order = list(range(len(PANEL_MODELS)))
random.Random(SPLIT_SEED).shuffle(_order)
TUNING = [PANEL_MODELS[i] for i in _order[: len(_order) // 2]]
HELD_BACK = [PANEL_MODELS[i] for i in _order[len(_order) // 2:]]
HALVES = {"tuning": TUNING, "held-back": HELD_BACK}


def build(entry, num_classes: int = 10) -> Callable[[], nn.Module]:
    """A zero-argument factory for a panel entry (no pretrained weights). Imports torchvision or timm
    when called; raises ImportError when the library is missing."""
    _, lib, name, kw = entry

    def make() -> nn.Module:
        if lib == "torchvision":
            import torchvision
            return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kw)
        import timm
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kw)
    return make


def build_at(entry, num_classes: int = 10) -> Callable[[], nn.Module]:
    """``build(entry)`` that grad-flow may rebuild for a larger input (``make_model.at_size(px)``), as
    `diagnose --model` does: the ``img_size`` argument of the models that take one."""
    make = build(entry, num_classes)
    family, lib, name, kw = entry
    if "img_size" in kw:
        make.at_size = lambda px: build((family, lib, name, {**kw, "img_size": px}), num_classes)
    return make


def spec_of(entry) -> str:
    """The `--model` spec that builds ``entry`` from the CLI (``torchvision.models:NAME`` / ``timm:NAME``)."""
    _, lib, name, _ = entry
    return f"torchvision.models:{name}" if lib == "torchvision" else f"timm:{name}"
