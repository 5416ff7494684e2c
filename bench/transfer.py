"""Transfer benchmark: zero-shot on classes never seen as training captions (issue 14, point 4).

1. WBCAtt (real blood cells, 11 expert morphology attributes per cell): `medvlp data import table` turns the
   attributes into captions that never name the cell type; two cell types are left out of pretraining
   entirely. On WBCAtt val: seen-type balanced accuracy and unseen-type one-vs-rest AUROC, in both modes
   (`prompts`: class names; `concepts`: the ontology concepts that define each type).
2. PneumoniaMNIST: captions from the card's caption pool, prompts from the disjoint prompt pool; the JSON's
   `prompt_overlap` shows whether it is zero-shot (0) or text-supervised. The class names ARE in the
   captions, so this one is a text-supervised result with a clean prompt protocol, and is reported as such.
3. covid_cxr_notes (free-text notes): pretrain on the notes of 70% of the patients; image->text retrieval
   on the other patients.

Everything goes through the command line with default settings plus `--data` (and `--steps` when given).
The table is written by this script (default `bench/results/transfer.md`) with the commands beside it.

    python bench/transfer.py                  # default schedules (about 10 minutes per run on 2 cores)
    python bench/transfer.py --steps 150      # shorter runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from _common import RESULTS_DIR, SHARED_DATA, ci, machine, write_text

SHARED = SHARED_DATA / "datasets"
WBC_ATTRS = ["cell_size", "cell_shape", "nucleus_shape", "nuclear_cytoplasmic_ratio", "chromatin_density",
             "cytoplasm_vacuole", "cytoplasm_texture", "cytoplasm_colour", "granule_type", "granule_colour",
             "granularity"]


def sh(cmd: list[str], log: list[str]) -> None:
    line = " ".join(cmd)
    log.append(line)
    print("+", line, file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def medvlp(*args: str) -> list[str]:
    return [sys.executable, "-m", "medvlp", *args]


def wbcatt(work: Path, steps: list[str], left_out: list[str], log: list[str]) -> list[str]:
    for split in ("train", "val"):
        sh(medvlp("data", "import", "table", str(SHARED / "wbcatt" / f"{split}.csv"), "--domain", "microscopy",
                  "--image-col", "image", "--label-col", "label", "--attribute-cols", ",".join(WBC_ATTRS),
                  "--out", str(work / f"wbc_{split}.csv")), log)
    train = pd.read_csv(work / "wbc_train.csv")
    seen_train = train[~train["label"].isin(left_out)]
    seen_train.to_csv(work / "wbc_train_seen.csv", index=False)
    log.append(f"# left out of pretraining: {', '.join(left_out)} ({len(train) - len(seen_train)} rows dropped)")
    run = work / "wbc_run"
    sh(medvlp("pretrain", "--domain", "microscopy", "--data", str(work / "wbc_train_seen.csv"), "--out", str(run),
              "--no-eval", *steps), log)
    val = pd.read_csv(work / "wbc_val.csv")
    types = sorted(val["label"].unique())
    seen = [t for t in types if t not in left_out]
    val[val["label"].isin(seen)].to_csv(work / "wbc_val_seen.csv", index=False)
    rows = ["| mode | seen types balanced accuracy | unseen " + " | unseen ".join(left_out) + " AUROC (one-vs-rest, all 5 types) | prompt_overlap |",
            "|---|---|" + "---|" * len(left_out) + "---|"]
    sh(medvlp("eval", "zeroshot", "--model", str(run), "--data", str(work / "wbc_val_seen.csv"), "--domain",
              "microscopy", "--labels", ",".join(seen), "--mode", "both", "--json", str(work / "wbc_seen.json")), log)
    sh(medvlp("eval", "zeroshot", "--model", str(run), "--data", str(work / "wbc_val.csv"), "--domain",
              "microscopy", "--labels", ",".join(types), "--mode", "both", "--json", str(work / "wbc_all.json")), log)
    seen_j = json.loads((work / "wbc_seen.json").read_text())
    all_j = json.loads((work / "wbc_all.json").read_text())
    for mode in ("prompts", "concepts"):
        s = seen_j["by_mode"][mode]
        a = all_j["by_mode"][mode]
        per = a.get("per_class_auroc", {})
        rows.append(f"| {mode} | {ci(s.get('balanced_accuracy'))} | "
                    + " | ".join(ci(per.get(u)) for u in left_out) + f" | {seen_j.get('prompt_overlap')} |")
    return [f"### WBCAtt val (n = {all_j['n']}; seen types: {', '.join(seen)})", "", *rows, ""]


def pneumonia(work: Path, steps: list[str], log: list[str]) -> list[str]:
    d = work / "pm"
    sh(medvlp("data", "import", "medmnist", str(SHARED / "pneumoniamnist_trainval.npz"), "--domain", "cxr",
              "--out", str(d)), log)
    run = work / "pm_run"
    sh(medvlp("pretrain", "--domain", "cxr", "--data", str(d / "train.csv"), "--out", str(run), "--no-eval", *steps),
       log)
    sh(medvlp("eval", "zeroshot", "--model", str(run), "--data", str(d / "val.csv"), "--domain", "cxr", "--json",
              str(work / "pm.json")), log)
    j = json.loads((work / "pm.json").read_text())
    return [f"### PneumoniaMNIST val (n = {j['n']}): text-supervised (class names in the captions), prompts "
            f"disjoint from the captions (prompt_overlap = {j.get('prompt_overlap')})", "",
            "| AUROC | balanced accuracy |", "|---|---|",
            f"| {ci(j.get('auroc'))} | {ci(j.get('balanced_accuracy'))} |", ""]


def covid(work: Path, steps: list[str], log: list[str]) -> list[str]:
    notes = pd.read_csv(SHARED / "covid_cxr_notes" / "notes.csv")
    patients = sorted(notes["patient"].astype(str).unique())
    import random

    random.Random(0).shuffle(patients)
    held = set(patients[: int(0.3 * len(patients))])
    notes["split"] = ["val" if str(p) in held else "train" for p in notes["patient"]]
    table = SHARED / "covid_cxr_notes" / "notes.csv"
    split_csv = work / "covid_split.csv"
    notes["image"] = [str((table.parent / i).resolve()) for i in notes["image"]]
    notes.to_csv(split_csv, index=False)
    sh(medvlp("data", "import", "table", str(split_csv), "--domain", "cxr", "--image-col", "image", "--text-col",
              "report", "--label-col", "finding", "--group-col", "patient", "--split-col", "split",
              "--out", str(work / "covid.csv")), log)
    m = pd.read_csv(work / "covid.csv")
    m[m["split"] == "train"].to_csv(work / "covid_train.csv", index=False)
    m[m["split"] == "val"].to_csv(work / "covid_val.csv", index=False)
    run = work / "covid_run"
    sh(medvlp("pretrain", "--domain", "cxr", "--data", str(work / "covid_train.csv"), "--out", str(run),
              "--no-eval", *steps), log)
    sh(medvlp("eval", "retrieval", "--model", str(run), "--data", str(work / "covid_val.csv"), "--json",
              str(work / "covid_ret.json")), log)
    j = json.loads((work / "covid_ret.json").read_text())
    keys = [k for k in j if isinstance(j[k], dict) and "value" in j[k]]
    # zero-shot finding detection on the held-out patients: COVID-19 against the other named infections
    # (rows without a finding, "todo", or "No Finding" are left out); the labels are class names in prompts,
    # never training captions (the captions are the notes themselves)
    val = m[m["split"] == "val"].copy()
    finding = notes.set_index(notes["image"].map(lambda p: Path(p).name))["finding"]
    val["label"] = [finding.get(Path(str(i)).name, "") for i in val["image"]]
    val = val[~val["label"].isin(["todo", "No Finding", ""]) & val["label"].notna()]
    val["label"] = ["covid-19 pneumonia" if "COVID-19" in str(f) else "other pneumonia" for f in val["label"]]
    val.to_csv(work / "covid_val_findings.csv", index=False)
    sh(medvlp("eval", "zeroshot", "--model", str(run), "--data", str(work / "covid_val_findings.csv"), "--domain",
              "cxr", "--labels", "covid-19 pneumonia,other pneumonia", "--train-data", str(work / "covid_train.csv"),
              "--json", str(work / "covid_zs.json")), log)
    z = json.loads((work / "covid_zs.json").read_text())
    counts = val["label"].value_counts().to_dict()
    return [f"### covid_cxr_notes: retrieval on held-out patients ({len(held)} patients, n = {j.get('n')})", "",
            "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys), "| " + " | ".join(ci(j[k]) for k in keys) + " |",
            "", f"Zero-shot finding detection on the same held-out patients ({counts}; prompt_overlap = "
            f"{z.get('prompt_overlap')}):", "", "| AUROC (covid-19 vs other pneumonia) | balanced accuracy |",
            "|---|---|", f"| {ci(z.get('auroc'))} | {ci(z.get('balanced_accuracy'))} |", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="pretraining steps (default: the CPU default schedule)")
    ap.add_argument("--left-out", default="eosinophil,monocyte", help="WBCAtt types left out of pretraining")
    ap.add_argument("--only", default="wbcatt,pneumonia,covid")
    ap.add_argument("--work", default="/tmp/medvlp-transfer")
    ap.add_argument("--out", default=str(RESULTS_DIR / "transfer.md"))
    a = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"shared data not found at {SHARED}")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    steps = ["--steps", str(a.steps)] if a.steps else []
    log: list[str] = []
    t0 = time.time()
    parts = [f"## Transfer benchmark (`python bench/transfer.py{f' --steps {a.steps}' if a.steps else ''}`)", "",
             f"Machine: {machine()}; written by the "
             f"script on {time.strftime('%Y-%m-%d %H:%M')}.", ""]
    jobs = {"wbcatt": lambda: wbcatt(work, steps, a.left_out.split(","), log),
            "pneumonia": lambda: pneumonia(work, steps, log), "covid": lambda: covid(work, steps, log)}
    for name in a.only.split(","):
        parts += jobs[name]()
    parts += [f"Wall time {time.time() - t0:.0f} s. Commands run:", "", "```", *log, "```", ""]
    write_text(a.out, "\n".join(parts))
    print("\n".join(parts))


if __name__ == "__main__":
    main()
