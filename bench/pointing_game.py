"""Pointing game of medvlp's heatmaps on held-out images of the synthetic pathology demo corpus.

For every held-out demo image that shows a secondary class in an elliptical region, the heatmap of
that class's label is computed and counted as a hit when its peak falls inside the region the
generator drew (the mask). Chance is the mean area fraction of the region (a uniformly random peak).
Both heatmap sources are measured: the concept head and patch-text similarity.

Usage:
    python bench/pointing_game.py --run RUN_DIR [--n-per-class 30] [--out bench/results/explain.md]
    python bench/pointing_game.py --train --steps 60 --n-per-class 30   # trains the run first
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import RESULTS_DIR, command_line, machine, pathology_tiles, train_run, write_text
from PIL import Image


def pointing_game(model, manifest: Path, sources: list[str], split: str | None = "test") -> dict[str, dict[str, float]]:
    """Hit rate per source, chance (mean region fraction) and the number of images (rows of ``split``)."""
    import pandas as pd

    from medvlp.explain import heatmaps_from_pixels, pointing_hit

    root = manifest.parent
    df = pd.read_csv(manifest)
    df = df[df["split"] == split] if split and "split" in df.columns else df
    classes = json.loads((root / "classes.json").read_text())
    name_of = {c["index"]: c["name"] for c in classes}
    card = model.card
    hits = {s: 0 for s in sources}
    fractions = []
    n = 0
    for _, row in df.iterrows():
        mask = np.asarray(Image.open(root / row["mask"]))
        values = [v for v in np.unique(mask) if v != 0]
        primary = int(np.bincount(mask.reshape(-1)).argmax())
        secondary = [v for v in values if v != primary]
        if not secondary:
            continue
        sec = int(secondary[0])
        region = mask == sec
        label = name_of[sec]
        lab = card.find_label(label)
        names = [list(lab.names) if lab else [label]]
        x = model.normalize(model.pixels(str(root / row["image"]))[None].to(model.device))
        for s in sources:
            maps, _ = heatmaps_from_pixels(model.net, x, names, list(card.prompts.templates), source=s)
            hits[s] += pointing_hit(maps[0, 0], region)
        fractions.append(float(region.mean()))
        n += 1
    out = {s: {"hit_rate": hits[s] / max(n, 1)} for s in sources}
    out["chance"] = {"hit_rate": float(np.mean(fractions)) if fractions else float("nan")}
    out["n"] = {"images": n}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="trained run folder (default: train one with --train)")
    ap.add_argument("--train", action="store_true", help="train a tiny siglip+concept run on the demo first")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n-per-class", type=int, default=30)
    ap.add_argument("--heldout-seed", type=int, default=None,
                    help="measure on a fresh demo corpus drawn with this seed (all its rows; never trained on) "
                         "instead of the test split of the training corpus")
    ap.add_argument("--heldout-n-per-class", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("/tmp/medvlp-pointing"))
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "explain.md")
    args = ap.parse_args(argv)

    import medvlp

    manifest = pathology_tiles(args.work / f"demo{args.n_per_class}", n_per_class=args.n_per_class)
    run = args.run
    t0 = time.time()
    if run is None or args.train:
        run = run or args.work / "run"
        train_run("pathology", manifest, run, objective="siglip+concept", steps=args.steps,
                  batch_size=args.batch_size, seed=0)
    train_s = time.time() - t0
    model = medvlp.load(run)
    sources = ["concept_head", "patch_text"] if model.net.concept_head is not None else ["patch_text"]
    t1 = time.time()
    if args.heldout_seed is not None:
        eval_manifest = pathology_tiles(args.work / f"heldout-s{args.heldout_seed}-{args.heldout_n_per_class}",
                                        n_per_class=args.heldout_n_per_class, seed=args.heldout_seed)
        res = pointing_game(model, eval_manifest, sources, split=None)
        where = f"a fresh demo corpus (seed {args.heldout_seed}, {args.heldout_n_per_class} per class, all rows)"
    else:
        res = pointing_game(model, manifest, sources)
        where = f"the test split of the training corpus (demo n_per_class {args.n_per_class})"
    eval_s = time.time() - t1
    cmd = command_line(__file__, argv)
    lines = [
        "## Explanations: pointing game on the synthetic pathology demo",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine()}, shared with other jobs  ",
        f"Model: `tiny`, objective `siglip+concept`, run `{run}` ({train_s:.0f} s training)  ",
        f"Held-out images with a secondary-class region: {res['n']['images']}, from {where}; "
        f"{eval_s:.1f} s for all heatmaps",
        "",
        "A hit: the heatmap of the secondary class's label peaks inside the ellipse the generator drew.",
        "Chance: the mean area fraction of the ellipse (a uniformly random peak).",
        "",
        "| heatmap source | pointing-game hit rate |",
        "|---|---|",
    ]
    for s in sources:
        lines.append(f"| {s.replace('_', ' ')} | {res[s]['hit_rate']:.3f} |")
    lines.append(f"| chance (region area fraction) | {res['chance']['hit_rate']:.3f} |")
    text = "\n".join(lines) + "\n"
    write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
