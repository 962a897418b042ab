"""The ``arbiter`` command line: one module per group of commands, registered here in the
order ``arbiter --help`` lists them."""

from __future__ import annotations

import typer
from pydantic import ValidationError
from rich.markup import escape

from app.cli import files, releases, schema, serving, training
from app.cli.audit import app_role, audit_cli, erase
from app.cli.context import err
from app.cli.keys import keys_cli
from app.cli.members import members_cli
from app.cli.outcomes import outcomes_cli
from app.errors import ArbiterError
from app.logs import configure_logging
from app.settings import Settings

cli = typer.Typer(
    help="Arbiter: explained, reviewed ensemble predictions over GraphQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
cli.add_typer(keys_cli, name="keys")
cli.add_typer(audit_cli, name="audit")
cli.add_typer(members_cli, name="members")
cli.add_typer(outcomes_cli, name="outcomes")
cli.command()(erase)
cli.command("app-role")(app_role)
cli.command()(serving.migrate)
cli.command()(training.train)
cli.command("predict-file")(files.predict_file)
cli.command()(releases.releases)
cli.command()(releases.promote)
cli.command()(releases.rollback)
cli.command()(serving.serve)
cli.command()(serving.worker)
cli.command()(serving.demo)
cli.command()(schema.schema)


def main() -> None:
    """The ``arbiter`` console script: settings and logging, then the command."""
    try:
        settings = Settings()
        configure_logging(settings.log_format, settings.log_level)
        cli()
    except ValidationError as exc:
        err.print(f"[red]error:[/] invalid settings (ARBITER_* variables): {escape(str(exc))}")
        raise SystemExit(2) from None
    except ArbiterError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise SystemExit(2) from None
