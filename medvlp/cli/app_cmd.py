"""``medvlp app diagnose|explain``: start a Streamlit app (extra options go to streamlit)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

from medvlp.errors import ConfigError

app = typer.Typer(no_args_is_help=True)

_CTX = {"allow_extra_args": True, "ignore_unknown_options": True}


def app_script(name: str) -> Path:
    """Path of the bundled app ``name`` (``apps/<name>.py`` in a checkout, ``medvlp/_bundled/apps`` in a wheel).

    Raises:
        ConfigError: the apps folder or the script is missing (a broken install).
    """
    from medvlp.resources import apps_dir

    try:
        script = apps_dir() / f"{name}.py"
    except FileNotFoundError as e:
        raise ConfigError(f"{e}") from None
    if not script.is_file():
        raise ConfigError(f"app script {script} is missing; reinstall medvlp")
    return script


def streamlit_command(name: str, extra: list[str]) -> tuple[list[str], dict[str, str]]:
    """The streamlit command line and environment for app ``name`` (the upload limit set on both)."""
    from medvlp.explain.app_support import MAX_UPLOAD_MB

    script = app_script(name)
    limit = str(MAX_UPLOAD_MB)
    for i, arg in enumerate(extra):  # the user's own limit wins, and the app's check follows it
        if arg.startswith("--server.maxUploadSize"):
            limit = arg.split("=", 1)[1] if "=" in arg else (extra[i + 1] if i + 1 < len(extra) else limit)
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
           "--browser.gatherUsageStats", "false"]
    if not any(a.startswith("--server.maxUploadSize") for a in extra):
        cmd += ["--server.maxUploadSize", limit]
    if not any(a.startswith("--server.address") for a in extra):
        cmd += ["--server.address", "127.0.0.1"]  # loopback unless the user names an address
    if not any(a.startswith("--client.toolbarMode") for a in extra):
        cmd += ["--client.toolbarMode", "viewer"]  # an app for users: no developer "Deploy" menu
    env = {**os.environ, "MEDVLP_MAX_UPLOAD_MB": limit}
    return [*cmd, *extra], env


def _launch(name: str, extra: list[str]) -> None:
    try:
        import streamlit  # noqa: F401
    except ImportError as e:
        raise ConfigError("the apps need Streamlit: pip install 'medvlp[app]'") from e
    cmd, env = streamlit_command(name, extra)
    addr = cmd[cmd.index("--server.address") + 1] if "--server.address" in cmd else next(
        (a.split("=", 1)[1] for a in cmd if a.startswith("--server.address=")), "127.0.0.1")
    if addr not in ("127.0.0.1", "localhost", "::1"):
        print(f"medvlp: warning: the app listens on {addr} with no authentication: anyone who reaches the "
              "port can use it; put an authenticating proxy in front of it", file=sys.stderr)
    if os.name == "posix":
        # Become the Streamlit server: a signal sent to `medvlp app` (Ctrl-C, a supervisor's SIGTERM)
        # then reaches the server itself instead of orphaning it.
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvpe(cmd[0], cmd, env)
    raise typer.Exit(subprocess.call(cmd, env=env))


@app.command("diagnose", context_settings=_CTX, help="Zero-shot diagnosis app (upload images, see probabilities).")
def diagnose(ctx: typer.Context) -> None:
    _launch("diagnose", list(ctx.args))


@app.command("explain", context_settings=_CTX, help="Explanation app (concept scores, heatmaps, Grad-CAM).")
def explain(ctx: typer.Context) -> None:
    _launch("explain", list(ctx.args))
