"""Which objective helps, beyond the seed spread? A like-for-like ablation over real and demo data.

Every objective trains the same model (the card's CPU default, ``tiny``) for the same steps on the same
batches: one uniform random sampler for all (KEEP runs with ``keep batching=uniform``, so it sees the
batches the others see; its group masks still apply inside them), the same seeds (model init, batch order
and augmentation are seeded), over 3 training seeds. Reported per objective: the mean +- sd over seeds of
each measure, beside the seed-0 bootstrap 95% CI, and how many negatives the objective's masks removed
per step (concept: same-concept pairs; keep: same-group and, counted apart, ontology-related groups).

Datasets (real data from ../shared/data; skipped with a note when absent):
  wbcatt     WBCAtt: captions from the 11 expert morphology attributes (never the cell type); two types
             (eosinophil, monocyte) left out of pretraining. Measures: seen-type balanced accuracy,
             unseen-type one-vs-rest AUROC (prompts mode, and concepts mode: the ontology's definitions).
             Neutrophils train as band/segmented subtypes, related in the ontology, so KEEP's hierarchy
             masking is active (its count is reported).
  pneumonia  PneumoniaMNIST train -> val; captions from the card's caption pool, prompts from the disjoint
             prompt pool (text-supervised: the class names are in the captions; prompt_overlap is 0).
  covid      covid_cxr_notes: free-text notes of 70% of the patients; on the other patients image->text
             R@5 and zero-shot COVID-19 vs other pneumonia AUROC.
  pathology  the tile demo (6 tissue classes; training leaves out the (primary, secondary) pairs
             (c, c+1 mod 6)): held-out balanced accuracy, balanced accuracy on the unseen combinations, and
             the pointing game of the secondary class from the SAME source for every objective
             (patch-text similarity), plus the concept head where a model has one.

The script writes its whole table (bench/results/objectives_ablation.md and its section of
bench/RESULTS.md); nothing is merged by hand.

    python bench/objectives_ablation.py [--steps 100] [--seeds 0,1,2] [--datasets wbcatt,pneumonia,covid,pathology]

Each finished dataset is kept as bench/results/objectives_ablation/<dataset>.json (settings, command,
machine, table); the markdown table is rendered from every dataset stored with the same settings, so
``--datasets pneumonia`` adds a dataset without dropping the others.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import pandas as pd
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
    write_section,
    write_text,
)

OBJECTIVES = ["clip", "siglip", "siglip+concept", "keep", "keep+concept", "softclip"]
WBC_ATTRS = ["cell_size", "cell_shape", "nucleus_shape", "nuclear_cytoplasmic_ratio", "chromatin_density",
             "cytoplasm_vacuole", "cytoplasm_texture", "cytoplasm_colour", "granule_type", "granule_colour",
             "granularity"]
LEFT_OUT = ["eosinophil", "monocyte"]
DATASETS = SHARED_DATA / "datasets"


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
def wbcatt_data(work: Path) -> dict[str, Any] | None:
    src = DATASETS / "wbcatt"
    if not (src / "train.csv").is_file():
        return None
    from medvlp.data.importers import import_table
    from medvlp.domains import load_card

    card = load_card("microscopy")
    out = work / "wbcatt"
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        dst = out / f"{split}.csv"
        if not dst.is_file():
            df = pd.read_csv(src / f"{split}.csv")
            df["image"] = [str((src / p).resolve()) for p in df["image"]]
            if split == "train":  # neutrophils as their subtypes: related groups for KEEP
                df["label"] = [s if lab == "neutrophil" else lab for lab, s in zip(df["label"], df["subtype"], strict=True)]
            df.to_csv(out / f"{split}_src.csv", index=False)
            import_table(out / f"{split}_src.csv", card=card, out_manifest=dst, image_col="image",
                         label_col="label", attribute_cols=WBC_ATTRS)
    train = pd.read_csv(out / "train.csv")
    train[~train["label"].isin(LEFT_OUT)].to_csv(out / "train_seen.csv", index=False)
    val = pd.read_csv(out / "val.csv")
    types = sorted(val["label"].unique())
    seen = [t for t in types if t not in LEFT_OUT]
    val[val["label"].isin(seen)].to_csv(out / "val_seen.csv", index=False)
    return {"domain": "microscopy", "train": out / "train_seen.csv", "val_seen": out / "val_seen.csv",
            "val_all": out / "val.csv", "seen": seen, "types": types}


def pneumonia_data(work: Path) -> dict[str, Any] | None:
    npz = DATASETS / "pneumoniamnist_trainval.npz"
    if not npz.is_file():
        return None
    from medvlp.data.importers import import_medmnist
    from medvlp.domains import load_card

    out = work / "pneumonia"
    if not (out / "val.csv").is_file():
        import_medmnist(npz, card=load_card("cxr"), out_dir=out, progress=False)
    return {"domain": "cxr", "train": out / "train.csv", "val": out / "val.csv"}


def covid_data(work: Path) -> dict[str, Any] | None:
    table = DATASETS / "covid_cxr_notes" / "notes.csv"
    if not table.is_file():
        return None
    from medvlp.data.importers import import_table
    from medvlp.domains import load_card

    out = work / "covid"
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "val_findings.csv").is_file():
        notes = pd.read_csv(table)
        patients = sorted(notes["patient"].astype(str).unique())
        random.Random(0).shuffle(patients)
        held = set(patients[: int(0.3 * len(patients))])
        notes["split"] = ["val" if str(p) in held else "train" for p in notes["patient"]]
        notes["image"] = [str((table.parent / i).resolve()) for i in notes["image"]]
        notes.to_csv(out / "split.csv", index=False)
        import_table(out / "split.csv", card=load_card("cxr"), out_manifest=out / "all.csv", image_col="image",
                     text_col="report", label_col="finding", group_col="patient", split_col="split")
        m = pd.read_csv(out / "all.csv")
        m[m["split"] == "train"].to_csv(out / "train.csv", index=False)
        val = m[m["split"] == "val"]
        val.to_csv(out / "val.csv", index=False)
        finding = dict(zip(notes["image"].map(lambda p: Path(p).name), notes["finding"], strict=False))
        val = val.assign(label=[finding.get(Path(str(i)).name, "") for i in val["image"]])
        val = val[~val["label"].isin(["todo", "No Finding", ""]) & val["label"].notna()]
        val = val.assign(label=["covid-19 pneumonia" if "COVID-19" in str(f) else "other pneumonia"
                                for f in val["label"]])
        val.to_csv(out / "val_findings.csv", index=False)
    return {"domain": "cxr", "train": out / "train.csv", "val": out / "val.csv",
            "val_findings": out / "val_findings.csv"}


def pathology_data(work: Path) -> dict[str, Any]:
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
    return {"domain": "pathology", "train": tr, "test": te, "corpus": corpus}


# ------------------------------------------------------------------------------------------------
# Measures
# ------------------------------------------------------------------------------------------------
def _zs(model: Any, path: Path, domain: str, boot: int, **kw: Any) -> dict[str, Any]:
    from medvlp.data.manifest import read_manifest
    from medvlp.eval.zeroshot import evaluate_manifest

    return evaluate_manifest(model.net, read_manifest(path), card=domain, n_boot=boot, seed=0, prompt_subsets=0, **kw)


def _mean_unseen_auroc(report: dict[str, Any]) -> dict[str, Any] | None:
    per = report.get("per_class_auroc", {})
    vals = [per[u] for u in LEFT_OUT if isinstance(per.get(u), dict) and per[u].get("value") is not None]
    if not vals:
        return None
    return {"value": sum(v["value"] for v in vals) / len(vals),
            "ci_low": sum(v["ci_low"] for v in vals) / len(vals), "ci_high": sum(v["ci_high"] for v in vals) / len(vals)}


def measure(name: str, data: dict[str, Any], model: Any, boot: int) -> dict[str, dict | None]:
    """The dataset's measures (each a metric dict with value and CI) for one trained model."""
    if name == "wbcatt":
        seen = _zs(model, data["val_seen"], "microscopy", boot, labels=data["seen"], mode="both")
        every = _zs(model, data["val_all"], "microscopy", boot, labels=data["types"], mode="both")
        return {"seen bal. acc. (prompts)": seen["by_mode"]["prompts"]["balanced_accuracy"],
                "unseen AUROC (prompts)": _mean_unseen_auroc(every["by_mode"]["prompts"]),
                "seen bal. acc. (concepts)": seen["by_mode"]["concepts"]["balanced_accuracy"],
                "unseen AUROC (concepts)": _mean_unseen_auroc(every["by_mode"]["concepts"])}
    if name == "pneumonia":
        r = _zs(model, data["val"], "cxr", boot)
        return {"AUROC": r["auroc"], "bal. acc.": r["balanced_accuracy"]}
    if name == "covid":
        from medvlp.data.manifest import read_manifest
        from medvlp.eval.retrieval import evaluate_retrieval

        ret = evaluate_retrieval(model, read_manifest(data["val"]), n_boot=boot, seed=0)
        z = _zs(model, data["val_findings"], "cxr", boot, labels=["covid-19 pneumonia", "other pneumonia"])
        r5 = ret.get("image_to_text_R@5")
        return {"image->text R@5": r5, "covid-19 vs other AUROC": z["auroc"]}
    if name == "pathology":
        test = _zs(model, data["test"], "pathology", boot)
        from medvlp.data.manifest import read_manifest

        m = read_manifest(data["test"])
        unseen = m.subset([i for i, v in enumerate(m.column("combination")) if v == "unseen"])
        from medvlp.eval.zeroshot import evaluate_manifest

        u = evaluate_manifest(model.net, unseen, card="pathology", n_boot=boot, seed=0, prompt_subsets=0)
        sources = ["patch_text"] + (["concept_head"] if model.net.concept_head is not None else [])
        pg = sibling("pointing_game").pointing_game(model, data["corpus"], sources, split="test")
        out = {"bal. acc.": test["balanced_accuracy"], "unseen combinations bal. acc.": u["balanced_accuracy"],
               "pointing (patch-text)": {"value": pg["patch_text"]["hit_rate"]}}
        if "concept_head" in pg:
            out["pointing (concept head)"] = {"value": pg["concept_head"]["hit_rate"]}
        out["_chance"] = {"value": pg["chance"]["hit_rate"]}
        return out
    raise ValueError(name)


