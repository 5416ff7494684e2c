"""Does concept guidance help? clip vs siglip vs siglip+concept vs keep, same model, data, steps and seed.

Datasets:
  pathology  the synthetic tile demo (6 tissue classes; half the images show a second class in an ellipse,
             named in the caption). Training leaves out the (primary, secondary) pairs (c, c+1 mod 6), so
             the held-out rows with those pairs are unseen concept combinations.
  derm       the synthetic dermoscopy demo (7 HAM10000 diagnoses; captions name several clinical concepts,
             body site and skin tone).
  pneumonia  PneumoniaMNIST train -> val from ../shared/data (skipped when absent).
Reported: held-out zero-shot balanced accuracy and macro AUROC with bootstrap 95% CIs; on pathology also
balanced accuracy on the unseen combinations and the pointing game of the secondary class's heatmap
(concept head where the model has one, else patch-text similarity); seconds per training step.

    python bench/objectives_ablation.py [--steps 120] [--batch-size 64] [--datasets pathology,derm,pneumonia]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from _common import (
    RESULTS_DIR,
    SHARED_DATA,
    ci,
    command_line,
    machine,
    metrics_records,
    pathology_tiles,
    sibling,
    train_run,
    write_text,
)

OBJECTIVES = ["clip", "siglip", "siglip+concept", "keep"]


def pathology_data(work: Path) -> tuple[Path, Path, Path]:
    """(train manifest without the held-out pairs, test manifest, the corpus manifest for masks)."""
    corpus = pathology_tiles(work / "path-corpus", n_per_class=200)
    df = pd.read_csv(corpus)
    classes = [c["concept"] for c in json.loads((corpus.parent / "classes.json").read_text())]
    held = {(classes[i], classes[(i + 1) % len(classes)]) for i in range(len(classes))}

    def pair(cell: str) -> tuple[str, str] | None:
        ids = json.loads(cell)
        return (ids[0], ids[1]) if len(ids) > 1 else None

    df["_pair"] = df["concepts"].map(pair)
    unseen = df["_pair"].map(lambda p: p in held)
    train = df[(df.split == "train") & ~unseen].drop(columns="_pair")
    test = df[df.split == "test"].copy()
    test["combination"] = ["unseen" if u else "seen" for u in unseen[df.split == "test"]]
    test = test.drop(columns="_pair")
    tr, te = corpus.parent / "ablation_train.csv", corpus.parent / "ablation_test.csv"
    train.to_csv(tr, index=False)
    test.to_csv(te, index=False)
    return tr, te, corpus


def derm_data(work: Path) -> tuple[Path, Path]:
    from medvlp.data.synthetic import demo_manifest

    corpus = demo_manifest("dermatology", seed=0, out_dir=work / "derm-corpus", progress=False)
    df = pd.read_csv(corpus)
    tr, te = corpus.parent / "ablation_train.csv", corpus.parent / "ablation_test.csv"
    df[df.split == "train"].to_csv(tr, index=False)
    df[df.split == "test"].to_csv(te, index=False)
    return tr, te


def pneumonia_data(work: Path) -> tuple[Path, Path] | None:
    npz = SHARED_DATA / "datasets" / "pneumoniamnist_trainval.npz"
    if not npz.is_file():
        return None
    from medvlp.data.importers import import_medmnist
    from medvlp.domains import load_card

    out = work / "pneumonia"
    if not (out / "val.csv").is_file():
        import_medmnist(npz, card=load_card("cxr"), out_dir=out, progress=False)
    return out / "train.csv", out / "val.csv"


def train_and_eval(domain: str, train: Path, test: Path, objective: str, args, out: Path) -> dict:
    import medvlp
    from medvlp.data.manifest import read_manifest
    from medvlp.eval.zeroshot import evaluate_manifest

    t0 = time.time()
    run = train_run(domain, train, out, objective=objective, steps=args.steps, batch_size=args.batch_size,
                    seed=args.seed, log_every=10)
    wall = time.time() - t0
    recs = metrics_records(out)
    step_s = args.batch_size / max(1e-9, sum(r["samples_per_s"] for r in recs[1:]) / max(1, len(recs) - 1))
    model = medvlp.load(run.out)
    m = read_manifest(test)
    metrics = evaluate_manifest(model.net, m, card=domain, n_boot=500, seed=0, prompt_subsets=0)
    row = {"balanced_accuracy": metrics["balanced_accuracy"], "auroc": metrics["auroc"], "n": metrics["n"],
           "train_s": round(wall, 1), "s_per_step": round(step_s, 3), "model": model}
    if "combination" in m.columns:
        unseen = m.subset([i for i, v in enumerate(m.column("combination")) if v == "unseen"])
        row["unseen_combination_bacc"] = evaluate_manifest(model.net, unseen, card=domain, n_boot=500, seed=0,
                                                           prompt_subsets=0)["balanced_accuracy"]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--datasets", default="pathology,derm,pneumonia")
    ap.add_argument("--work", type=Path, default=Path("/tmp/medvlp-ablation"))
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "objectives_ablation.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    wanted = args.datasets.split(",")
    rows: list[tuple[str, str, dict]] = []
    pointing = sibling("pointing_game").pointing_game
    if "pathology" in wanted:
        tr, te, corpus = pathology_data(args.work)
        for obj in OBJECTIVES:
            r = train_and_eval("pathology", tr, te, obj, args, args.work / f"path-{obj}")
            sources = ["concept_head"] if r["model"].net.concept_head is not None else ["patch_text"]
            pg = pointing(r["model"], corpus, sources, split="test")
            r["pointing"] = (sources[0], pg[sources[0]]["hit_rate"], pg["chance"]["hit_rate"], pg["n"]["images"])
            rows.append(("pathology demo", obj, r))
            print(f"pathology {obj}: {ci(r['balanced_accuracy'])}", flush=True)
    if "derm" in wanted:
        tr, te = derm_data(args.work)
        for obj in OBJECTIVES:
            r = train_and_eval("dermatology", tr, te, obj, args, args.work / f"derm-{obj}")
            rows.append(("dermatology demo", obj, r))
            print(f"derm {obj}: {ci(r['balanced_accuracy'])}", flush=True)
    if "pneumonia" in wanted:
        data = pneumonia_data(args.work)
        if data is None:
            print("PneumoniaMNIST not found under ../shared/data: skipped")
        else:
            for obj in OBJECTIVES:
                r = train_and_eval("cxr", data[0], data[1], obj, args, args.work / f"pneu-{obj}")
                rows.append(("PneumoniaMNIST val", obj, r))
                print(f"pneumonia {obj}: {ci(r['auroc'])}", flush=True)

    cmd = command_line(__file__, argv)
    lines = ["## Objectives ablation: clip vs siglip vs siglip+concept vs keep", "",
             f"Command: `{cmd}`  ",
             f"Machine: {machine()}  ",
             f"Model `tiny`, {args.steps} steps x batch {args.batch_size}, seed {args.seed}, same data and order "
             "for every objective; bootstrap 95% CIs (500 resamples).", "",
             "| data | objective | held-out balanced acc. | macro AUROC | unseen combinations bal. acc. | "
             "pointing game (source; chance) | s/step |",
             "|---|---|---|---|---|---|---|"]
    for data, obj, r in rows:
        unseen = ci(r["unseen_combination_bacc"]) if "unseen_combination_bacc" in r else "-"
        if "pointing" in r:
            src, hit, chance, n = r["pointing"]
            pg = f"{hit:.3f} ({src.replace('_', ' ')}; {chance:.3f}, n={n})"
        else:
            pg = "-"
        lines.append(f"| {data} | {obj} | {ci(r['balanced_accuracy'])} | {ci(r['auroc'])} | {unseen} | {pg} | "
                     f"{r['s_per_step']:.2f} |")
    text = "\n".join(lines) + "\n"
    write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
