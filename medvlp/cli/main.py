"""The ``medvlp`` command. Each command group lives in its own thin module over the library."""

from __future__ import annotations

import importlib
import sys

import click
import typer

from medvlp.cli import eval as eval_cmd
from medvlp.cli import train
from medvlp.errors import MedvlpError

app = typer.Typer(
    name="medvlp",
    help="Domain-specific medical vision-language pretraining, zero-shot diagnosis and explanation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("pretrain", help="Pretrain a CLIP-style model on a manifest (or the domain's demo corpus).")(train.pretrain)
app.command("models", help="List registered model configs.")(train.models)
app.command("zeroshot", help="Zero-shot diagnosis of images (PNG/JPEG/DICOM/TIFF).")(eval_cmd.zeroshot)
app.add_typer(eval_cmd.app, name="eval", help="Evaluate a model on a labelled manifest.")

# Command groups: (module, name, help). Each module exposes a typer ``app``.
_GROUPS = (
    ("medvlp.cli.data", "data", "Import, validate, split and shard data."),
    ("medvlp.cli.wsi", "wsi", "Whole-slide images: tiling and slide-level zero-shot."),
    ("medvlp.cli.ontology", "ontology", "Concept graphs: stats, search, show, match."),
    ("medvlp.cli.app_cmd", "app", "Streamlit apps: diagnose, explain."),
)
for _module, _name, _help in _GROUPS:
    app.add_typer(importlib.import_module(_module).app, name=_name, help=_help)


def error_line(err: BaseException) -> str:
    """The one stderr line of a user error: ``medvlp: error: <reason>`` (whitespace folded)."""
    return f"medvlp: error: {' '.join(str(err).split())}"


def main(argv: list[str] | None = None) -> None:
    """Entry point, and the one CLI error handler.

    Every :class:`~medvlp.errors.MedvlpError` a command raises prints one line ``medvlp: error: <reason>``
    on stderr and exits 1 (commands that report partial results exit 2 themselves through ``typer.Exit``);
    usage errors keep click's message and exit code; any other exception keeps its traceback (a bug).
    """
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="medvlp")
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        print("medvlp: aborted", file=sys.stderr)
        sys.exit(130)
    except MedvlpError as e:
        print(error_line(e), file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("medvlp: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