def _masks(run_dir: Path) -> str:
    recs = metrics_records(run_dir)
    parts = []
    for key, label in (("concept_masked", "concept same-id"), ("keep_masked", "keep same/related group"),
                       ("keep_related_masked", "of which ontology-related")):
        vals = [r[key] for r in recs if key in r]
        if vals:
            parts.append(f"{label} {statistics.mean(vals):.0f}")
    return "; ".join(parts) or "-"


def _s_per_step(run_dir: Path, batch: int) -> float:
    recs = metrics_records(run_dir)[1:] or metrics_records(run_dir)
    sps = statistics.median(r["samples_per_s"] for r in recs)
    return batch / max(sps, 1e-9)


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------
def _cell(values: list[float | None], first: dict | None) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} +- {sd:.3f} ({ci(first) if first and 'ci_low' in first else 'no CI'})"


def verdict(results: dict[str, list[dict]], key: str) -> str:
    """Which objective wins on ``key`` beyond the seed spread (best mean - sd > every other mean + sd)."""
    stats = {}
    for obj, runs in results.items():
        vals = [r[key]["value"] for r in runs if r.get(key) and r[key].get("value") is not None]
        if vals:
            stats[obj] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
    if len(stats) < 2:
        return f"{key}: too few results"
    ranked = sorted(stats.items(), key=lambda kv: -kv[1][0])
    (best, (m1, s1)), rest = ranked[0], ranked[1:]
    beaten = all(m1 - s1 > m + s for _, (m, s) in rest)
    if beaten:
        return f"{key}: **{best}** wins beyond the seed spread ({m1:.3f} +- {s1:.3f}; next {rest[0][0]} " \
               f"{rest[0][1][0]:.3f} +- {rest[0][1][1]:.3f})"
    ties = [o for o, (m, s) in rest if m + s >= m1 - s1]
    return f"{key}: no objective wins beyond the seed spread (best mean {best} {m1:.3f} +- {s1:.3f}; " \
           f"within its spread: {', '.join(ties)})"


