"""``medvlp eval {zeroshot,retrieval,linear-probe}`` and ``medvlp zeroshot``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from medvlp.cli import eval_extra
from medvlp.errors import MedvlpError

app = typer.Typer(no_args_is_help=True)


def _labels(labels: str | None) -> list[str] | None:
    if labels is None:
        return None
    return [s.strip() for s in labels.split(",")]


def _write_json(obj: object, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=2))
        typer.echo(f"wrote {path}")


@app.command("zeroshot", help="Zero-shot metrics (with bootstrap CIs) of a model on a labelled manifest.")
def eval_zeroshot(
    model: Annotated[str, typer.Option(help="Run folder, model folder, local-dir:/hf-hub: id.")],
    data: Annotated[str, typer.Option(help="Labelled manifest.")],
    domain: Annotated[str | None, typer.Option(help="Domain card (default: the model's).")] = None,
    labels: Annotated[str | None, typer.Option(help="Comma-separated labels (default: the manifest's).")] = None,
    json_out: Annotated[str | None, typer.Option("--json", help="Write the metrics JSON here.")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    device: Annotated[str, typer.Option(help="cpu | cuda.")] = "cpu",
) -> None:
    import medvlp
    from medvlp.data.manifest import read_manifest
    from medvlp.eval.zeroshot import evaluate_manifest
    from medvlp.train.loop import format_metrics

    m = medvlp.load(model, domain=domain, device=device)
    manifest = read_manifest(data)
    metrics = evaluate_manifest(m.net, manifest, card=m.card, labels=_labels(labels), n_boot=n_boot, seed=seed,
                                progress=True)
    typer.echo(format_metrics(metrics, title=f"zero-shot on {data} (n={metrics['n']})"))
    if metrics.get("n_excluded"):
        typer.echo(f"note: {metrics['n_excluded']} rows had labels outside the label set and were left out",
                   err=True)
    _write_json(metrics, json_out)


def zeroshot(
    images: Annotated[list[str], typer.Argument(help="Image files (PNG/JPEG/DICOM/TIFF) or slide tile refs.")],
    model: Annotated[str, typer.Option(help="Run folder, model folder, local-dir:/hf-hub: id.")],
    domain: Annotated[str | None, typer.Option(help="Domain card (default: the model's).")] = None,
    labels: Annotated[str | None, typer.Option(help="Comma-separated labels (default: card's label set).")] = None,
    json_out: Annotated[str | None, typer.Option("--json", help="Write results (a list, one per image).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    device: Annotated[str, typer.Option(help="cpu | cuda.")] = "cpu",
) -> None:
    """Zero-shot diagnosis; unreadable images are reported and the rest still scored (exit 1 if any failed)."""
    import medvlp

    m = medvlp.load(model, domain=domain, device=device)
    label_list = _labels(labels)
    results, failed = [], 0
    readable = []
    for path in images:
        try:
            m._pixels(path)
            readable.append(path)
        except MedvlpError as e:
            failed += 1
            typer.echo(f"medvlp: {e}", err=True)
    for i in range(0, len(readable), batch_size):
        chunk = readable[i:i + batch_size]
        for res in m.zero_shot(list(chunk), labels=label_list):
            results.append(res.to_dict())
            top = res.probabilities[res.top_label]
            typer.echo(f"{res.image}\t{res.top_label}\t{top:.3f}\tset={res.prediction_set}"
                       f"\t{'calibrated' if res.calibrated else 'uncalibrated'}")
    _write_json(results, json_out)
    if failed:
        typer.echo(f"medvlp: {failed} of {len(images)} images could not be read", err=True)
        sys.exit(1)


# retrieval and linear-probe live beside the zero-shot commands
eval_extra.register(app)
