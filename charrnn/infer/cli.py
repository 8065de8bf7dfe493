"""`charrnn sample` and `charrnn eval`: flags -> the Python API (api.py).

Options are validated here once, with the command line's wording, and handed to the API's
`*_checked` methods, which trust them.
"""
from __future__ import annotations

import json
import sys

import numpy as np

from charrnn.config import DEVICES, IMPLS, QUANTIZE_MODES, WHICH
from charrnn.data.vocab import format_chars
from charrnn.errors import UserError
from charrnn.infer.sampling import UNKNOWN_CHOICES, sampling_options

SEPARATOR = "\n\n----- sample {index} of {total} -----\n"

SAMPLE_EPILOG = """\
Knobs compose in this order: temperature, then --top-k, then --top-p, then the draw.

examples:
  charrnn sample --checkpoint runs/shakespeare --which best --prime "ROMEO:" --length 300 --temperature 0.8
  charrnn sample --checkpoint runs/shakespeare --prime "ROMEO:" --top-p 0.9 --num-samples 3 --seed 1
  charrnn sample --checkpoint runs/shakespeare --prime "ROMEO:" --length 60 --beam 5
  charrnn sample --checkpoint runs/poets --label dickinson --length 300   # a run trained with --label-by
"""

EVAL_EPILOG = """\
The text is read as one stream from a zero state; every character after the first is predicted.

examples:
  charrnn eval --checkpoint runs/shakespeare --which best --data my_text.txt --unknown skip --json
  charrnn eval --checkpoint runs/poets --data poem.txt --by-label   # which label fits the text best
"""


def _common(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="RUN_DIR", help="a run directory made by 'charrnn train'")
    source.add_argument("--onnx", metavar="MODEL.onnx", help="a file made by 'charrnn export --format onnx', run by "
                        "ONNX Runtime (the vocabulary and config come from the file)")
    parser.add_argument("--impl", choices=IMPLS, default="library",
                        help="engine to run; any engine reads any run (default: library)")
    parser.add_argument("--which", choices=WHICH, default="latest",
                        help="latest: model.safetensors; best: best.safetensors, the lowest validation loss "
                             "(default: latest)")
    parser.add_argument("--device", default="cpu", choices=DEVICES, help="torch and TensorFlow engines (default: cpu)")
    parser.add_argument("--quantize", choices=QUANTIZE_MODES,
                        help="int8: layer weights in int8, run by a compiled step (CPU): several times faster "
                             "generation, slightly less exact (README) (default: off, float32)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--label", metavar="NAME",
                        help="a run trained with labels (--label-by): the label to generate or score under; "
                             "required there, refused for a run without labels (default: none)")


def add_sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="generate text from a trained run", epilog=SAMPLE_EPILOG,
                       description="Generate text from a trained run: the prime, then --length new characters.")
    _common(p)
    primes = p.add_mutually_exclusive_group()
    primes.add_argument("--prime", default="",
                        help="text fed first to warm the state; printed before the sample (default: none: the model "
                             "starts from a newline)")
    primes.add_argument("--prime-file", metavar="PATH",
                        help="read the prime from a UTF-8 text file (read as training reads)")
    p.add_argument("--length", type=int, default=500, metavar="N",
                   help="characters to generate, at least 1 (default: 500)")
    p.add_argument("--temperature", type=float, metavar="T",
                   help="> 0; lower is more conservative (default: 1.0); not with --greedy or --beam")
    p.add_argument("--top-k", type=int, metavar="K",
                   help="sample only among the k most likely characters (applied after temperature) (default: off)")
    p.add_argument("--top-p", type=float, metavar="P",
                   help="sample from the smallest set reaching probability p (after top-k) (default: off)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely character (argmax)")
    p.add_argument("--beam", type=int, metavar="K",
                   help="beam search with K hypotheses: the most likely continuation (one sample; no sampling knobs) "
                        "(default: off, sample)")
    p.add_argument("--seed", type=int, metavar="S", help="make the output reproducible (default: a fresh random seed)")
    p.add_argument("--num-samples", type=int, default=1, metavar="N",
                   help="generate N samples as one batch (default: 1)")
    p.add_argument("--unknown", choices=UNKNOWN_CHOICES, default="error",
                   help="prime characters outside the vocabulary: error, or skip them with a warning (default: error)")
    p.add_argument("--stop-at-sep", action="store_true",
                   help="end each sample at the document separator of a run trained on a collection: whole documents "
                        "(an empty prime starts a new document); --length is then the most characters "
                        "(default: off)")
    p.set_defaults(handler=cmd_sample)


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="loss and bits per character of a text", epilog=EVAL_EPILOG,
                       description="Loss (nats per character) and bits per character of a text under a trained run.")
    _common(p)
    p.add_argument("--data", required=True, nargs="+", metavar="DATA",
                   help="UTF-8 text files or folders of them, or a corpus name (tinyshakespeare, pystdlib); "
                        "documents are joined by the run's separator")
    from charrnn.config import add_collection_flags

    add_collection_flags(p)
    p.add_argument("--unknown", choices=UNKNOWN_CHOICES, default="error",
                   help="characters outside the model's vocabulary: error, or skip them and report how many "
                        "(default: error)")
    p.add_argument("--by-label", action="store_true",
                   help="a run trained with labels: the text's loss under every label, best fit first (with --json: "
                        "a JSON list); not with --label")
    p.set_defaults(handler=cmd_eval)