HEADLINE = {"wbcatt": "unseen AUROC (prompts)", "pneumonia": "AUROC", "covid": "covid-19 vs other AUROC",
            "pathology": "unseen combinations bal. acc."}
TITLES = {"wbcatt": "WBCAtt val (real cells; eosinophil and monocyte never trained on)",
          "pneumonia": "PneumoniaMNIST val (text-supervised: class names in captions; prompts disjoint)",
          "covid": "covid_cxr_notes (free-text notes; held-out patients)",
          "pathology": "pathology tile demo (unseen class combinations)"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--objectives", default=",".join(OBJECTIVES))
    ap.add_argument("--datasets", default="wbcatt,pneumonia,covid,pathology")
    ap.add_argument("--boot", type=int, default=300, help="bootstrap resamples for the seed-0 CIs")
    ap.add_argument("--work", type=Path, default=Path("/tmp/medvlp-ablation"))
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "objectives_ablation.md")
    ap.add_argument("--results", default=str(RESULTS_DIR.parent / "RESULTS.md"),
                    help="also write the table as a section of this file ('' to skip)")
    ap.add_argument("--model-check", default=None, metavar="MODEL",
                    help="also train the cards' default objective (clip) with MODEL (e.g. tiny-minilm) on the same "
                         "batches and seeds, and compare it with tiny on each stored dataset")
    ap.add_argument("--render-only", action="store_true",
                    help="write the table from the datasets stored with these settings; train nothing")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    objectives = args.objectives.split(",")
    loaders = {"wbcatt": wbcatt_data, "pneumonia": pneumonia_data, "covid": covid_data, "pathology": pathology_data}
    settings = {"steps": args.steps, "batch_size": args.batch_size, "seeds": seeds, "objectives": objectives}
    if args.render_only:  # the table again from the stored datasets, nothing trained
        print(_write(args, settings))
        return 0
    if args.model_check:
        for name in args.datasets.split(","):
            model_check(args, settings, name, loaders[name](args.work), seeds)
        print(_write(args, settings))
        return 0
    for name in args.datasets.split(","):
        t0 = time.time()
        data = loaders[name](args.work)
        if data is None:
            _store(args, argv, name, settings, t0, None,
                   [f"### {TITLES[name]}", "", "skipped: the data is not under ../shared/data", ""])
            _write(args, settings)
            continue
        results: dict[str, list[dict]] = {}
        extra_cols: dict[str, tuple[str, float]] = {}
        for obj in objectives:
            if obj == "softclip" and name == "covid":
                continue  # free text: no label vectors to build soft targets from
            for seed in seeds:
                out = args.work / "runs" / f"{name}-{obj.replace('+', '_')}-s{seed}-{args.steps}x{args.batch_size}"
                if not (out / "model" / "medvlp.json").is_file():  # a finished run of the same settings is reused
                    train_run(data["domain"], data["train"], out, objective=obj, steps=args.steps,
                              batch_size=args.batch_size, seed=seed, log_every=10, precision="fp32",
                              extra={"keep": {"batching": "uniform"}} if "keep" in obj else {})
                import medvlp

                model = medvlp.load(out)
                r = measure(name, data, model, args.boot if seed == seeds[0] else 50)
                results.setdefault(obj, []).append(r)
                if seed == seeds[0]:
                    extra_cols[obj] = (_masks(out), _s_per_step(out, args.batch_size))
                head = r.get(HEADLINE[name]) or {}
                print(f"{name} {obj} seed {seed}: {HEADLINE[name]} = {head.get('value')}", flush=True)
        # every measure any objective has (the concept-head pointing game exists for concept models only)
        keys = list(dict.fromkeys(k for runs in results.values() for r in runs for k in r if not k.startswith("_")))
        chance = next(iter(results.values()))[0].get("_chance")
        sections = [f"### {TITLES[name]}", "",
                    "| objective | " + " | ".join(keys) + " | negatives masked per step (seed 0) | s/step |",
                    "|---|" + "---|" * (len(keys) + 2)]
        for obj, runs in results.items():
            cells = [_cell([(r.get(k) or {}).get("value") for r in runs], runs[0].get(k)) for k in keys]
            masks, sps = extra_cols[obj]
            sections.append(f"| {obj} | " + " | ".join(cells) + f" | {masks} | {sps:.2f} |")
        if chance:
            sections.append(f"\nPointing-game chance (mean region fraction): {chance['value']:.3f}.")
        v = verdict(results, HEADLINE[name])
        sections += ["", f"Verdict ({name}): {v}", ""]
        _store(args, argv, name, settings, t0, v, sections)
        _write(args, settings)  # after every dataset: a stopped run keeps the datasets it finished
    print(_write(args, settings))
    return 0


