"""The web app behind `charrnn serve`: generate (streamed), look inside, training curves.

    GET  /                 the page (static/index.html, app.js, style.css)
    GET  /api/info         the model's shape, vocabulary and the server's limits
    POST /api/generate     server-sent events (stream.py): the prime as used, characters as they come
    POST /api/inspect      one unit's activation per character, and the top-5 next characters
    POST /api/units        units ranked by how strongly they track simple features of a text
    GET  /api/metrics      the run's loss curves from metrics.jsonl
    GET  /api/samples      two samples from the loaded weights (drawn once, then cached)
    /v1/...                OpenAI-style completions and models (openai_api.py)

The checkpoint is fixed when the app is made; no request names a file. Errors are JSON
{"error": "one line"} with a 4xx status (under /v1/, the OpenAI API's error object). Each
generation holds one of `max_generations` loaded models for its whole run (an engine's step
buffers must not be shared between threads); when all are taken a new one gets 429.

A run trained with labels (issue #29) lists them in /api/info; generate, inspect and units then take
a `label` (one of them, required), which the page's label picker sends.
"""
from __future__ import annotations

import queue
from pathlib import Path
from typing import List, Optional, Set

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from charrnn.checkpoint import WEIGHTS, load_run
from charrnn.errors import UserError
from charrnn.infer.api import TrainedModel, load
from charrnn.infer.labels import check_label
from charrnn.infer.sampling import sampling_options
from charrnn.serve import openai_api
from charrnn.serve.activations import FEATURES, Trace, Tracer, rank_units, text_features, trace_state_names, unit_series
from charrnn.serve.stream import Generation
from charrnn.train.metrics import read_metrics

STATIC = Path(__file__).parent / "static"
MAX_PRIME_CHARS = 2000        # characters of prime per generation
MAX_LENGTH = 5000             # characters generated per request
MAX_INSPECT_CHARS = 2000      # characters of text to look inside
MAX_BODY_BYTES = 64 * 1024    # request body size; more gets 413
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prime: str = Field("", max_length=MAX_PRIME_CHARS)
    length: int = Field(300, ge=1, le=MAX_LENGTH)
    temperature: float = Field(1.0, gt=0, le=100)
    top_k: Optional[int] = Field(None, ge=1)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    greedy: bool = False
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1)
    label: Optional[str] = None   # a labelled run's label (required there, refused elsewhere)


class InspectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(..., min_length=1, max_length=MAX_INSPECT_CHARS)
    state: str = "h"
    layer: int = 0
    unit: int = 0
    label: Optional[str] = None


class UnitsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(..., min_length=3, max_length=MAX_INSPECT_CHARS)
    top: int = Field(10, ge=1, le=100)
    label: Optional[str] = None


class Engine:
    """The loaded run: generation slots (one TrainedModel each), the torch-free tracer, the run directory."""

    def __init__(self, run_dir: Path, impl: str, which: str, max_generations: int, warm: bool,
                 quantize: Optional[str] = None):
        self.run_dir, self.impl, self.which, self.max_generations = run_dir, impl, which, max_generations
        self.slots: "queue.SimpleQueue[TrainedModel]" = queue.SimpleQueue()
        models = [load(run_dir, impl=impl, which=which, quantize=quantize) for _ in range(max_generations)]
        for model in models:
            self.slots.put(model)
        self.config, self.vocab, params = load_run(run_dir, which)
        self.labels = tuple(self.config.labels)
        self.tracer = Tracer(self.config, params, self.vocab)
        self.samples: List[str] = []
        self.model_id = run_dir.resolve().name                                 # its name in /v1/models
        self.created = int((run_dir / WEIGHTS[which]).stat().st_mtime)
        self.running: Set[Generation] = set()  # so that stop_generations can reach them
        if warm:  # build the step buffers and touch the weights now, not on the first click
            first = self.labels[0] if self.labels else None
            for model in models:
                list(model.stream(self.vocab.chars[0], 4, seed=0, label=first))
            self.trace(self.vocab.chars[0] * 4, first)

    def trace(self, text: str, label: Optional[str] = None, timeout: float = 10.0) -> Optional[Trace]:
        """The text's trace under a labelled run's `label` (UserError when it is missing or unknown), or None
        when the tracer stayed busy with another text for `timeout` seconds."""
        index = check_label(self.labels, label, "web")
        if not self.tracer.lock.acquire(timeout=timeout):
            return None
        try:
            return self.tracer.trace(text, index)
        finally:
            self.tracer.lock.release()

    def stop_generations(self) -> None:
        """Have every running generation end at its next character (the server is shutting down)."""
        for generation in list(self.running):
            generation.stop.set()

    def info(self) -> dict:
        cfg = self.config
        return {"run": self.run_dir.name, "impl": self.impl, "which": self.which, "cell": cfg.cell,
                "layers": cfg.layers, "hidden": cfg.hidden, "vocab": list(self.vocab.chars),
                "labels": list(self.labels), "states": list(trace_state_names(cfg)), "features": list(FEATURES),
                "limits": {"prime_chars": MAX_PRIME_CHARS, "length": MAX_LENGTH,
                           "inspect_chars": MAX_INSPECT_CHARS, "generations": self.max_generations}}


