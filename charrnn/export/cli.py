"""`charrnn export`: a run directory -> an .onnx file or a static web page."""
from __future__ import annotations

from charrnn.export.onnx_export import QUANTIZE_CHOICES

FORMATS = ("onnx", "web")


def add_export_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a trained model as ONNX or as a static web page (docs/export.md)",
        description="Take a trained model elsewhere: an .onnx file that ONNX Runtime runs in any language it ships "
                    "for (run it here with 'charrnn sample --onnx FILE'), or a folder whose index.html generates "
                    "text in a browser with no server. See docs/export.md.")
    p.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="a run directory made by 'charrnn train'")
    p.add_argument("--which", choices=("latest", "best"), default="latest",
                   help="model.safetensors or best.safetensors (default: latest)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="onnx: one .onnx file (chars and state in, logits and state out; vocabulary and config in "
                        "its metadata), for ONNX Runtime anywhere (needs the onnx extra). web: a folder whose "
                        "index.html generates text in the browser, no server, opened straight from disk")
    p.add_argument("--out", required=True, metavar="PATH", help="the .onnx file (replaced if it exists), or the "
                                                                "folder for web")
    p.add_argument("--quantize", choices=QUANTIZE_CHOICES,
                   help="onnx, LSTM only: int8 weights by ONNX Runtime's dynamic quantization (about 4x smaller, "
                        "runs only in ONNX Runtime; ONNX Runtime has no int8 GRU or RNN); measure its cost with "
                        "'charrnn eval --onnx FILE --data TEXT' (default: off, float32)")
    p.set_defaults(handler=cmd_export)


def cmd_export(args) -> int:
    from charrnn.errors import UserError

    if args.format == "web":
        if args.quantize:
            raise UserError("--quantize applies to --format onnx; the web page computes in float32")
        from charrnn.export.web import export_web

        info = export_web(args.checkpoint, args.which, args.out)
        print(f"wrote {info['path']}/ ({_size(info['bytes'])}, {_describe(info)}): open {info['path']}/index.html "
              "in a browser, or put the folder on any static web host")
        return 0
    from charrnn.export.onnx_export import export_onnx

    info = export_onnx(args.checkpoint, args.which, args.out, quantize=args.quantize)
    print(f"wrote {info['path']} ({_size(info['bytes'])}, {_describe(info)}"
          f"{', int8' if info['quantize'] == 'int8' else ''}): try charrnn sample --onnx {info['path']}")
    return 0


def _describe(info: dict) -> str:
    return f"{info['cell']} {info['layers']}x{info['hidden']}, {info['vocab_size']} characters"


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"
