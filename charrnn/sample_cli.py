"""`charrnn sample` and `charrnn eval`: flags -> the Python API (api.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .config import IMPLS
from .errors import UserError
from .quantize import QUANTIZE_CHOICES


def _common(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="RUN_DIR", help="a run directory made by 'charrnn train'")
    source.add_argument("--onnx", metavar="MODEL.onnx", help="a file made by 'charrnn export --format onnx', run by "
                        "ONNX Runtime (the vocabulary and config come from the file)")
    parser.add_argument("--impl", choices=IMPLS, default="library", help="engine to run (any engine reads any checkpoint)")
    parser.add_argument("--which", choices=("latest", "best"), default="latest", help="model.safetensors or best.safetensors")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"), help="torch engines only")
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES,
                        help="int8: layer weights in int8, run by a compiled step (CPU): ~5x faster generation, slightly less exact (README)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def add_sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="generate text from a trained run")
    _common(p)
    primes = p.add_mutually_exclusive_group()
    primes.add_argument("--prime", default="", help="text fed first to warm the state; printed before the sample")
    primes.add_argument("--prime-file", metavar="PATH", help="read the prime from a UTF-8 file")
    p.add_argument("--length", type=int, default=500, help="characters to generate (default 500)")
    p.add_argument("--temperature", type=float, default=1.0, help="> 0; lower is more conservative (default 1.0)")
    p.add_argument("--top-k", type=int, help="sample only among the k most likely characters (applied after temperature)")
    p.add_argument("--top-p", type=float, help="sample from the smallest set reaching probability p (after top-k)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely character (argmax)")
    p.add_argument("--beam", type=int, help="beam search with this many hypotheses: the most likely continuation")
    p.add_argument("--seed", type=int, help="make the output reproducible")
    p.add_argument("--num-samples", type=int, default=1, help="generate N samples as one batch")
    p.add_argument("--unknown", choices=("error", "skip"), default="error", help="prime characters outside the vocabulary")
    p.set_defaults(handler=cmd_sample)


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="loss and bits per character of a text")
    _common(p)
    p.add_argument("--data", required=True, help="a UTF-8 text file or a corpus name")
    p.set_defaults(handler=cmd_eval)


def _load(args):
    if args.onnx:
        from .export.onnx_api import load_from_args

        return load_from_args(args)
    from .api import load

    return load(args.checkpoint, impl=args.impl, which=args.which, device=args.device, quantize=args.quantize)


def cmd_sample(args) -> int:
    prime = args.prime
    if args.prime_file:
        try:
            prime = Path(args.prime_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read --prime-file {args.prime_file} ({getattr(e, 'strerror', None) or e}); give a UTF-8 text file") from None
    model = _load(args)
    prime = model.prime(prime, args.unknown)  # checked (and cleaned) before anything is printed
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, greedy=args.greedy, seed=args.seed)
    if args.beam is not None:
        texts = [model.beam(prime, args.length, args.beam)]
    elif args.num_samples == 1 and not args.json:
        characters = model.stream(prime, args.length, **options)  # raises here on a bad option
        sys.stdout.write(prime)
        for ch in characters:
            sys.stdout.write(ch)
            sys.stdout.flush()  # stream as it is generated
        sys.stdout.write("\n")
        return 0
    else:
        texts = model.sample(prime, args.length, num_samples=args.num_samples, **options)
        texts = [texts] if isinstance(texts, str) else texts
    if args.json:
        print(json.dumps({"samples": texts, "prime": prime, "temperature": args.temperature, "seed": args.seed,
                          "greedy": args.greedy, "top_k": args.top_k, "top_p": args.top_p,
                          "beam": args.beam}, ensure_ascii=False))
    else:
        print("\n\n".join(texts))
    return 0


def cmd_eval(args) -> int:
    from .dataset import load_corpus

    model = _load(args)
    corpus = load_corpus(args.data)
    result = model.evaluate_indices(model.vocab.translate(corpus.vocab, corpus.data, args.data))
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(f"loss {result.loss:.4f} nats/char, {result.bpc:.4f} bits/char over {result.characters} predicted characters")
    return 0
