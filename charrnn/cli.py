"""Command line: subcommand name -> function. Flags come from the config dataclasses.

Every user error ends here as one line on stderr and exit code 2; nothing
below this layer prints tracebacks for the user's mistakes.
"""
from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import warnings
from typing import Optional, Sequence

from charrnn import __version__
from charrnn.config import (
    IMPLS,
    LABEL_BY,
    QUANTIZE_MODES,
    WHICH,
    ModelConfig,
    TrainConfig,
    add_collection_flags,
    add_config_flags,
)
from charrnn.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (not usage + error) and exit code 2,
    and a mistyped flag or command names the closest one."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UserError(f"{message}{_choice_suggestion(message)}{_dash_value_hint(message)} (see '{self.prog} --help')")

    def parse_args(self, args=None, namespace=None):
        args, extras = self.parse_known_args(_attach_dash_values(self, sys.argv[1:] if args is None else args),
                                             namespace)
        if extras:  # argparse reports these from the top parser; name the subcommand's flags and help instead
            parser = _subparser(self, getattr(args, "command", None))
            parser.error(f"unrecognized arguments: {' '.join(extras)}{_flag_suggestion(parser, self, extras)}")
        return args


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help lines as written (epilogs keep their examples' layout), in a wider column for the flags."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=32)


def _attach_dash_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list:
    """`--prime -x` as `--prime=-x`: a value that begins with '-' (a prime, a separator, a path) is taken as
    the value of the option before it when it names none of the command's flags; argparse alone reads it as a
    flag and says "expected one argument". A token that is a flag, or the start of one, stays a flag."""
    argv = [str(a) for a in argv]
    command = next((a for a in argv if a in _subparsers(parser)), None)
    sub = _subparser(parser, command)
    takes_one = {o for a in sub._actions if a.nargs is None and a.option_strings for o in a.option_strings}
    flags = [o for p in (parser, sub) for a in p._actions for o in a.option_strings]

    def is_flag(token: str) -> bool:
        name = token.split("=", 1)[0]
        return any(f == name or (name.startswith("--") and f.startswith(name)) for f in flags)

    out = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if (token in takes_one and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1] != "--"
                and not is_flag(argv[i + 1])):
            out.append(f"{token}={argv[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _subparser(parser: argparse.ArgumentParser, command: Optional[str]) -> argparse.ArgumentParser:
    return _subparsers(parser).get(command, parser)


def _flag_suggestion(parser: argparse.ArgumentParser, top: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    """'; did you mean --temperature?' for the first unknown flag, or the commands it belongs to."""
    for word in extras:
        if not word.startswith("-"):
            continue
        flag = word.split("=", 1)[0]
        owners = [name for name, sub in _subparsers(top).items() if flag in sub._option_string_actions]
        if owners:
            return f"; {flag} is an option of {' and '.join(repr('charrnn ' + name) for name in owners)}"
        close = _closest(flag, parser._option_string_actions)
        if close:
            return f"; did you mean {close}?"
    return ""


def _closest(word: str, candidates) -> Optional[str]:
    """The one candidate that `word` begins, else the most similar one (difflib), else None."""
    candidates = list(candidates)
    starting = [c for c in candidates if c.startswith(word)]
    if len(starting) == 1:
        return starting[0]
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


def _dash_value_hint(message: str) -> str:
    """For "argument --prime: expected one argument": a value that _attach_dash_values could not take as the
    option's (it is a flag, the start of one, or '--') is still given with '='."""
    match = re.match(r"argument (\S+): expected one argument$", message)
    return f"; for a value that begins with '-', write {match.group(1).split('/')[-1]}=VALUE" if match else ""


def _choice_suggestion(message: str) -> str:
    """For argparse's "invalid choice: 'libary' (choose from ...)": "; did you mean 'library'?"."""
    match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
    if not match:
        return ""
    choices = re.findall(r"'([^']*)'", match.group(2)) or [c.strip() for c in match.group(2).split(",")]
    close = _closest(match.group(1), choices)
    return f"; did you mean {close!r}?" if close else ""


TRAIN_EPILOG = """\
Without --epochs, --max-iters or --max-time, training runs 10 epochs.
Precedence: explicit flags > --preset > defaults. With --resume, the run's saved settings replace
the defaults and the model's shape cannot change.

examples:
  charrnn train --data my_text.txt --out runs/mine --preset auto --max-time 600   # sized to text, budget, machine
  charrnn train --data tinyshakespeare --out runs/shakespeare --preset cpu-10min
  charrnn train --data my_text.txt --out runs/mine --hidden 512 --max-time 600
  charrnn train --data my_text.txt --out runs/mine --resume --max-time 1200
"""


def build_parser() -> argparse.ArgumentParser:
    from charrnn.train.presets import PRESETS

    parser = _Parser(prog="charrnn", description="Character-level RNN language models: train, sample, evaluate.",
                     epilog="'charrnn COMMAND --help' describes a command's flags and their defaults.")
    parser.add_argument("--version", action="version", version=f"charrnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    info = sub.add_parser("info", help="print corpus size and vocabulary, or what this machine can do",
                          description="Print the number of characters and distinct characters of a text, a folder "
                                      "of texts or several of them; with --device, the precisions and int8 "
                                      "kernels this machine runs.")
    info.add_argument("data", nargs="*", metavar="DATA",
                      help="UTF-8 text files or folders of them, or a corpus name (tinyshakespeare, pystdlib)")
    info.add_argument("--device", action="store_true",
                      help="instead of a text: the CPU, the precisions each engine can train in here (found by "
                           "trying) and which int8 kernels generation and ONNX Runtime use")
    add_collection_flags(info)
    info.add_argument("--doc-sep", default="\x1e", metavar="C",
                      help="character joining the documents of a collection "
                           "(default: \\x1e, the ASCII record separator)")
    info.add_argument("--label-by", choices=LABEL_BY, metavar="{folder,file,path}",
                      help="also list the labels `train --label-by` would find, with their sizes (default: none)")
    info.add_argument("--json", action="store_true", help='print {"characters": N, "vocab_size": V}; a collection '
                      'adds "files" and "skipped", --label-by "labels"')

    train = sub.add_parser("train", help="train a model (see README for presets)", epilog=TRAIN_EPILOG,
                           description="Train a character-level model on a text; checkpoints go to --out.")
    add_config_flags(train.add_argument_group("training"), TrainConfig)
    add_config_flags(train.add_argument_group("model"), ModelConfig)
    run = train.add_argument_group("presets and the run directory")
    run.add_argument("--preset", default=argparse.SUPPRESS, choices=tuple(PRESETS),
                     help="named settings (README: Presets): auto sizes the model to the text, the budget "
                          "(--max-time or --epochs) and this machine; explicit flags override a preset "
                          "(default: none)")
    run.add_argument("--overwrite", action="store_true", help="replace a run already in --out")

    from charrnn.infer.cli import add_eval_parser, add_sample_parser

    add_sample_parser(sub)
    add_eval_parser(sub)
    from charrnn.export.cli import add_export_parser

    add_export_parser(sub)

    serve = sub.add_parser("serve", help="a local web page: generate, look inside the model, training curves",
                           description="Serve the playground for one run on this machine; open the URL it prints.")
    serve.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="a run directory made by 'charrnn train'")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    serve.add_argument("--impl", choices=IMPLS, default="library", help="engine that generates (default: library)")
    serve.add_argument("--which", choices=WHICH, default="latest",
                       help="latest: model.safetensors; best: best.safetensors (default: latest)")
    serve.add_argument("--quantize", choices=QUANTIZE_MODES,
                       help="int8: generate with int8 layer weights in a compiled step (faster, slightly less exact) "
                            "(default: off, float32)")
    serve.set_defaults(handler=cmd_serve)
    return parser


def cmd_info(args) -> int:
    if args.device == bool(args.data):
        raise UserError("charrnn info takes a text (files, folders or a corpus name) or --device, not both or none "
                        "(see 'charrnn info --help')")
    if args.device:
        from charrnn import capabilities

        if args.include or args.exclude or args.doc_sep != "\x1e" or args.label_by:
            raise UserError("--include, --exclude, --doc-sep and --label-by describe a text; info --device takes "
                            "none of them")

        facts = capabilities.report()
        print(json.dumps(facts) if args.json else "\n".join(capabilities.report_lines(facts)))
        return 0
    from charrnn.data.dataset import describe
    from charrnn.data.documents import Spec, parse_separator

    lines, facts = describe(Spec(tuple(args.data), tuple(args.include), tuple(args.exclude),
                                 parse_separator(args.doc_sep), None, args.label_by))  # positional, not --data
    if args.json:
        print(json.dumps(facts, ensure_ascii=False))
    else:
        print("\n".join(lines))
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
