"""``medvlp data ...``: import, validate, split and shard manifests.

User errors (``MedvlpError``) are not caught here: they reach the one handler in
:func:`medvlp.cli.main.main`, which prints ``medvlp: error: <reason>`` on stderr and exits 1.

A thin shell over :mod:`medvlp.data.importers`, :mod:`medvlp.data.manifest`, :mod:`medvlp.data.splits`
and :mod:`medvlp.data.shards`: everything here is one call from Python too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medvlp.errors import DataError

if TYPE_CHECKING:
    from medvlp.domains import DomainCard

app = typer.Typer(help="Prepare data: import, validate, split and shard manifests.", no_args_is_help=True)
import_app = typer.Typer(
    help="Import a dataset layout into a manifest with captions from a domain card.", no_args_is_help=True
)
app.add_typer(import_app, name="import")

_MAX_LISTED = 20  # rows listed one by one before "... and N more"

DomainOpt = Annotated[
    str, typer.Option("--domain", "-d", help="Domain card name (cxr, pathology, ...) or a .toml path.")
]


def _card(domain: str) -> DomainCard:
    from medvlp.domains import load_card

    return load_card(domain)


@import_app.command("folder")
def import_folder_cmd(
    directory: Annotated[Path, typer.Argument(help="Folder with one subfolder per class.")],
    domain: DomainOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Manifest to write (.csv, .jsonl or .parquet).")],
    label_map: Annotated[
        Path | None, typer.Option("--label-map", help='JSON {"folder_name": "label name"}.')
    ] = None,
    channel_pattern: Annotated[
        str | None,
        typer.Option(
            "--channel-pattern",
            help="Microscopy, one file per channel: regex with a (?P<channel>...) group in the file name, "
            r"e.g. 'd(?P<channel>\d)\.tif$'; a field's channel files become one row joined by ';'.",
        ),
    ] = None,
) -> None:
    """Write a manifest for DIR with one subfolder per class (folder names become labels)."""
    from medvlp.data.importers import import_folder

    summary = import_folder(
        directory,
        card=_card(domain),
        out_manifest=out,
        label_map=label_map,
        channel_pattern=channel_pattern,
    )
    typer.echo(summary.format())


@import_app.command("medmnist")
def import_medmnist_cmd(
    npz: Annotated[Path, typer.Argument(help="MedMNIST .npz file (2D sets, any size).")],
    domain: DomainOpt,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder for images/ and train/val/test.csv.")
    ],
    flag: Annotated[
        str | None, typer.Option("--flag", help="MedMNIST dataset name; default: from the file name.")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Only the first N images of each split (a quick trial).")
    ] = None,
) -> None:
    """Write PNGs and train/val/test manifests (test only when the file has it) for a MedMNIST file."""
    from medvlp.data.importers import import_medmnist

    summary = import_medmnist(
        npz, card=_card(domain), out_dir=out, flag=flag, progress=progress, limit=limit
    )
    typer.echo(summary.format())


@import_app.command("ham10000")
def import_ham10000_cmd(
    metadata: Annotated[
        Path, typer.Argument(help="HAM10000-style metadata CSV (lesion_id, image_id, dx, ...).")
    ],
    images: Annotated[
        list[Path],
        typer.Option("--images", help="Image folder (repeat for several, e.g. part_1 and part_2)."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Manifest to write (.csv, .jsonl or .parquet).")],
    domain: DomainOpt = "dermatology",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the lesion-disjoint split.")] = 0,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Fraction of rows for val.")] = 0.15,
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="Fraction of rows for test.")
    ] = 0.15,
    modality: Annotated[
        str, typer.Option("--modality", help="Word used in captions: dermoscopy, clinical, ...")
    ] = "dermoscopy",
) -> None:
    """Write one manifest with captions from the metadata and a split where no lesion spans two splits."""
    from medvlp.data.importers import import_ham10000

    summary = import_ham10000(
        metadata,
        images,
        card=_card(domain),
        out_manifest=out,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        modality=modality,
    )
    typer.echo(summary.format())


def _progress(flag: bool | None) -> bool:
    """Progress bars by default only on a terminal, so piped output and logs stay clean."""
    return sys.stderr.isatty() if flag is None else flag


ProgressOpt = Annotated[
    bool | None, typer.Option("--progress/--no-progress", help="Progress bar (default: when on a terminal).")
]


@import_app.command("table")
def import_table_cmd(
    table: Annotated[Path, typer.Argument(help="Image table (.csv, .tsv, .parquet, .jsonl); image paths relative to it.")],
    domain: DomainOpt,
    image_col: Annotated[str, typer.Option("--image-col", help="Column with the image path.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Manifest to write (.csv, .jsonl or .parquet).")],
    label_col: Annotated[str | None, typer.Option("--label-col", help="Column with the class label.")] = None,
    text_col: Annotated[
        str | None, typer.Option("--text-col", help="Free-text column (reports, notes): captions and concepts.")
    ] = None,
    attribute_cols: Annotated[
        str | None, typer.Option("--attribute-cols", help="Comma-separated attribute columns (column=value concepts).")
    ] = None,
    group_col: Annotated[str | None, typer.Option("--group-col", help="Patient/group column (kept as 'patient').")] = None,
    split_col: Annotated[str | None, typer.Option("--split-col", help="Column with train/val/test.")] = None,
    label_in_captions: Annotated[
        bool, typer.Option("--label-in-captions", help="Also write captions naming the label (text-supervised runs).")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the attribute captions.")] = 0,
) -> None:
    """Write a manifest for an image table with free text or attribute columns (bad rows to bad_samples.jsonl)."""
    from medvlp.data.importers import import_table

    summary = import_table(
        table,
        card=_card(domain),
        out_manifest=out,
        image_col=image_col,
        label_col=label_col,
        text_col=text_col,
        attribute_cols=attribute_cols.split(",") if attribute_cols else None,
        group_col=group_col,
        split_col=split_col,
        label_in_captions=label_in_captions,
        seed=seed,
    )
    typer.echo(summary.format())


@app.command("validate")
def validate_cmd(
    manifest: Annotated[Path, typer.Argument(help="Manifest to check (.csv, .jsonl or .parquet).")],
    domain: Annotated[
        str | None,
        typer.Option("--domain", "-d", help="Domain card whose reader settings decode the images."),
    ] = None,
    read: Annotated[
        bool, typer.Option("--read/--no-read", help="Decode every image (--no-read: only check files exist).")
    ] = True,
    progress: ProgressOpt = None,
) -> None:
    """Check every row (file present, image decodable, caption non-empty, JSON cells valid).

    Prints one line per bad row (``FILE:LINE: IMAGE: REASON``) and exits 1 when any row is bad;
    otherwise prints one summary line and exits 0. With ``--domain``, labels outside the card's label
    sets are listed (``FILE:LINE: warning: label 'x' is not in the 'D' card``) and counted: they are a
    warning, not a reason to fail (such rows still train; only evaluation needs known labels).
    """
    from medvlp.data.manifest import unknown_label_rows, validate_manifest

    card = _card(domain) if domain else None
    options = card.image.reader_options() if card else None
    m, bad = validate_manifest(
        manifest, read_images=read, reader_options=options, progress=_progress(progress)
    )
    for w in m.warnings:
        typer.echo(f"warning: {w}", err=True)
    suffix = manifest.suffix.lower()
    # Lines as an editor counts them: CSV has a header line, JSONL does not; Parquet has no lines.
    first_line = {".csv": 2, ".tsv": 2, ".txt": 2, ".jsonl": 1, ".ndjson": 1}.get(suffix)

    def where(row: int) -> str:
        return f"{manifest}:{row + first_line}" if first_line is not None else f"{manifest} row {row}"

    for b in bad:
        typer.echo(f"{where(b.row)}: {b.image}: {b.reason}")
    unknown = unknown_label_rows(m, card) if card else []
    card_name = card.name if card else ""  # only printed when there are unknown labels, i.e. with a card
    for row, label in unknown[:_MAX_LISTED]:
        typer.echo(f"{where(row)}: warning: label '{label}' is not in the '{card_name}' card")
    if len(unknown) > _MAX_LISTED:
        typer.echo(f"... and {len(unknown) - _MAX_LISTED} more rows with unknown labels")
    unknown_note = ""
    if unknown:
        names = sorted({lab for _, lab in unknown})
        unknown_note = (
            f"; warning: {len(unknown)} rows carry {len(names)} labels not in the '{card_name}' card "
            f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}): add them to the card or fix the manifest"
        )
    if bad:
        raise DataError(
            f"{len(bad)} of {len(m)} rows are bad (listed above); fix or remove them "
            f"(training skips bad rows, up to --max-bad-fraction){unknown_note}"
        )
    parts = [f"{len(m)} rows, 0 bad"]
    labels = m.label_names()
    if labels:
        parts.append(f"{len(labels)} labels")
    if "split" in m.df.columns:
        counts = m.df["split"].fillna("(none)").astype(str).value_counts()
        parts.append("splits: " + ", ".join(f"{k} {counts[k]}" for k in sorted(counts.index)))
    checked = "images decoded" if read else "files present (not decoded)"
    typer.echo(f"ok: {manifest}: {'; '.join(parts)}; {checked}{unknown_note}")


@app.command("split")
def split_cmd(
    manifest: Annotated[Path, typer.Argument(help="Manifest to split.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Manifest to write (may be the input).")],
    by: Annotated[
        str,
        typer.Option(
            "--by", help="Keep together rows of one: patient | lesion (lesion_id) | group | COLUMN."
        ),
    ] = "patient",
    val: Annotated[float, typer.Option("--val", help="Fraction of rows for validation.")] = 0.15,
    test: Annotated[float, typer.Option("--test", help="Fraction of rows for test.")] = 0.15,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the assignment.")] = 0,
    stratify: Annotated[
        str, typer.Option("--stratify", help="Label column balanced across splits; 'none' to turn off.")
    ] = "label",
) -> None:
    """Assign a train/val/test split where no patient, lesion or group spans two splits."""
    from medvlp.data.splits import split_manifest

    strat = None if stratify.strip().lower() in ("", "none") else stratify
    summary = split_manifest(manifest, out, by=by, val=val, test=test, seed=seed, stratify=strat)
    typer.echo(summary.format())


@app.command("shard")
def shard_cmd(
    manifest: Annotated[Path, typer.Argument(help="Manifest to write as WebDataset shards.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for NNNNNN.tar, shards.json, bad_samples.jsonl.")
    ],
    shard_size: Annotated[int, typer.Option("--shard-size", help="Samples per shard.")] = 1000,
    split: Annotated[
        str | None, typer.Option("--split", help="Only rows of this split (train, val, test).")
    ] = None,
    domain: Annotated[
        str | None,
        typer.Option("--domain", "-d", help="Domain card whose reader decodes DICOM/TIFF/microscopy images."),
    ] = None,
    shuffle: Annotated[
        bool, typer.Option("--shuffle/--no-shuffle", help="Write rows in a seeded random order.")
    ] = True,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the shuffle.")] = 0,
    check: Annotated[
        bool, typer.Option("--check/--no-check", help="Decode PNG/JPEG files before storing them unchanged.")
    ] = True,
    max_bad_fraction: Annotated[
        float,
        typer.Option("--max-bad-fraction", help="Stop when more than this fraction of rows is unusable."),
    ] = 0.01,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace shards already in --out.")] = False,
    progress: ProgressOpt = None,
) -> None:
    """Write WebDataset tar shards (image + txt captions JSON + json label/concepts/metadata)."""
    from medvlp.data.shards import write_shards

    reader, options = "auto", None
    if domain:
        card = _card(domain)
        reader, options = card.image.reader, card.image.reader_options()
        if reader == "wsi":  # tile references are recognised by the auto reader
            reader = "auto"
    summary = write_shards(
        manifest,
        out,
        shard_size=shard_size,
        split=split,
        shuffle=shuffle,
        seed=seed,
        reader=reader,
        reader_options=options,
        check=check,
        max_bad_fraction=max_bad_fraction,
        overwrite=overwrite,
        progress=_progress(progress),
    )
    typer.echo(summary.format())


@app.command("overlap")
def overlap_cmd(
    train: Annotated[Path, typer.Argument(help="Training manifest.")],
    eval_manifest: Annotated[Path, typer.Argument(metavar="EVAL", help="Evaluation manifest.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="CSV of the pairs found.")] = None,
    phash_threshold: Annotated[
        int, typer.Option("--phash-threshold", help="Max Hamming distance (of 64 bits) for a near duplicate.")
    ] = 4,
) -> None:
    """Exact and near duplicate images (flips/rotations included) and shared patients between two manifests."""
    import pandas as pd

    from medvlp.data.overlap import find_overlap

    report = find_overlap(train, eval_manifest, phash_threshold=phash_threshold)
    typer.echo(report.format())
    if out is not None:
        cols = ["train_row", "eval_row", "train_image", "eval_image", "kind", "distance", "patient"]
        pd.DataFrame([p.to_dict() for p in report.pairs], columns=cols).to_csv(out, index=False)
        typer.echo(f"pairs -> {out}")
