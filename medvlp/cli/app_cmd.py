"""``medvlp app diagnose|explain``: start a Streamlit app.

medvlp's flags: ``--host H`` (default 127.0.0.1), ``--token T`` (or ``$MEDVLP_APP_TOKEN``: the page asks for
it), ``--data-root DIR`` (server-side paths typed in the page must lie under DIR; without it, uploads only),
``--models a,b`` (the models the page may choose besides the demo model), ``--allow-training`` (the page may
train the demo model). Other options go to Streamlit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

from medvlp.app.settings import ENV_TOKEN, LOOPBACK, AppSettings, parse_models
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


OWN_FLAGS = {"--host": True, "--token": True, "--data-root": True, "--models": True, "--allow-training": False}


def split_flags(extra: list[str]) -> tuple[dict[str, str | bool], list[str]]:
    """medvlp's own app flags (``--host``, ``--token``, ``--data-root``, ``--models``, ``--allow-training``)
    and the rest (Streamlit's options), from the arguments after ``medvlp app NAME``."""
    own: dict[str, str | bool] = {}
    rest: list[str] = []
    i = 0
    while i < len(extra):
        arg = extra[i]
        key, _, inline = arg.partition("=")
        if key in OWN_FLAGS:
            if not OWN_FLAGS[key]:
                own[key] = True
            elif inline:
                own[key] = inline
            elif i + 1 < len(extra):
                own[key] = extra[i + 1]
                i += 1
            else:
                raise ConfigError(f"{key} needs a value")
        else:
            rest.append(arg)
        i += 1
    return own, rest


def settings_for(own: dict[str, str | bool]) -> AppSettings:
    """The app settings the flags ask for (``--token`` falls back to ``$MEDVLP_APP_TOKEN``)."""
    given = own.get("--data-root")
    root: Path | None = None
    if given:
        if not Path(str(given)).expanduser().is_dir():
            raise ConfigError(f"--data-root {given}: no such folder")
        root = Path(str(given)).expanduser().resolve()
    token = str(own["--token"]) if own.get("--token") else os.environ.get(ENV_TOKEN) or None
    return AppSettings(token=token, data_root=root or None, models=parse_models(str(own.get("--models") or "")),
                       allow_training=bool(own.get("--allow-training")))


def streamlit_command(name: str, extra: list[str]) -> tuple[list[str], dict[str, str]]:
    """The streamlit command line and environment for app ``name`` (the upload limit set on both; the
    app's own flags reach the script as environment variables, see :mod:`medvlp.app.settings`)."""
    from medvlp.app.support import MAX_UPLOAD_MB

    own, extra = split_flags(extra)
    settings = settings_for(own)
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
        cmd += ["--server.address", str(own.get("--host") or "127.0.0.1")]  # loopback unless --host says
    if not any(a.startswith("--client.toolbarMode") for a in extra):
        cmd += ["--client.toolbarMode", "viewer"]  # an app for users: no developer "Deploy" menu
    env = {**os.environ, "MEDVLP_MAX_UPLOAD_MB": limit, **settings.to_env()}
    if not settings.token:
        env.pop(ENV_TOKEN, None)
    return [*cmd, *extra], env


def network_warning(cmd: list[str], env: dict[str, str]) -> str | None:
    """The warning printed when the app listens beyond loopback (None on loopback)."""
    addr = cmd[cmd.index("--server.address") + 1] if "--server.address" in cmd else next(
        (a.split("=", 1)[1] for a in cmd if a.startswith("--server.address=")), "127.0.0.1")
    if addr in LOOPBACK:
        return None
    guard = ("an access token only (no user accounts, no TLS)" if env.get(ENV_TOKEN) else
             "no authentication: anyone who reaches the port can use it (add --token)")
    return (f"medvlp: warning: the app listens on {addr} with {guard}; put an authenticating reverse proxy "
            "(SSO, TLS, audit log) in front of any shared deployment")


def _launch(name: str, extra: list[str]) -> None:
    try:
        import streamlit  # noqa: F401
    except ImportError as e:
        raise ConfigError("the apps need Streamlit: pip install 'medvlp[app]'") from e
    cmd, env = streamlit_command(name, extra)
    warning = network_warning(cmd, env)
    if warning:
        print(warning, file=sys.stderr)
    if os.name == "posix":
        # Become the Streamlit server: a signal sent to `medvlp app` (Ctrl-C, a supervisor's SIGTERM)
        # then reaches the server itself instead of orphaning it.
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvpe(cmd[0], cmd, env)
    raise typer.Exit(subprocess.call(cmd, env=env))


@app.command("diagnose", context_settings=_CTX, help="Zero-shot diagnosis app (upload images, see probabilities). Flags: --host, --token, --data-root, "
                                                         "--models, --allow-training; other options go to Streamlit.")
def diagnose(ctx: typer.Context) -> None:
    _launch("diagnose", list(ctx.args))


@app.command("explain", context_settings=_CTX, help="Explanation app (concept scores, heatmaps, Grad-CAM). Flags: --host, --token, --data-root, "
                                                        "--models, --allow-training; other options go to Streamlit.")
def explain(ctx: typer.Context) -> None:
    _launch("explain", list(ctx.args))
