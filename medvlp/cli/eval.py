"""``medvlp eval {zeroshot,retrieval,linear-probe}`` and ``medvlp zeroshot``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from medvlp.cli import eval_extra
from medvlp.errors import ConfigError, ImageReadError, MedvlpError

if TYPE_CHECKING:
    from medvlp.api import Model

app = typer.Typer(no_args_is_help=True)


def _labels(labels: str | None) -> list[str] | None:
    """``--labels a,b,c`` -> a list; blanks dropped so that ``--labels ''`` reads as an empty list."""
    if labels is None:
        return None
    return [s.strip() for s in labels.split(",") if s.strip()]


def _write_json(obj: object, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=2))
        typer.echo(f"wrote {path}")


@app.command("zeroshot", help="Zero-shot metrics (with bootstrap CIs and the spread over prompt subsets) of a model "
             "on a labelled manifest.")
def eval_zeroshot(
    model: Annotated[str, typer.Option(help="Run folder, model folder, local-dir:/hf-hub: id.")],
    data: Annotated[str, typer.Option(help="Labelled manifest.")],
    domain: Annotated[str | None, typer.Option(help="Domain card (default: the model's).")] = None,
    labels: Annotated[str | None, typer.Option(help="Comma-separated labels (default: the manifest's).")] = None,
    json_out: Annotated[str | None, typer.Option("--json", help="Write the metrics JSON here.")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap and prompt-subset seed.")] = 0,
    prompt_subsets: Annotated[int, typer.Option(help="Random template subsets for the prompt spread (0: off).")] = 10,
    subset_fraction: Annotated[float, typer.Option(help="Share of the templates in each subset.")] = 0.5,
    device: Annotated[str, typer.Option(help="cpu | cuda.")] = "cpu",
    train_data: Annotated[str | None, typer.Option(help="Training manifest: report exact/near duplicates and "
                                                        "shared patients with the eval data (JSON 'overlap') and "
                                                        "embedding near duplicates ('overlap_embedding').")] = None,
    near_dup_threshold: Annotated[float, typer.Option(help="Embedding cosine of a near duplicate.")] = 0.98,
    mode: Annotated[str, typer.Option(help="prompts (class names) | concepts (the classes' defining ontology "
                                           "concepts) | both (JSON 'by_mode').")] = "prompts",
    include_parents: Annotated[bool, typer.Option(help="Concept mode: add the is-a parents' features.")] = False,
) -> None:
    import medvlp
    from medvlp.data.manifest import read_manifest
    from medvlp.eval.hygiene import find_caption_record
    from medvlp.eval.zeroshot import evaluate_manifest, format_spread
    from medvlp.train.loop import format_metrics

    label_list = _labels(labels)
    if label_list is not None:
        from medvlp.eval.zeroshot import check_labels

        check_labels(label_list)  # fail before loading the model
    m = medvlp.load(model, domain=domain, device=device)
    manifest = read_manifest(data)
    train_manifest = read_manifest(train_data) if train_data else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = evaluate_manifest(m.net, manifest, card=m.card, labels=label_list, n_boot=n_boot, seed=seed,
                                    progress=True, prompt_subsets=prompt_subsets, subset_fraction=subset_fraction,
                                    caption_record=find_caption_record(m.source), train_manifest=train_manifest,
                                    near_dup_threshold=near_dup_threshold, mode=mode,
                                    include_parents=include_parents)
    _echo_warnings(caught)
    _echo_unreadable(metrics)
    if train_data:
        metrics["overlap"] = _data_overlap(train_data, data)
    _echo_hygiene(metrics)
    typer.echo(format_metrics(metrics, title=f"zero-shot on {data} (n={metrics['n']})"))
    if "prompt_spread" in metrics:
        typer.echo(format_spread(metrics["prompt_spread"]))
    if metrics.get("n_excluded"):
        outside = ", ".join(f"'{k}' ({v})" for k, v in list(metrics.get("excluded_labels", {}).items())[:8])
        typer.echo(f"note: {metrics['n_excluded']} rows had labels outside the label set and were left out: {outside}",
                   err=True)
    _write_json(metrics, json_out)


def _data_overlap(train: str, evaluated: str) -> dict:
    """``medvlp.data.overlap.find_overlap(train, eval).to_dict()``, or a note when that module is absent."""
    try:
        from medvlp.data.overlap import find_overlap
    except ImportError as e:
        return {"available": False, "note": f"pixel/perceptual duplicate search unavailable ({e})"}
    return find_overlap(train, evaluated).to_dict()


def _echo_hygiene(metrics: dict) -> None:
    """Warn on stderr when eval prompts were training captions, or when the protocol cannot be checked."""
    overlap = metrics.get("prompt_overlap")
    if overlap is None:
        typer.echo(f"note: prompt_overlap unknown: {metrics.get('prompt_overlap_note', '')}", err=True)
    elif overlap > 0:
        ex = "; ".join(repr(p) for p in metrics.get("prompt_overlap_examples", [])[:3])
        typer.echo(f"warning: {overlap:.0%} of the eval prompts were training captions ({ex}): these prompts "
                   "were training captions: this is a text-supervised result, not zero-shot", err=True)
    near = metrics.get("overlap_embedding")
    if near and near["n_eval_rows"]:
        typer.echo(f"warning: {near['n_eval_rows']} eval rows have a training image with embedding cosine >= "
                   f"{near['threshold']:g} (near duplicates; see 'overlap_embedding')", err=True)


def _echo_unreadable(metrics: dict) -> None:
    """``N of M rows could not be read (first: row R: reason); they are left out`` on stderr."""
    n_bad = metrics.get("n_unreadable") or 0
    if n_bad:
        first = metrics.get("unreadable_first") or {}
        where = f" (first: row {first['row']}: {first['reason']})" if first else ""
        typer.echo(f"note: {n_bad} of {metrics.get('n_rows', '?')} rows could not be read{where}; "
                   "they are left out", err=True)


def _echo_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Library warnings (unknown labels, skipped AUROC classes) as one ``note:`` line each on stderr."""
    seen = set()
    for w in caught:
        msg = str(w.message)
        if msg not in seen:
            seen.add(msg)
            typer.echo(f"note: {msg}", err=True)


