"""``medvlp app diagnose|explain``: start a Streamlit app (extra options go to streamlit)."""

from __future__ import annotations

import subprocess
import sys

import typer

from medvlp.errors import ConfigError

app = typer.Typer(no_args_is_help=True)

_CTX = {"allow_extra_args": True, "ignore_unknown_options": True}


def _launch(name: str, extra: list[str]) -> None:
    from medvlp.resources import apps_dir

    script = apps_dir() / f"{name}.py"
    if not script.is_file():
        raise ConfigError(f"app script {script} is missing; reinstall medvlp")
    try:
        import streamlit  # noqa: F401
    except ImportError as e:
        raise ConfigError("the apps need Streamlit: pip install 'medvlp[app]'") from e
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
           "--browser.gatherUsageStats", "false", *extra]
    raise typer.Exit(subprocess.call(cmd))


@app.command("diagnose", context_settings=_CTX, help="Zero-shot diagnosis app (upload images, see probabilities).")
def diagnose(ctx: typer.Context) -> None:
    _launch("diagnose", list(ctx.args))


@app.command("explain", context_settings=_CTX, help="Explanation app (concept scores, heatmaps, Grad-CAM).")
def explain(ctx: typer.Context) -> None:
    _launch("explain", list(ctx.args))
