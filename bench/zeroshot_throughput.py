"""Zero-shot throughput: ``medvlp zeroshot`` on a folder of PNGs vs a plain open_clip loop, and whole-slide
zero-shot of a synthetic 20000 x 20000 slide.

Images: writes N PNGs (default 1,000, 256 x 256 RGB noise textures) and saves an untrained ``tiny`` model
in open_clip's folder layout. Then, on the same images, model and labels (the pathology card's 9-class
label set, all synonyms x templates):

* ``medvlp zeroshot``: the real command (``medvlp.cli.main.main``) in this process, model loading and
  prompt embedding included, output to a JSON file;
* ``open_clip batch 1``: ``open_clip.create_model_and_transforms("local-dir:MODEL")`` (the same weights),
  then per image ``PIL.Image.open`` + open_clip's eval preprocess + ``encode_image`` + softmax against
  precomputed class embeddings -- the loop most scripts write;
* ``open_clip batched``: the same preprocessing, images stacked 64 at a time.

Slide: writes the tiling benchmark's synthetic slide (``bench/wsi_tiling.py``: 20000 x 20000 px at 0.25
µm/px, JPEG pyramid) and times :func:`medvlp.eval.slide.slide_zero_shot` (tissue tiling at the card's
0.5 µm/px x 256 px, tile embedding, top-K mean, heatmaps) cold, then warm (embeddings from the cache).

Usage::

    python bench/zeroshot_throughput.py                     # 1,000 images + the 20000 px slide
    python bench/zeroshot_throughput.py --n 200 --no-slide
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine, sibling


def write_images(folder: Path, n: int, side: int = 256) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = (rng.random((side * 2, side * 2, 3)) * 255).astype(np.uint8)
    paths = []
    for i in range(n):
        y, x = rng.integers(0, side, 2)
        p = folder / f"img{i:05d}.png"
        Image.fromarray(base[y:y + side, x:x + side]).save(p)
        paths.append(str(p))
    return paths


def bench_cli(model_dir: Path, paths: list[str], out: Path, batch_size: int) -> float:
    from medvlp.cli.main import main

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["zeroshot", "--model", str(model_dir), "--domain", "pathology", "--batch-size", str(batch_size),
                  "--json", str(out), *paths])
        except SystemExit as e:
            if e.code not in (0, None):
                raise RuntimeError(f"medvlp zeroshot exited {e.code}") from None
    return time.perf_counter() - t0


@torch.no_grad()
def bench_open_clip(model_dir: Path, paths: list[str], prompts: list[list[str]], batch: int) -> float:
    import open_clip
    from PIL import Image

    t0 = time.perf_counter()
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    model.eval()
    cls = []
    for ps in prompts:
        e = torch.nn.functional.normalize(model.encode_text(tokenizer(ps)), dim=-1).mean(0)
        cls.append(torch.nn.functional.normalize(e, dim=-1))
    weights = torch.stack(cls)
    scale = model.logit_scale.exp()
    for i in range(0, len(paths), batch):
        x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[i:i + batch]])
        f = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        (scale * f @ weights.T).softmax(-1)
    return time.perf_counter() - t0


def bench_slide(model_dir: Path, tmp: Path, side: int) -> dict[str, float]:
    import medvlp
    from medvlp.eval.slide import slide_zero_shot

    t0 = time.perf_counter()
    slide = sibling("wsi_tiling").write_slide(tmp / "slide.tif", side, 256)
    t_write = time.perf_counter() - t0
    m = medvlp.load(str(model_dir), domain="pathology")
    labels = m.card.label_set("nct_crc_he").names
    t0 = time.perf_counter()
    r = slide_zero_shot(m.net, [slide], labels, card=m.card, out_dir=tmp / "zs", k=10, batch_size=128)[0]
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    r2 = slide_zero_shot(m.net, [slide], labels, card=m.card, out_dir=tmp / "zs", k=10, batch_size=128)[0]
    warm = time.perf_counter() - t0
    assert r2.cache_hit and not r.cache_hit
    return {"write_s": t_write, "tiles": r.n_tiles, "cold_s": cold, "warm_s": warm}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="number of PNG images")
    ap.add_argument("--batch-size", type=int, default=64, help="batch size of medvlp and the batched loop")
    ap.add_argument("--side", type=int, default=20000, help="synthetic slide side (level-0 pixels)")
    ap.add_argument("--no-slide", action="store_true", help="skip the whole-slide part")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats per side")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from medvlp.domains import load_card
    from medvlp.eval.zeroshot import build_prompts
    from medvlp.models import create_model

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        model_dir = create_model("tiny", seed=0).save(tmp / "model", extra={"domain": "pathology"})
        paths = write_images(tmp / "images", args.n)
        card = load_card("pathology")
        labels = card.label_set().names
        prompts, _ = build_prompts(labels, card)
        print(f"{args.n} PNGs 256x256, tiny model (64 px), {len(labels)} labels, "
              f"{sum(len(p) for p in prompts.values())} prompts; {machine(torch_threads=True)}")
        # like for like: the same batch size on both sides, repeats alternating the order; batch 1 (the loop
        # most scripts write) is shown for reference only
        runs: dict[str, list[float]] = {"medvlp": [], "open_clip": []}
        for rep in range(args.repeats):
            order = ["medvlp", "open_clip"] if rep % 2 == 0 else ["open_clip", "medvlp"]
            for side in order:
                if side == "medvlp":
                    runs["medvlp"].append(bench_cli(model_dir, paths, tmp / "res.json", args.batch_size))
                else:
                    runs["open_clip"].append(bench_open_clip(model_dir, paths, [prompts[lab] for lab in labels],
                                                             args.batch_size))
        one = bench_open_clip(model_dir, paths[: max(50, args.n // 10)], [prompts[lab] for lab in labels], 1)
        print(f"| method (batch {args.batch_size}, {args.repeats} alternating repeats) | median s | images/s "
              "(min, max) |\n|---|---|---|")
        for name, key in (("medvlp zeroshot (CLI, in-process, incl. model load)", "medvlp"),
                          ("open_clip loop (incl. model load)", "open_clip")):
            ts = runs[key]
            print(f"| {name} | {statistics.median(ts):.2f} | {args.n / statistics.median(ts):.0f} "
                  f"({args.n / max(ts):.0f}, {args.n / min(ts):.0f}) |")
        print(f"| (reference) open_clip loop, batch 1, {max(50, args.n // 10)} images | {one:.2f} | "
              f"{max(50, args.n // 10) / one:.0f} |")
        print(f"ratio medvlp / open_clip (same batch): "
              f"{statistics.median(runs['open_clip']) / statistics.median(runs['medvlp']):.2f}")
        if not args.no_slide:
            s = bench_slide(model_dir, tmp, args.side)
            print(f"\nslide {args.side}x{args.side} (written in {s['write_s']:.1f} s): {s['tiles']} tissue tiles; "
                  f"cold {s['cold_s']:.1f} s ({s['tiles'] / s['cold_s']:.0f} tiles/s: tiling + embedding + "
                  f"heatmaps), warm {s['warm_s']:.1f} s (embeddings cached)")


if __name__ == "__main__":
    main()