def error(status: int, message: str, path: str = "/", code: Optional[str] = None) -> JSONResponse:
    """The playground's {"error": message}; under /v1/, the OpenAI API's error object."""
    if openai_api.is_api_path(path):
        return openai_api.APIError(status, message, None, code).response()
    return JSONResponse({"error": message}, status_code=status)


def engine(request: Request) -> Engine:
    return request.app.state.engine


router = APIRouter()


@router.get("/")
def index():
    return FileResponse(STATIC / "index.html")


@router.get("/api/info")
def info(request: Request):
    return engine(request).info()


@router.post("/api/generate")
async def generate(req: GenerateRequest, request: Request):
    run = engine(request)
    slots = run.slots
    try:
        model = slots.get_nowait()
    except queue.Empty:
        return error(429, f"{run.max_generations} generations are already running; try again when one finishes")
    try:
        label = model.label_index(req.label, "web")  # UserError (-> 400): missing, unknown, or not this run's
        prime = model.prime(req.prime, audience="web")  # UserError (-> 400) for characters outside the vocabulary
        options = sampling_options(None if req.greedy else req.temperature, req.top_k, req.top_p, req.greedy)
        chars = model.stream_checked(prime, req.length, options, np.random.default_rng(req.seed), label)
    except BaseException:
        slots.put(model)
        raise

    def release() -> None:
        run.running.discard(generation)
        slots.put(model)

    generation = Generation(prime, chars, release=release)
    run.running.add(generation)
    generation.start()
    return StreamingResponse(generation.events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


BUSY = "the model is busy looking inside another text; try again"


@router.post("/api/inspect")
def inspect(req: InspectRequest, request: Request):
    trace = engine(request).trace(req.text, req.label)
    if trace is None:
        return error(429, BUSY)
    values = unit_series(trace, req.state, req.layer, req.unit)
    predictions = trace.top_predictions(engine(request).vocab, 5)
    return {"chars": list(req.text), "state": req.state, "layer": req.layer, "unit": req.unit,
            "values": [round(float(v), 5) for v in values],
            "predictions": [[[ch, round(p, 5)] for ch, p in row] for row in predictions]}


@router.post("/api/units")
def units(req: UnitsRequest, request: Request):
    trace = engine(request).trace(req.text, req.label)
    if trace is None:
        return error(429, BUSY)
    return {"features": list(FEATURES), **rank_units(trace.states, text_features(req.text), req.top)}


@router.get("/api/metrics")
def metrics(request: Request):
    rows = read_metrics(engine(request).run_dir / "metrics.jsonl")
    points = lambda key: [[r["iter"], r[key]] for r in rows if _number(r.get(key)) and _number(r.get("iter"))]
    train = points("train_loss")
    stride = max(1, len(train) // 2000)  # keep the page light for long runs
    return {"train": train[::stride], "val": points("val_loss"), "rows": len(rows)}


@router.get("/api/samples")
def samples(request: Request):
    """Training logs its samples only to the console, so the page shows fresh ones from these weights (a labelled
    run's under its first two labels, or its one label twice: `labels` says which)."""
    run = engine(request)
    labels = [run.labels[k % len(run.labels)] for k in range(2)] if run.labels else [None, None]
    if not run.samples:
        try:
            model = run.slots.get(timeout=10)
        except queue.Empty:
            return error(429, "all generation slots are busy; try again")
        try:
            run.samples[:] = ["".join(model.stream("", 240, temperature=0.8, seed=seed, label=label))
                              for seed, label in zip((1, 2), labels)]
        finally:
            run.slots.put(model)
    return {"samples": run.samples, "temperature": 0.8, "which": run.which,
            **({"labels": labels} if run.labels else {})}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


class Guard:
    """ASGI middleware: refuse oversized bodies; add CSP to every response (Host names: TrustedHostMiddleware)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        size = headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY_BYTES):
            response = error(413, f"request body over {MAX_BODY_BYTES} bytes", scope["path"], "request_too_large")
        else:
            return await self.app(scope, receive, _with_headers(send))
        await response(scope, receive, _with_headers(send))


def _with_headers(send):
    async def sending(message):
        if message["type"] == "http.response.start":
            message["headers"] = list(message.get("headers", [])) + [
                (b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                (b"referrer-policy", b"no-referrer")]
        await send(message)
    return sending


def create_app(run_dir, impl: str = "library", which: str = "latest", max_generations: int = 2,
               allowed_hosts: Optional[List[str]] = None, warm: bool = True, quantize: Optional[str] = None) -> FastAPI:
    """The app for one run directory, its model loaded (`max_generations` times) and warmed.

    allowed_hosts (e.g. ["127.0.0.1", "localhost"]) refuses other Host headers, so a web page
    cannot reach a loopback server by rebinding its own domain name to 127.0.0.1.
    """
    app = FastAPI(title="charrnn", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = Engine(Path(run_dir), impl, which, max_generations, warm, quantize)
    app.include_router(router)
    app.include_router(openai_api.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(Guard)
    if allowed_hosts is not None:  # added last, so it runs first: a foreign Host gets nothing else
        hosts = [*allowed_hosts, *(f"[{h}]" for h in allowed_hosts if ":" in h)]
        app.add_middleware(HostCheck, allowed_hosts=hosts)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        if openai_api.is_api_path(request.url.path):  # the API says 400 for a bad field, and names it
            return openai_api.validation_error(exc.errors()).response()
        first = (exc.errors() or [{"loc": (), "msg": "invalid request"}])[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return error(422, f"{where}: {first.get('msg')}" if where else str(first.get("msg")))

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return error(400, str(exc), request.url.path)

    @app.exception_handler(openai_api.APIError)
    async def api_error(request: Request, exc: openai_api.APIError):
        return exc.response()

    return app


class HostCheck:
    """ASGI middleware: Starlette's TrustedHostMiddleware decides; a refused /v1/ request gets the refusal
    in the OpenAI API's error shape, as every other /v1/ error."""

    def __init__(self, app, allowed_hosts: List[str]):
        self.app = app
        self.starlette = TrustedHostMiddleware(app, allowed_hosts=allowed_hosts, www_redirect=False)
        self.verdict = TrustedHostMiddleware(self._passed, allowed_hosts=allowed_hosts, www_redirect=False)

    @staticmethod
    async def _passed(scope, receive, send):
        scope["charrnn.host_ok"] = True

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not openai_api.is_api_path(scope["path"]):
            return await self.starlette(scope, receive, send)
        asked = dict(scope)

        async def discard(message):  # Starlette's plain-text refusal: the API's error object goes instead
            pass

        await self.verdict(asked, receive, discard)
        if asked.get("charrnn.host_ok"):
            return await self.app(scope, receive, send)
        await error(400, "Invalid host header", scope["path"], "invalid_host")(scope, receive, send)
