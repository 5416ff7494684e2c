"""``medvlp wsi zeroshot``: slide-level zero-shot with cached tile embeddings and heatmaps (thin over
:mod:`medvlp.eval.slide`).

Every slide is attempted: a slide that fails prints one line on stderr and the others are still scored.
Exit codes: 0 all slides scored; 2 partial results (some slides failed, the rest are in slides.json);
1 nothing scored (bad options, no model, every slide failed).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated

import typer

from medvlp.errors import ConfigError, DataError, MedvlpError

EXIT_PARTIAL = 2


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def zeroshot(
    slides: Annotated[list[str] | None, typer.Argument(help="Slide files (SVS, TIFF, NDPI, MRXS, DICOM WSI ...); "
                                                            "optional with --manifest.")] = None,
    *,  # keyword-only: the required options need no default after the optional argument
    model: Annotated[str, typer.Option(help="Run folder, model folder, local-dir:/hf-hub: id.")],
    out: Annotated[str, typer.Option(help="Output folder: slides.json, slides.csv, heatmaps/, tiles/.")],
    domain: Annotated[str | None, typer.Option(help="Domain card (default: the model's).")] = None,
    labels: Annotated[str | None, typer.Option(help="Comma-separated labels, at least two (default: the "
                                                    "manifest's labels, else the card's label set).")] = None,
    aggregate: Annotated[str, typer.Option(help="Slide score: topk_mean | topk_sum | fraction (KEEP).")] = "topk_mean",
    k: Annotated[int, typer.Option("--k", help="Tiles per label for top-K aggregation.")] = 10,
    smooth: Annotated[bool, typer.Option(help="Average tile scores over the 8 neighbouring tiles.")] = False,
    tiles: Annotated[str | None, typer.Option(help="Folder of <stem>.h5 tile files (medvlp wsi tile or CLAM); "
                                                   "missing ones are tiled there. Default: OUT/tiles.")] = None,
    manifest: Annotated[str | None, typer.Option(help="CSV with columns slide,label: slide-level metrics "
                                                      "(metrics.json in OUT).")] = None,
    mpp: Annotated[float | None, typer.Option(help="Level-0 microns per pixel for slides without a "
                                                   "trustworthy value.")] = None,
    heatmaps: Annotated[bool, typer.Option(help="Write a heatmap PNG per slide and label.")] = True,
    batch_size: Annotated[int, typer.Option(help="Tiles per forward pass.")] = 64,
    workers: Annotated[int, typer.Option(help="Tile-reading worker processes.")] = 0,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for slide-level metrics.")] = 1000,
    device: Annotated[str, typer.Option(help="cpu | cuda.")] = "cpu",
) -> None:
    """Zero-shot classification of whole slides: slide scores, heatmaps and (with --manifest) metrics."""
    import medvlp
    from medvlp.eval.slide import (
        AGGREGATES,
        SlideZeroShot,
        evaluate_slides,
        read_slide_manifest,
        write_slide_table,
    )
    from medvlp.eval.zeroshot import check_labels

    if aggregate not in AGGREGATES:
        raise ConfigError(f"--aggregate {aggregate!r}: choose one of {', '.join(AGGREGATES)}")
    rows = read_slide_manifest(manifest) if manifest else []
    slide_list = list(slides or []) or [s for s, _ in rows]
    if not slide_list:
        raise ConfigError("no slides: give slide files or --manifest CSV with a 'slide' column")
    label_list = [s.strip() for s in labels.split(",") if s.strip()] if labels is not None else None
    if label_list is None and rows:
        label_list = list(dict.fromkeys(lab for _, lab in rows))
    if label_list is not None:
        check_labels(label_list)
    m = medvlp.load(model, domain=domain, device=device)
    if label_list is None:
        label_list = m.card.label_set().names
    temperature = float(m.calibration["temperature"]) if m.calibration else 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner = SlideZeroShot(m.net, label_list, card=m.card, aggregate=aggregate, k=k, smooth=smooth,
                               batch_size=batch_size, num_workers=workers, mpp=mpp, temperature=temperature,
                               progress=True)
    for w in {str(w.message) for w in caught}:
        typer.echo(f"note: {w}", err=True)
    out_dir = Path(out)
    tiles_dir = Path(tiles) if tiles else out_dir / "tiles"
    results, failed = [], 0
    for s in slide_list:
        try:
            r = runner.score(s, tiles_dir, heatmap_dir=out_dir / "heatmaps" if heatmaps else None)
        except MedvlpError as e:
            failed += 1
            typer.echo(f"medvlp: {s}: {_one_line(e)}", err=True)
            continue
        results.append(r)
        probs = "  ".join(f"{lab}={p:.3f}" for lab, p in r.probabilities.items())
        typer.echo(f"{s}\t{r.top_label}\t{r.n_tiles} tiles\t{'cached' if r.cache_hit else 'embedded'}"
                   f"\t{r.seconds:.1f}s\t{probs}")
    if not results:
        raise DataError(f"none of the {len(slide_list)} slides could be scored (see the lines above)")
    jpath, cpath = write_slide_table(results, out_dir)
    typer.echo(f"wrote {jpath} and {cpath}")
    if rows:
        from medvlp.train.loop import format_metrics

        metrics = evaluate_slides(results, rows, n_boot=n_boot)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        typer.echo(format_metrics(metrics, title=f"slide-level zero-shot ({aggregate}, n={metrics['n']} slides)"))
        typer.echo(f"wrote {out_dir / 'metrics.json'}")
    if failed:
        typer.echo(f"medvlp: {failed} of {len(slide_list)} slides failed; results for the other {len(results)} "
                   f"were kept (exit code {EXIT_PARTIAL})", err=True)
        raise typer.Exit(EXIT_PARTIAL)


def register(app: typer.Typer) -> None:
    """Add ``zeroshot`` to the ``medvlp wsi`` command group."""
    app.command(
        "zeroshot",
        help="Slide-level zero-shot: tiles -> cached embeddings -> per-tile scores -> slide scores (top-K mean/sum "
        "or tile fraction), heatmap PNGs, slides.json/csv; metrics with --manifest. Exit 2 when some slides failed.",
    )(zeroshot)