# ------------------------------------------------------------------------------------------------
# Default model check: tiny vs another model, the cards' default objective, same batches and seeds
# ------------------------------------------------------------------------------------------------
DEFAULT_OBJECTIVE = "clip"


def _mean_sd(cell: str) -> tuple[float, float] | None:
    import re

    m = re.match(r"\s*([-\d.]+) \+- ([-\d.]+)", cell)
    return (float(m.group(1)), float(m.group(2))) if m else None


def _table_row(section: list[str], label: str) -> tuple[list[str], list[str]] | None:
    """``(header cells, cells of the row labelled label)`` of a stored dataset table."""
    header = next((x for x in section if x.startswith("| objective |")), None)
    row = next((x for x in section if x.startswith(f"| {label} |")), None)
    if header is None or row is None:
        return None
    return [c.strip() for c in header.strip("|").split("|")], [c.strip() for c in row.strip("|").split("|")]


def model_check(args: argparse.Namespace, settings: dict, name: str, data: dict[str, Any] | None,
                seeds: list[int]) -> None:
    """Train ``DEFAULT_OBJECTIVE`` with ``args.model_check`` over the seeds and store it beside the dataset's
    table, with a verdict against the table's ``tiny`` row of the same objective."""
    path = _store_path(args, name)
    rec = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if data is None or rec is None or rec["settings"] != settings:
        print(f"{name}: no stored table with these settings (or no data): model check skipped", flush=True)
        return
    t0 = time.time()
    import medvlp

    runs, sps = [], 0.0
    for seed in seeds:
        out = args.work / "runs" / f"{name}-{DEFAULT_OBJECTIVE}-{args.model_check}-s{seed}-{args.steps}x{args.batch_size}"
        if not (out / "model" / "medvlp.json").is_file():
            train_run(data["domain"], data["train"], out, objective=DEFAULT_OBJECTIVE, model=args.model_check,
                      steps=args.steps, batch_size=args.batch_size, seed=seed, log_every=10, precision="fp32")
        runs.append(measure(name, data, medvlp.load(out), args.boot if seed == seeds[0] else 50))
        if seed == seeds[0]:
            sps = _s_per_step(out, args.batch_size)
        print(f"{name} {DEFAULT_OBJECTIVE}@{args.model_check} seed {seed}: {HEADLINE[name]} = "
              f"{(runs[-1].get(HEADLINE[name]) or {}).get('value')}", flush=True)
    keys = [k for k in runs[0] if not k.startswith("_")]
    ref = _table_row(rec["section"], DEFAULT_OBJECTIVE)
    if ref is None:
        print(f"{name}: the stored table has no {DEFAULT_OBJECTIVE} row: model check skipped", flush=True)
        return
    header, base = ref
    base_cells = {h: c for h, c in zip(header, base, strict=False)}
    cells = [_cell([(r.get(k) or {}).get("value") for r in runs], runs[0].get(k)) for k in keys]
    lines = [f"Default model check ({DEFAULT_OBJECTIVE}, the cards' default objective; same batches and seeds):", "",
             "| model | " + " | ".join(keys) + " | s/step |", "|---|" + "---|" * (len(keys) + 1),
             "| tiny | " + " | ".join(base_cells.get(k, "n/a") for k in keys) + f" | {base_cells.get('s/step', '')} |",
             f"| {args.model_check} | " + " | ".join(cells) + f" | {sps:.2f} |", ""]
    a = _mean_sd(base_cells.get(HEADLINE[name], ""))
    b = _mean_sd(cells[keys.index(HEADLINE[name])]) if HEADLINE[name] in keys else None
    if a is None or b is None:
        v = f"{HEADLINE[name]}: not comparable"
    elif b[0] - b[1] > a[0] + a[1]:
        v = f"{HEADLINE[name]}: **{args.model_check}** beats tiny beyond the seed spread ({b[0]:.3f} +- {b[1]:.3f} vs {a[0]:.3f} +- {a[1]:.3f})"
    elif a[0] - a[1] > b[0] + b[1]:
        v = f"{HEADLINE[name]}: **tiny** beats {args.model_check} beyond the seed spread ({a[0]:.3f} +- {a[1]:.3f} vs {b[0]:.3f} +- {b[1]:.3f})"
    else:
        v = (f"{HEADLINE[name]}: no difference beyond the seed spread (tiny {a[0]:.3f} +- {a[1]:.3f}, "
             f"{args.model_check} {b[0]:.3f} +- {b[1]:.3f})")
    lines += [f"Verdict ({name}, default model): {v}", ""]
    rec["model_check"] = {"model": args.model_check, "lines": lines, "verdict": v,
                          "command": command_line(__file__, None), "wall_s": round(time.time() - t0)}
    write_text(path, json.dumps(rec, indent=1) + "\n")
    _write(args, settings)


