"""The ``medai`` command: sub-commands are registered here, implemented beside it."""

from __future__ import annotations

import typer

from medai import __version__
from medai.cli.bundle_cmd import export_cmd, predict_cmd
from medai.cli.console import console, setup_logging
from medai.cli.data_cmd import data_app
from medai.cli.deid_cmd import deid
from medai.cli.demo import demo
from medai.cli.eval_cmd import evaluate_cmd
from medai.cli.explain_cmd import explain_cmd
from medai.cli.io_cmd import io_app
from medai.cli.radiomics_cmd import radiomics_app
from medai.cli.seg_cmd import register_seg_commands
from medai.cli.serve_cmd import serve_app
from medai.cli.synth_cmd import synth_app

app = typer.Typer(
    name="medai",
    help="Medical-imaging AI: from DICOM to a validated model in the hospital workflow.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(io_app, name="io")
app.add_typer(data_app, name="data")
app.command("demo")(demo)
app.add_typer(synth_app, name="synth")
app.add_typer(radiomics_app, name="radiomics")
app.command("deid")(deid)
register_seg_commands(app)
app.command("export")(export_cmd)
app.command("predict")(predict_cmd)
app.command("evaluate")(evaluate_cmd)
app.command("explain")(explain_cmd)
app.add_typer(serve_app, name="serve")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details.")) -> None:
    setup_logging(verbose)


@app.command()
def version() -> None:
    """Print medai's version and the versions of its key dependencies."""
    import monai
    import numpy
    import pydicom
    import torch

    console.print(f"medai {__version__}")
    console.print(
        f"torch {torch.__version__} · monai {monai.__version__} · "
        f"pydicom {pydicom.__version__} · numpy {numpy.__version__}"
    )


if __name__ == "__main__":  # pragma: no cover
    app()
