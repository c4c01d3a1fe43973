"""The command line: parses flags, calls the library, prints one summary. Nothing else.

One module a group of commands; this one makes the app (commands in the order ``--help`` lists
them) and turns errors into one line and an exit code."""

from __future__ import annotations

import sys

import typer

# typer vendors its own click; its exception classes are only reachable here.
from typer._click.exceptions import NoArgsIsHelpError, UsageError

from ..errors import MmpipeError
from ..extras import missing_extra
from .banks import bank_app
from .batch import demo, embed, moderate
from .common import err
from .indexing import index, search
from .serving import loadtest, route, serve
from .tuning import tune

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Multimodal inference at scale: embed and moderate images and text.")


@app.callback()
def _root() -> None:
    """Multimodal inference at scale: embed and moderate images and text."""


for command in (embed, moderate, serve, loadtest, tune, route, demo, index, search):
    app.command()(command)
app.add_typer(bank_app, name="bank")


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage and config errors are one line on stderr and exit code 2."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="mmpipe", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("mmpipe: aborted")
        sys.exit(130)
    except NoArgsIsHelpError:
        sys.exit(2)  # click has already printed the help
    except UsageError as exc:
        hint = f" (see 'mmpipe {exc.ctx.info_name} --help')" if exc.ctx and exc.ctx.parent else ""
        err.print(f"mmpipe: error: {exc.format_message()}{hint}", markup=False)
        sys.exit(2)
    except MmpipeError as exc:
        err.print(f"mmpipe: error: {exc}", markup=False)
        sys.exit(2)
    except ModuleNotFoundError as exc:  # an extra's module reached by a path no check foresaw
        args = sys.argv[1:] if argv is None else argv
        missing = missing_extra(exc, " ".join(["mmpipe", *[a for a in args if not a.startswith("-")][:1]]))
        if missing is None:
            raise
        err.print(f"mmpipe: error: {missing}", markup=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("mmpipe: interrupted; re-run the same command to resume")
        sys.exit(130)