# ------------------------------------------------------------------------------------------------
# Storage: one JSON per dataset, so that a run of some datasets keeps the others' tables
# ------------------------------------------------------------------------------------------------
def _store_path(args: argparse.Namespace, name: str) -> Path:
    return args.out.with_suffix("") / f"{name}.json"


def _store(args: argparse.Namespace, argv: list[str] | None, name: str, settings: dict, t0: float,
           verdict_line: str | None, sections: list[str]) -> None:
    record = {"dataset": name, "settings": settings, "command": command_line(__file__, argv),
              "machine": machine(), "wall_s": round(time.time() - t0), "verdict": verdict_line,
              "section": sections}
    path = _store_path(args, name)
    if path.is_file():  # a model check stored with the same settings stays
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("settings") == settings and old.get("model_check"):
            record["model_check"] = old["model_check"]
    write_text(_store_path(args, name), json.dumps(record, indent=1) + "\n")


def _write(args: argparse.Namespace, settings: dict) -> str:
    """The whole table from every dataset stored with these settings (in the fixed dataset order); a
    dataset stored with other settings is named, not mixed in."""
    verdicts, sections, commands, stale = [], [], [], []
    for name in TITLES:
        path = _store_path(args, name)
        if not path.is_file():
            continue
        rec = json.loads(path.read_text(encoding="utf-8"))
        if rec["settings"] != settings:
            stale.append(f"{name} ({rec['settings']['steps']} steps, seeds {rec['settings']['seeds']})")
            continue
        if rec["verdict"]:
            verdicts.append(f"- {name}: {rec['verdict']}")
        sections += rec["section"]
        commands.append(f"- {name}: `{rec['command']}` on {rec['machine']}, {rec['wall_s']} s")
        check = rec.get("model_check")
        if check:
            verdicts.append(f"- {name}, default model: {check['verdict']}")
            sections += check["lines"]
            commands.append(f"- {name}, default model check: `{check['command']}`, {check['wall_s']} s")
    body = "\n".join([
        f"Model `tiny` (the CPU default of every card), fp32 (pinned: the table must not depend on whether a "
        f"CPU has bf16), {settings['steps']} steps x batch {settings['batch_size']}, seeds "
        f"{', '.join(map(str, settings['seeds']))}; identical batches for every "
        "objective (one uniform sampler; KEEP with `batching=uniform`). Cells: mean +- sd over the training "
        "seeds (bootstrap 95% CI of seed 0). Each dataset's table is written by the command beside it (the "
        f"script keeps one JSON per dataset under `{_store_path(args, 'x').parent.name}/` and renders them all):",
        "", *commands, "",
        *([f"Stored with other settings, not shown: {', '.join(stale)}.", ""] if stale else []),
        "Verdicts (headline measure per dataset):", "", *verdicts, "", *sections])
    title = "## Objectives ablation: clip, siglip, siglip+concept, keep, keep+concept, softclip"
    write_text(args.out, f"{title}\n\n{body}\n")
    if args.results:
        write_section(Path(args.results), "objectives-ablation", f"{title}\n\n{body}")
    return body


if __name__ == "__main__":
    raise SystemExit(main())
