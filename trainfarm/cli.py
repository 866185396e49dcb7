"""The `trainfarm` command: the app, its global options and error handling; commands live in
`cli_jobs`, `cli_data`, `cli_fairshare`, `cli_auth` (login, tokens), `cli_users` (users, limits,
audit), `cli_experiments` (compare, rerun), `cli_sweeps`, `cli_webhooks` and `cli_admin`, the
farm-running ones in `standalone`."""

from __future__ import annotations

from typing import Annotated, Any

import click
import typer
from pydantic import ValidationError
from typer._click import Context  # typer ships its own click: this is what commands receive
from typer.core import TyperGroup

from shared.errors import TrainfarmError
from shared.settings import Settings, get_settings
from trainfarm import (
    cli_admin,
    cli_auth,
    cli_data,
    cli_db,
    cli_experiments,
    cli_fairshare,
    cli_jobs,
    cli_sweeps,
    cli_users,
    cli_webhooks,
)
from trainfarm.client import ApiClient, ApiError
from trainfarm.token_store import find_token


def report(exc: TrainfarmError) -> None:
    """`error: <message> (field: <field>)` on stderr: what went wrong, never a traceback."""
    field = f" (field: {exc.field})" if exc.field else ""
    click.echo(f"error: {exc.message}{field}", err=True)


class Commands(TyperGroup):
    """Every command runs inside this, so expected failures end as a message and exit status 1."""

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            if exc.status == 401:
                client = ctx.find_object(ApiClient)
                url = client.base_url if client else "the master"
                click.echo(f"error: not logged in to {url}: run trainfarm login ({exc.message})", err=True)
            else:
                report(exc)
            raise typer.Exit(1) from None
        except TrainfarmError as exc:
            report(exc)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=Commands,
    help="Submit training jobs to a trainfarm, follow their logs and fetch what they produce.",
    epilog="The master's address comes from --api-url, else TRAINFARM_API_URL, else http://127.0.0.1:8000.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)


@app.callback()
def connect(
    ctx: typer.Context,
    api_url: Annotated[
        str | None,
        typer.Option(
            "--api-url",
            metavar="URL",
            help="The master's base URL.  \\[default: $TRAINFARM_API_URL or http://127.0.0.1:8000]",
            show_default=False,
        ),
    ] = None,
) -> None:
    # With `--api-url`, broken TRAINFARM_* settings (a worker node's, say) do not stop the CLI: it
    # goes on with the token `trainfarm login` saved.
    try:
        settings: Settings | None = get_settings()
    except ValidationError as exc:
        if api_url is None:
            problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            click.echo(
                f"error: invalid TRAINFARM_* settings: {problems}; fix them or pass --api-url", err=True
            )
            raise typer.Exit(1) from None
        settings = None
    url = (api_url or (settings.api_url if settings else "")).rstrip("/").removesuffix("/api")
    token, source = find_token(url, settings)
    client = ApiClient(url, token=token)
    client.token_source = source
    ctx.call_on_close(client.close)
    ctx.obj = client


app.command(cls=cli_jobs.SubmitCommand)(cli_jobs.submit)
for command in (cli_jobs.jobs, cli_jobs.show, cli_jobs.logs, cli_jobs.cancel):
    app.command()(command)
app.command()(cli_data.artifacts)
app.add_typer(cli_data.datasets, name="datasets")
app.command()(cli_data.nodes)
app.command()(cli_fairshare.fairshare)
app.add_typer(cli_db.db, name="db")
app.command()(cli_auth.login)
app.command()(cli_auth.logout)
app.command()(cli_auth.whoami)
app.add_typer(cli_auth.tokens, name="tokens")
app.add_typer(cli_users.users, name="users")
app.command()(cli_users.audit)
app.add_typer(cli_admin.admin, name="admin")
cli_experiments.register(app)
app.add_typer(cli_sweeps.sweep, name="sweep")
app.add_typer(cli_webhooks.webhooks, name="webhooks")


def main() -> None:
    app()


from trainfarm.standalone import register  # noqa: E402 - adds the farm-running commands last

register(app)

if __name__ == "__main__":
    main()
