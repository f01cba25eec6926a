"""A small copy of an image-folder dataset for the GPU machine (docs/gpu.md): shorter side resized to
``--size`` px, centre-cropped square, JPEG at ``--quality``; class folders and file names kept.

    python benchmarks/travel_copy.py ../shared/datasets/imagenette .travel/imagenette --size 146

146 px is the cache resolution of a 128 px run (128 / eval_crop_pct 0.875), so nothing is lost
against decoding the 224 px copy at that resolution. Prints the size written; over 55 MiB, split
it with ``../shared/tools/split-parts`` (one part per device call).
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps

EXT = {".jpg", ".jpeg", ".png", ".JPEG"}


def shrink(src: Path, dst: Path, size: int, quality: int) -> int:
    """Write ``src`` as a ``size`` x ``size`` JPEG at ``dst``; returns the bytes written."""
    with Image.open(src) as im:
        im = ImageOps.fit(im.convert("RGB"), (size, size), Image.BICUBIC)
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst, "JPEG", quality=quality)
    return dst.stat().st_size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dest")
    ap.add_argument("--size", type=int, default=146)
    ap.add_argument("--quality", type=int, default=90)
    args = ap.parse_args(argv)
    src, dest = Path(args.src), Path(args.dest)
    files = [p for p in sorted(src.rglob("*")) if p.is_file() and p.suffix in EXT]
    if not files:
        print(f"travel_copy: no images under {src}", file=sys.stderr)
        return 2
    with ThreadPoolExecutor() as pool:
        sizes = list(pool.map(lambda p: shrink(p, dest / p.relative_to(src).with_suffix(".jpg"), args.size,
                                              args.quality), files))
    mib = sum(sizes) / 2**20
    print(f"{len(files)} images -> {dest} ({mib:.1f} MiB){'; split it: over 55 MiB' if mib > 55 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
