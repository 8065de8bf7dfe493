"""Command line: subcommand name -> function. Flags come from the config dataclasses.

Every user error ends here as one line on stderr and exit code 2; nothing
below this layer prints tracebacks for the user's mistakes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from typing import Optional, Sequence

from charrnn.config import IMPLS, QUANTIZE_MODES, WHICH, ModelConfig, TrainConfig
from charrnn.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (not usage + error) and exit code 2."""

    def error(self, message: str):
        raise UserError(f"{message} (see '{self.prog} --help')")


def add_config_flags(parser: argparse.ArgumentParser, cls, skip: Sequence[str] = ()) -> None:
    """One flag per dataclass field; defaults are SUPPRESSed so we can tell which flags were given."""
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {default})")
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        hint = str(hints[f.name])
        if "bool" in hint:
            parser.add_argument(flag, action="store_true", **kwargs)
        else:
            kind = int if "int" in hint else float if "float" in hint else str
            parser.add_argument(flag, type=kind, metavar=f.name.upper(), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="charrnn", description="Character-level RNN language models: train, sample, evaluate.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    info = sub.add_parser("info", help="print corpus size and vocabulary")
    info.add_argument("data", help="a UTF-8 text file or a corpus name (tinyshakespeare, pystdlib)")
    info.add_argument("--json", action="store_true", help='print {"characters": N, "vocab_size": V}')

    train = sub.add_parser("train", help="train a model (see README for presets)")
    add_config_flags(train, TrainConfig)
    add_config_flags(train, ModelConfig)
    train.add_argument("--preset", default=argparse.SUPPRESS, help="named settings (cpu-10min, gpu); explicit flags "
                                                                   "override them")
    train.add_argument("--overwrite", action="store_true", help="replace a run already in --out")

    from charrnn.infer.cli import add_eval_parser, add_sample_parser

    add_sample_parser(sub)
    add_eval_parser(sub)
    from charrnn.export.cli import add_export_parser

    add_export_parser(sub)

    serve = sub.add_parser("serve", help="a local web page: generate, look inside the model, training curves")
    serve.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="a run directory made by 'charrnn train'")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--impl", choices=IMPLS, default="library", help="engine that generates (default library)")
    serve.add_argument("--which", choices=WHICH, default="latest", help="latest: model.safetensors; best: "
                                                                        "best.safetensors (default: latest)")
    serve.add_argument("--quantize", choices=QUANTIZE_MODES, help="int8: generate with int8 layer weights in a "
                                                                  "compiled step (faster, slightly less exact)")
    serve.set_defaults(handler=cmd_serve)
    return parser


def cmd_info(args) -> int:
    from charrnn.data.corpus import load_corpus

    corpus = load_corpus(args.data)
    if args.json:
        print(json.dumps({"characters": corpus.characters, "vocab_size": len(corpus.vocab)}))
    else:
        print(corpus.summary())
    return 0


def cmd_train(args) -> int:
    from charrnn.train.cli import run_train

    return run_train(vars(args))


def cmd_serve(args) -> int:
    from charrnn.serve import run_serve  # FastAPI and uvicorn are imported only here (the `serve` extra)

    return run_serve(args)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"  # for a user at a terminal: what happened, not where in charrnn


def main(argv: Optional[Sequence[str]] = None) -> int:
    warnings.formatwarning = _one_line_warning
    try:
        args = build_parser().parse_args(argv)
        handler = {"info": cmd_info, "train": cmd_train}.get(args.command) or args.handler
        code = handler(args)
    except UserError as e:
        message = str(e).replace("\r", "\\r").replace("\n", "\\n")  # always one line, whatever a path holds
        print(f"charrnn: error: {message}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        print("charrnn: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        code = 0  # e.g. `charrnn sample | head`
    return code


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