def _check_sample_flags(args):
    """Every sample option, checked once: ranges, and no combination where one flag would be silently ignored."""
    from charrnn.infer.sampling import count

    if args.length < 1:
        raise UserError(f"--length {args.length} must be at least 1")
    count("num_samples", args.num_samples, 1, True)
    if args.beam is not None:
        count("beam", args.beam, 1, True)
        ignored = [flag for flag, given in (("--num-samples", args.num_samples != 1),
                                            ("--temperature", args.temperature is not None),
                                            ("--top-k", args.top_k is not None), ("--top-p", args.top_p is not None),
                                            ("--greedy", args.greedy), ("--seed", args.seed is not None)) if given]
        if ignored:
            raise UserError(f"--beam finds the one most likely continuation and ignores {', '.join(ignored)}; "
                            "drop them, or drop --beam to sample")
        return None
    return sampling_options(args.temperature, args.top_k, args.top_p, args.greedy, cli=True)


def _load(args):
    """The model the command line names: a run directory, or an exported .onnx file."""
    from charrnn.infer.api import load, load_onnx

    if args.onnx:
        if args.quantize:
            raise UserError("--quantize applies to --checkpoint; an .onnx file is quantized when it is exported "
                            "('charrnn export --format onnx --quantize int8')")
        for flag, default in (("which", "latest"), ("impl", "library"), ("device", "cpu")):
            if getattr(args, flag) != default:
                raise UserError(f"--{flag} applies to --checkpoint only; --onnx runs the file in ONNX Runtime on the "
                                f"CPU")
        return load_onnx(args.onnx)

    from charrnn.devices import resolve_device

    resolve_device(args.device, args.impl)  # checked here first, so that a refusal names the flags
    return load(args.checkpoint, impl=args.impl, which=args.which, device=args.device, quantize=args.quantize)


def _warn_if_exported_before_symbols(model) -> None:
    """An .onnx file from before the separator and unknown symbol were recorded, of a run that likely had one
    (the default separator or U+FFFD in its vocabulary): say once, after every check, why it may differ from the run."""
    if not model.symbols_recorded and {"\x1e", "\ufffd"} & set(model.vocab.chars):
        print(f"warning: {model.path} was exported by an older charrnn that did not record the run's document "
              "separator or unknown symbol: an empty prime starts from a newline and U+FFFD can be drawn; "
              "export the run again", file=sys.stderr)


def _settings(args) -> dict:
    """The model settings a --json report names: the engine, weights and quantization used (onnx: the file)."""
    if args.onnx:
        return {"impl": "onnx", "onnx": args.onnx, "which": None, "quantize": None}
    return {"impl": args.impl, "which": args.which, "quantize": args.quantize}


def cmd_sample(args) -> int:
    from charrnn.data.textfile import read_text_file

    options = _check_sample_flags(args)
    prime = args.prime if args.prime_file is None else read_text_file(args.prime_file, "--prime-file")
    model = _load(args)
    label = model.label_index(args.label, "cli")
    stop = _separator(model, args.checkpoint) if args.stop_at_sep else None
    prime = model.prime(prime, args.unknown, audience="cli")  # checked (and cleaned) before anything is printed
    _warn_if_exported_before_symbols(model)
    rng = np.random.default_rng(args.seed)
    if options is None:
        texts = [model.beam_checked(prime, args.length, args.beam, label)]
    elif args.num_samples == 1 and not args.json:
        characters = model.stream_checked(prime, args.length, options, rng, label)
        sys.stdout.write(prime)
        for ch in characters:
            if ch == stop:
                break  # the document is whole
            sys.stdout.write(ch)
            sys.stdout.flush()  # stream as it is generated
        sys.stdout.write("\n")
        return 0
    else:
        texts = model.sample_checked(prime, args.length, options, rng, args.num_samples, label)
    if stop:  # each text up to the first separator it generated (the prime is kept whole)
        texts = [text[: len(prime)] + text[len(prime):].split(stop, 1)[0] for text in texts]
    if args.json:
        settings = {"beam": args.beam} if options is None else {**options.as_dict(), "seed": args.seed}
        labelled = {"label": args.label} if args.label is not None else {}
        print(json.dumps({"samples": texts, "prime": prime, "length": args.length, **settings, **_settings(args),
                          **labelled}, ensure_ascii=False))
    elif len(texts) == 1:
        print(texts[0])
    else:
        for index, text in enumerate(texts, 1):
            sys.stdout.write(SEPARATOR.format(index=index, total=len(texts)).lstrip("\n") if index == 1
                             else SEPARATOR.format(index=index, total=len(texts)))
            sys.stdout.write(text)
        sys.stdout.write("\n")
    return 0


