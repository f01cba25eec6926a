"""`reproscope models`: one row per registered model, our numbers beside the paper's."""

from __future__ import annotations

from ..model import list_models, model_info
from ..model.counting import build_for_counting, count_flops, count_params


def model_rows(flops: bool = True) -> list[dict]:
    from tqdm.auto import tqdm
    rows = []
    for name in tqdm(list_models(), desc="counting", leave=False, disable=not flops):
        info = model_info(name)
        model = info.fn() if flops else build_for_counting(info.fn)
        row = {"name": name, "paper": info.paper, "params_m": count_params(model) / 1e6,
               "paper_params_m": info.paper_params_m, "paper_top1": info.paper_top1,
               "img_size": info.default_img_size}
        row["gflops"] = count_flops(model, info.default_img_size) / 1e9 if flops else None
        rows.append(row)
    return rows


def print_models_table(flops: bool = True) -> None:
    rows = model_rows(flops)
    print(f"{'model':<19} {'params (paper)':<19} {'GFLOPs':>7} {'GMACs':>7} {'px':>4} {'IN-1k top-1':>11}  paper")
    for r in rows:
        pp = f"({r['paper_params_m']:.1f}M)" if r["paper_params_m"] else "(-)"
        gf = f"{r['gflops']:.2f}" if r["gflops"] is not None else "-"
        gm = f"{r['gflops'] / 2:.2f}" if r["gflops"] is not None else "-"
        t1 = f"{r['paper_top1']:.1f}" if r["paper_top1"] else "-"
        print(f"{r['name']:<19} {r['params_m']:>7.2f}M {pp:<10} {gf:>7} {gm:>7} {r['img_size']:>4} {t1:>11}  {r['paper']}")
    print("GFLOPs: forward pass of one image at the default resolution, torch.utils.flop_counter "
          "(one multiply-add = 2 FLOPs; papers' 'FLOPs' columns are usually MACs). The counter "
          "sees matmuls and convolutions only, so KAT's rational functions are not counted.")
