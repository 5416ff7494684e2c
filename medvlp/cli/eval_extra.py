"""``medvlp eval retrieval`` and ``medvlp eval linear-probe`` (thin shells over :mod:`medvlp.eval`).

Registered on the ``eval`` sub-app by :func:`register`::

    from medvlp.cli import eval_extra
    eval_extra.register(app)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from medvlp.errors import ConfigError


def _ks(value: str) -> list[int]:
    try:
        ks = [int(s) for s in value.split(",") if s.strip()]
    except ValueError as e:
        raise ConfigError(f"--ks must be comma-separated integers such as 1,5,10; got '{value}'") from e
    if not ks or min(ks) < 1:
        raise ConfigError(f"--ks must be positive integers; got '{value}'")
    return ks


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _table(metrics: dict[str, Any], title: str) -> str:
    """Metric, value and interval per line; undefined numbers print as n/a."""
    lines = [title]
    for k, v in metrics.items():
        if isinstance(v, dict) and "value" in v:
            lines.append(f"  {k:<34} {_fmt(v['value'])}  [{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]")
    return "\n".join(lines)


def _write_json(obj: object, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=2))
        typer.echo(f"wrote {path}")


def retrieval_cmd(
    model: Annotated[str, typer.Option(help="Run folder, model folder, local-dir:/hf-hub: id.")],
    data: Annotated[str, typer.Option(help="Manifest with image and caption (text or JSON list) columns.")],
    domain: Annotated[str | None, typer.Option(help="Domain card (default: the model's).")] = None,
    ks: Annotated[str, typer.Option(help="Recall cut-offs, comma-separated.")] = "1,5,10",
    json_out: Annotated[str | None, typer.Option("--json", help="Write the metrics JSON here.")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    device: Annotated[str, typer.Option(help="cpu | cuda.")] = "cpu",
) -> None:
    """Image->text and text->image recall@K (bootstrap 95% CIs, by patient when the manifest has ids)."""
    import medvlp
    from medvlp.data.manifest import read_manifest
    from medvlp.eval.retrieval import evaluate_retrieval

    cutoffs = _ks(ks)
    m = medvlp.load(model, domain=domain, device=device)
    manifest = read_manifest(data)
    metrics = evaluate_retrieval(m, manifest, ks=cutoffs, n_boot=n_boot, seed=seed, batch_size=batch_size)
    typer.echo(_table(metrics, f"retrieval on {data} (n={metrics['n']} images, {metrics['n_texts']} texts)"))
    for what in ("n_unreadable", "n_without_caption"):
        if metrics.get(what):
            typer.echo(f"note: {metrics[what]} rows left out ({what[2:].replace('_', ' ')})", err=True)
    _write_json(metrics, json_out)


def linear_probe_cmd(
    model: Annotated[str, typer.Option(help="Run folder, model folder, local-dir:/hf-hub: id.")],
    data: Annotated[str, typer.Option(help="Labelled test manifest (or one with a split column, without --train).")],
    train: Annotated[str | None, typer.Option(help="Labelled training manifest for the probe.")] = None,
    domain: Annotated[str | None, typer.Option(help="Domain card (default: the model's).")] = None,
    labels: Annotated[str | None, typer.Option(help="Comma-separated labels (default: the training labels).")] = None,
    k: Annotated[int | None, typer.Option(help="Shots per class: k-shot probes with repeated draws.")] = None,
    n_draws: Annotated[int, typer.Option(help="k-shot draws.")] = 10,
    c: Annotated[float | None, typer.Option("--C", help="Fixed inverse L2 strength (default: cross-validated).")] = None,
    json_out: Annotated[str | None, typer.Option("--json", help="Write the metrics JSON here.")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of folds, draws and bootstrap.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    device: Annotated[str, typer.Option(help="cpu | cuda.")] = "cpu",
) -> None:
    """Logistic-regression probe (or k-shot probes) on frozen image embeddings, metrics with 95% CIs."""
    import medvlp
    from medvlp.data.manifest import read_manifest
    from medvlp.eval.probe import evaluate_linear_probe

    test_m = read_manifest(data)
    if train is not None:
        train_m = read_manifest(train)
    else:
        # one manifest with a split column: fit on 'train', score on 'test'
        if "split" not in test_m.columns:
            raise ConfigError(f"{data}: give --train MANIFEST, or a 'split' column with train and test rows")
        train_m, test_m = test_m.split("train"), test_m.split("test")
        if len(train_m) == 0 or len(test_m) == 0:
            raise ConfigError(f"{data}: the split column needs both 'train' and 'test' rows "
                              f"(found {len(train_m)} train, {len(test_m)} test); or give --train")
    label_list = [s.strip() for s in labels.split(",")] if labels is not None else None
    m = medvlp.load(model, domain=domain, device=device)
    metrics = evaluate_linear_probe(m, train_m, test_m, labels=label_list, k=k, n_draws=n_draws, C=c,
                                    n_boot=n_boot, seed=seed, batch_size=batch_size)
    what = f"{k}-shot probe ({n_draws} draws)" if k is not None else "linear probe"
    typer.echo(_table(metrics, f"{what} on {data} (n_train={metrics['n_train']}, n_test={metrics['n']})"))
    excluded = sum(metrics["n_excluded"].values())
    if excluded:
        typer.echo(f"note: {excluded} rows had labels outside the label set and were left out", err=True)
    _write_json(metrics, json_out)


def register(app: typer.Typer) -> None:
    """Add ``retrieval`` and ``linear-probe`` to a typer app (the ``medvlp eval`` sub-app)."""
    app.command("retrieval", help="Image<->text retrieval recall@K (bootstrap CIs) on a manifest with captions.")(
        retrieval_cmd)
    app.command("linear-probe", help="Linear probe / k-shot on frozen image embeddings (metrics with CIs).")(
        linear_probe_cmd)