EXIT_PARTIAL = 2  # some images could not be read; the others were scored and written


def zeroshot(
    images: Annotated[list[str], typer.Argument(help="Image files (PNG/JPEG/DICOM/TIFF) or slide tile refs.")],
    model: Annotated[str, typer.Option(help="Run folder, model folder, local-dir:/hf-hub: id.")],
    domain: Annotated[str | None, typer.Option(help="Domain card (default: the model's).")] = None,
    labels: Annotated[str | None, typer.Option(help="Comma-separated labels, at least two (default: the card's "
                                                    "label set).")] = None,
    json_out: Annotated[str | None, typer.Option("--json", help="Write results (a list, one per image).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    device: Annotated[str, typer.Option(help="cpu | cuda.")] = "cpu",
    mode: Annotated[str, typer.Option(help="prompts (class names) | concepts (the classes' defining ontology "
                                           "concepts).")] = "prompts",
) -> None:
    """Zero-shot diagnosis of images.

    Exit codes: 0 every image scored; 2 partial results (some images could not be read: each is named on
    stderr and appears in --json with an ``error`` and empty probabilities, the others are scored);
    1 nothing could be done (bad labels, no model, no readable image).
    """
    import medvlp
    from medvlp.eval.zeroshot import check_labels

    label_list = _labels(labels)
    if label_list is not None:
        check_labels(label_list)  # empty or duplicate labels fail before the model is loaded
    if mode not in ("prompts", "concepts"):
        raise ConfigError(f"unknown --mode '{mode}'; choose prompts or concepts")
    m = medvlp.load(model, domain=domain, device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if mode == "concepts":
            from medvlp.eval.concept_zeroshot import ConceptZeroShot

            clf = ConceptZeroShot(m.net, label_list or m.card.label_set().names, card=m.card)
        else:
            clf = m.classifier(label_list)
    _echo_warnings(caught)
    results: list[dict] = []
    failed = 0
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        for res in _score_chunk(m, clf, chunk):
            if "error" in res:
                failed += 1
                typer.echo(f"medvlp: {res['image']}: {res['error']}", err=True)
            else:
                top = res["probabilities"][res["top_label"]]
                typer.echo(f"{res['image']}\t{res['top_label']}\t{top:.3f}\tset={res['prediction_set']}"
                           f"\t{'calibrated' if res['calibrated'] else 'uncalibrated'}")
            results.append(res)
    _write_json(results, json_out)
    if failed == len(images):
        raise ImageReadError(images[0] if len(images) == 1 else f"all {len(images)} images",
                             "no image could be read (see the lines above)")
    if failed:
        typer.echo(f"medvlp: {failed} of {len(images)} images could not be read; results for the other "
                   f"{len(images) - failed} were kept (exit code {EXIT_PARTIAL})", err=True)
        raise typer.Exit(EXIT_PARTIAL)


def _score_chunk(m: Model, clf: Any, paths: list[str]) -> list[dict]:
    """Read (each image once), embed and score a chunk; unreadable images become ``error`` entries."""
    import torch

    pixels: list[torch.Tensor] = []
    ok: list[str] = []
    out: list[dict | None] = []  # None: a readable image, scored below
    for path in paths:
        try:
            pixels.append(m.pixels(path))
            ok.append(path)
            out.append(None)
        except (MedvlpError, OSError, ValueError) as e:
            reason = e.reason if isinstance(e, ImageReadError) else " ".join(str(e).split())
            out.append({"image": path, "error": reason, "probabilities": {}, "top_label": None,
                        "prediction_set": [], "calibrated": False})
    if pixels:
        px = torch.stack(pixels)
        head = getattr(m.net, "concept_head", None)
        if hasattr(clf, "concepts") and head is not None:  # concept mode scores the head's best patch
            with torch.no_grad():
                feats, tokens = m.net.encode_image(m.normalize(px), return_tokens=True)
                probs = clf.predict_proba(feats.float().cpu(), head(tokens).float().cpu())
        else:
            probs = clf.predict_proba(m.embed_pixels(px))
        scored = iter(m.result(p, px1, pr, clf).to_dict() for p, px1, pr in zip(ok, pixels, probs, strict=True))
        return [o if o is not None else next(scored) for o in out]
    return cast("list[dict]", out)  # no readable image: every entry is an error dict


# retrieval and linear-probe live beside the zero-shot commands
eval_extra.register(app)
