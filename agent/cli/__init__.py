"""The `bakehouse` command line. Each area registers its commands in a module of this package."""
from __future__ import annotations

import functools

import click

from ..home import ENV_HOME, resolve_home


def home_option(f):
    """Every command takes --home (env BAKEHOUSE_HOME); the command receives a resolved Path."""

    @click.option(
        "--home",
        "home",
        envvar=ENV_HOME,
        type=click.Path(file_okay=False),
        help=f"Data home (model cache, DB, adapters). Env: {ENV_HOME}.",
    )
    @functools.wraps(f)
    def wrapper(*args, home=None, **kwargs):
        try:
            kwargs["home"] = resolve_home(home)
        except OSError as e:
            raise click.ClickException(f"cannot use data home {home!r}: {e}") from e
        return f(*args, **kwargs)

    return wrapper


def domain_errors(*kinds):
    """Turn the listed domain errors into a one-line ClickException (exit code 1)."""

    def deco(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            try:
                return f(*args, **kwargs)
            except kinds as e:
                raise click.ClickException(str(e)) from e

        return wrapper

    return deco


@click.group()
@click.version_option(package_name="bakehouse")
def cli():
    """bakehouse: an LLM agent that learns into its weights (Prompt Baking + vLLM multi-LoRA)."""


from . import bake as _bake  # noqa: E402,F401  (registers commands)
from . import serve as _serve  # noqa: E402,F401
from . import memory as _memory  # noqa: E402,F401
from . import run as _run  # noqa: E402,F401
from . import trust as _trust  # noqa: E402,F401
