"""`stellar-dist` command line: simulate, pack, train, predict, export, evaluate, cluster, select, config.

Every command is one module here with `add_arguments(parser)` and `run(args)`, which calls the command's Python
function (pack, train_in_stages, predict, export, select, ...); this folder is the only place commands are spelled.
The same commands run as `python -m stellar_dist COMMAND ...`, and so under several processes:

    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml -m stellar_dist train --config configs/demo.yaml
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml -m stellar_dist predict --model runs/demo ...
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..core.errors import UserError, exit_on_user_error

# name: (its line in `stellar-dist --help`, the module of this folder that defines it)
COMMANDS = {
    "simulate": ("render SDSS-like cutouts (the embedded default dataset)", "simulate"),
    "pack": ("pack a catalog into WebDataset shards; --verify re-checks shards", "pack"),
    "train": ("train from packed shards (one process; several: accelerate launch -m stellar_dist train)", "train"),
    "predict": ("classify new objects (CSV, folder of images or shards) with a trained model", "predict"),
    "export": ("the model as TorchScript or ONNX, checked against PyTorch", "export"),
    "evaluate": ("test-split report for a checkpoint's EMA model", "evaluate"),
    "cluster": ("k-means of a checkpoint's features: Hungarian accuracy, NMI, ARI, linear probe, cluster grids",
                "cluster"),
    "select": ("which unlabeled objects to get spectra for next (cold start, or warm from a trained model)", "select"),
    "config": ("print the resolved config of --config + overrides, or (--keys) every key with its meaning", "config"),
}


def _command(name: str):
    return importlib.import_module(f".{COMMANDS[name][1]}", __name__)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Every command is listed, but only the one named in `argv` gets its arguments (and imports its module):
    `stellar-dist --help` and `stellar-dist pack --help` answer in well under a second, without torch."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    try:
        installed = version("stellar-dist")
    except PackageNotFoundError:  # run from a checkout without `pip install`
        installed = __version__
    parser = argparse.ArgumentParser(prog="stellar-dist", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"stellar-dist {installed}")
    commands = parser.add_subparsers(dest="command", required=True)
    named = next((word for word in (sys.argv[1:] if argv is None else argv) if word in COMMANDS), None)
    for name, (help_line, _) in COMMANDS.items():
        if named is None or name == named:
            command = commands.add_parser(name, help=help_line, description=help_line,
                                          formatter_class=argparse.RawDescriptionHelpFormatter,
                                          epilog=_command(name).__doc__ if name == named else None)
            if name == named:
                _command(name).add_arguments(command)
    return parser


def _sweep_style(argv: list[str]) -> list[str]:
    """W&B sweep agents pass overrides as `--train.lr=0.01`: for `train` and `config`, `--KEY=VALUE` whose KEY is
    not an option of the command is read as the override KEY=VALUE."""
    command = next((word for word in argv if word in COMMANDS), None)
    if command not in ("train", "config"):
        return argv
    options = {"--config", "--keys", "--help"}
    return [word[2:] if word.startswith("--") and "=" in word and word.split("=", 1)[0] not in options else word
            for word in argv]


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    argv = _sweep_style(sys.argv[1:] if argv is None else list(argv))
    args = build_parser(argv).parse_args(argv)
    if getattr(args, "workers", 0) < 0:
        raise UserError(f"--workers must be 0 or more (got {args.workers})")
    try:
        _command(args.command).run(args)
    finally:  # refused or done: a group left to the interpreter's exit can abort a rank (core/dist.close)
        if "torch.distributed" in sys.modules:  # only a command that imported torch can have started a group
            from ..core import dist

            dist.close()