def _separator(model, run_dir) -> str:
    separator = model.separator
    if separator is None and not model.symbols_recorded:
        raise UserError(f"--stop-at-sep: {model.path} was exported by an older charrnn that did not record the "
                        "document separator; export the run again ('charrnn export --format onnx')")
    if separator is None:
        raise UserError(f"--stop-at-sep: {run_dir or 'the model'} was trained on a single text, so it has no document "
                        "separator; drop --stop-at-sep")
    return separator


def cmd_eval(args) -> int:
    from charrnn.checkpoint import load_run_config
    from charrnn.data.dataset import eval_text, read_record, trained_on

    model = _load(args)
    label = _eval_label(model, args)
    # an .onnx file keeps no data.json: its metadata carries the two symbols that reading a text depends on
    record = read_record(args.checkpoint) if args.checkpoint else {"doc_sep": model.separator,
                                                                   "unknown": model.unknown}
    text_vocab, data, source = eval_text(args.data, args.include, args.exclude, model.vocab, record)
    if source.skipped:
        print(f"warning: {source.files_line()}", file=sys.stderr)
    what = " ".join(args.data)
    if args.by_label:
        scored = model.evaluate_encoded_by_label(text_vocab, data, args.unknown, what, audience="cli")
        _warn_if_exported_before_symbols(model)
        return _print_by_label(scored, args.json, args.unknown)
    result = model.evaluate_encoded(text_vocab, data, args.unknown, what, audience="cli", label=label)
    _warn_if_exported_before_symbols(model)
    trained = trained_on(args.checkpoint, load_run_config(args.checkpoint)[1]) if args.checkpoint else None
    if args.json:
        labelled = {"label": args.label} if args.label is not None else {}
        print(json.dumps({**result.as_dict(), **_settings(args), **labelled,
                          **({"trained_on": trained[1]} if trained else {})}, ensure_ascii=False))
        return 0
    line = f"loss {result.loss:.4f} nats/char, {result.bpc:.4f} bits/char over {result.characters} predicted characters"
    print(line + _skipped(result, args.unknown))
    if trained:
        print(trained[0])
    return 0


BY_LABEL_SHOWN = 20  # labels the --by-label line names; --json lists them all


def _eval_label(model, args):
    """eval's label index (None for --by-label, or a run without labels), checked before the text is read."""
    from charrnn.infer.labels import listed

    if args.by_label:
        if args.label is not None:
            raise UserError("--by-label scores the text under every label; drop --label, or drop --by-label to "
                            f"score it under {args.label!r} alone")
        if not model.labels:
            raise UserError("--by-label: this run was trained without labels, so the text has one loss; "
                            "drop --by-label")
        return None
    if model.labels and args.label is None:
        raise UserError(f"this run was trained with labels {listed(model.labels)}; give --label NAME, or --by-label "
                        "to score the text under each")
    return model.label_index(args.label, "cli")


def _print_by_label(scored, as_json: bool, unknown: str) -> int:
    """The text's loss under each label, best fit first: one line, or a JSON list."""
    if as_json:
        print(json.dumps([{"label": name, **result.as_dict()} for name, result in scored], ensure_ascii=False))
        return 0
    shown = ", ".join(f"{name} {result.loss:.4f}" for name, result in scored[:BY_LABEL_SHOWN])
    rest = len(scored) - BY_LABEL_SHOWN
    more = f"; {rest} more labels fit worse (--json lists them all)" if rest > 0 else ""
    print(f"fits {shown} nats/char over {scored[0][1].characters} predicted characters{more}"
          + _skipped(scored[0][1], unknown))
    return 0


def _skipped(result, unknown: str) -> str:
    """With --unknown skip: what was skipped, to end the report's line; else nothing."""
    if unknown != "skip":
        return ""
    return (f"; skipped {result.skipped} outside the model's vocabulary: {format_chars(result.skipped_chars)}"
            if result.skipped else "; no character outside the model's vocabulary")
