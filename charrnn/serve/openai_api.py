"""OpenAI-style completions in `charrnn serve`, for programs that already speak that API.

    GET  /v1/models              the one model served: the run directory's name
    GET  /v1/models/{model}
    POST /v1/completions         a completion, or server-sent chunks in the API's format, ending `data: [DONE]`

A token is a character: `max_tokens` counts characters, and `usage` counts characters too. The text is
the one `charrnn sample` prints after the prime for the same prime, seed, temperature and top_p (n > 1:
`--num-samples n`, drawn as one batch), streamed or not: both come from the same generator (Generation,
TrainedModel.stream_batch_checked) and the same stop-string scanner (StopScanner). `temperature: 0` is
`--greedy`. Errors are {"error": {"message", "type", "param", "code"}} with the API's status codes; the
limits, the Host check and the generation slots are the playground's (app.py).

A run trained with labels (issue #29) lists them in its model card (`labels`) and needs one per request:
`label`, an extension field (the OpenAI SDKs send it with `extra_body={"label": NAME}`).
"""
from __future__ import annotations

import json
import queue
import time
import uuid
from typing import AsyncIterator, Dict, List, Optional, Tuple, Union

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from charrnn.errors import UserError
from charrnn.infer.labels import check_label
from charrnn.infer.sampling import sampling_options
from charrnn.serve.stream import Generation

PREFIX = "/v1/"
MAX_CHOICES = 16              # n: samples drawn together in one request
MAX_STOPS = 4                 # as the OpenAI API allows
MAX_STOP_CHARS = 64           # per stop string: StopScanner looks for every prefix of each at the end of the text
ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error",
               429: "rate_limit_error", 500: "server_error"}


class APIError(Exception):
    """A refusal in the API's error shape; app.py turns it into the response."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def is_api_path(path: str) -> bool:
    return path.startswith(PREFIX)


def validation_error(errors: list) -> APIError:
    """Pydantic's first complaint about a request body, named by its field (the API's `param`)."""
    first = (errors or [{"loc": (), "msg": "invalid request"}])[0]
    if first.get("type") == "json_invalid":  # its loc is ("body", a character position), no field
        why = (first.get("ctx") or {}).get("error")
        return APIError(400, "the request body is not valid JSON" + (f" ({why})" if why else ""))
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") == "missing":
        return APIError(400, "the request has no body; send a JSON object with the model and the prompt")
    where = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = where[0] if where else None
    return APIError(400, f"{'.'.join(where)}: {first.get('msg')}" if where else str(first.get("msg")), param)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """The API's completion request. Fields charrnn cannot honour are accepted only at the value that asks
    for nothing (`check_neutral`), so no request is half-ignored; `top_k` is an extension (vLLM has it too)."""

    model_config = ConfigDict(extra="forbid")   # integers strict: `"n": true` is refused, as the API does
    model: str
    prompt: Union[str, list] = ""        # a string, or a list of one (not token ids: a token is a character)
    max_tokens: Optional[StrictInt] = Field(16, ge=1)
    temperature: Optional[float] = Field(1.0, ge=0, le=100)
    top_p: Optional[float] = Field(1.0, gt=0, le=1)
    top_k: Optional[StrictInt] = Field(None, ge=1)
    n: Optional[StrictInt] = Field(1, ge=1, le=MAX_CHOICES)
    seed: Optional[StrictInt] = Field(None, ge=0, le=2**63 - 1)
    stop: Optional[Union[str, List[str]]] = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    echo: Optional[bool] = False
    user: Optional[str] = None            # the caller's end user, for its own records; nothing to do here
    logprobs: Optional[StrictInt] = None
    best_of: Optional[StrictInt] = None
    frequency_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    logit_bias: Optional[Dict[str, float]] = None
    suffix: Optional[str] = None
    label: Optional[str] = None           # extension: a labelled run's label, required there, refused elsewhere


def check_neutral(req: CompletionRequest) -> None:
    asked = {"logprobs": req.logprobs is not None, "best_of": req.best_of not in (None, req.n or 1),
             "frequency_penalty": req.frequency_penalty not in (None, 0), "suffix": bool(req.suffix),
             "presence_penalty": req.presence_penalty not in (None, 0), "logit_bias": bool(req.logit_bias)}
    for param, given in asked.items():
        if given:
            raise APIError(400, f"{param} is not supported by charrnn serve; leave it out", param,
                           "unsupported_parameter")
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options is only allowed when stream is true", "stream_options")


def one_prompt(prompt: Union[str, list], limit: int) -> str:
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise APIError(400, f"prompt: charrnn completes one prompt per request, not {len(prompt)}; send them "
                                "one at a time", "prompt")
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise APIError(400, "prompt: give the text itself; charrnn reads characters, not token ids", "prompt")
    if len(prompt) > limit:
        raise APIError(400, f"prompt: {len(prompt)} characters is over this server's {limit}", "prompt")
    return prompt


def stop_strings(stop: Optional[Union[str, List[str]]]) -> List[str]:
    stops = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > MAX_STOPS or any(not 0 < len(s) <= MAX_STOP_CHARS for s in stops):
        raise APIError(400, f"stop: up to {MAX_STOPS} strings of 1 to {MAX_STOP_CHARS} characters", "stop")
    return stops


class StopScanner:
    """One choice's text, cut where a stop string first ends (the stop string left out).

    A tail that could begin a stop string is held back until the next characters decide it, so the
    text comes out the same however it is split into pieces: streamed or whole.
    """

    def __init__(self, stops: List[str]):
        self.stops, self.pending, self.done = stops, "", False

    def feed(self, text: str) -> str:
        """The part of `text` (with what was held back) now known to come before any stop string."""
        if self.done:
            return ""
        self.pending += text
        found = [(at + len(s), at) for s in self.stops for at in [self.pending.find(s)] if at >= 0]
        if found:  # the occurrence that ends first; of two ending together, the longer
            self.done, (_, at) = True, min(found)
            out, self.pending = self.pending[:at], ""
            return out
        held = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        out = self.pending[:len(self.pending) - held]
        self.pending = self.pending[len(out):]
        return out

    def finish(self) -> str:
        """The end of the generation: what was held back was no stop string after all."""
        out, self.pending = self.pending, ""
        return out


router = APIRouter()


def _engine(request: Request):
    return request.app.state.engine


def model_card(engine) -> dict:
    card = {"id": engine.model_id, "object": "model", "created": engine.created, "owned_by": "charrnn"}
    return {**card, "labels": list(engine.labels)} if engine.labels else card


@router.get("/v1/models")
def list_models(request: Request):
    return {"object": "list", "data": [model_card(_engine(request))]}


@router.get("/v1/models/{model:path}")
def get_model(model: str, request: Request):
    engine = _engine(request)
    check_model(engine, model, None)
    return model_card(engine)


def check_model(engine, model: str, param: Optional[str] = "model") -> None:
    if model != engine.model_id:
        raise APIError(404, f"The model `{model}` does not exist; this server serves `{engine.model_id}`", param,
                       "model_not_found")


@router.post("/v1/completions")
async def completions(req: CompletionRequest, request: Request):
    from charrnn.serve.app import MAX_LENGTH, MAX_PRIME_CHARS

    engine = _engine(request)
    check_model(engine, req.model)
    check_neutral(req)
    if (req.max_tokens or 16) > MAX_LENGTH:
        raise APIError(400, f"max_tokens: {req.max_tokens} is over this server's {MAX_LENGTH} characters",
                       "max_tokens")
    completion = Completion(engine, req, one_prompt(req.prompt, MAX_PRIME_CHARS), stop_strings(req.stop))
    completion.start()
    if req.stream:
        return StreamingResponse(completion.sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    return await completion.whole()


# last, so that it only gets what no route above takes
@router.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
def unknown_url(rest: str, request: Request):
    raise APIError(404, f"Unknown request URL: {request.method} /v1/{rest}. charrnn serves GET /v1/models and "
                        "POST /v1/completions", None, "unknown_url")


class Completion:
    """One request's generation: n choices drawn together in one of the engine's slots."""

    def __init__(self, engine, req: CompletionRequest, prompt: str, stops: List[str]):
        self.engine, self.req, self.prompt, self.stops = engine, req, prompt, stops
        self.n, self.length = req.n or 1, req.max_tokens or 16
        self.id, self.created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        self.generation: Optional[Generation] = None
        self.generated = 0  # characters generated and returned, for `usage`

    def start(self) -> None:
        """Take a slot (429 when all are busy), check the prompt against the vocabulary, start the thread."""
        req, slots = self.req, self.engine.slots
        greedy = req.temperature == 0
        try:
            options = sampling_options(None if greedy else req.temperature, req.top_k,
                                       None if req.top_p in (None, 1) else req.top_p, greedy)
        except UserError as e:
            raise APIError(400, str(e)) from None
        try:
            label = check_label(self.engine.labels, req.label, "web")
        except UserError as e:
            raise APIError(400, str(e), "label") from None
        try:
            model = slots.get_nowait()
        except queue.Empty:
            raise APIError(429, f"{self.engine.max_generations} generations are already running; try again when "
                                "one finishes", None, "server_busy") from None
        try:
            self.prompt = model.prime(self.prompt, audience="web")
            steps = model.stream_batch_checked(self.prompt, self.length, options, np.random.default_rng(req.seed),
                                               self.n, label)
        except UserError as e:
            slots.put(model)
            raise APIError(400, f"prompt: {e}", "prompt") from None
        except BaseException:
            slots.put(model)
            raise

        def release() -> None:
            self.engine.running.discard(generation)
            slots.put(model)

        generation = self.generation = Generation(self.prompt, steps, release=release)
        self.engine.running.add(generation)
        generation.start()

    async def pieces(self) -> AsyncIterator[Tuple[int, str, Optional[str]]]:
        """(choice, text, finish_reason): text as it is known, then each choice's finish ("stop" or "length")."""
        scanners = [StopScanner(self.stops) for _ in range(self.n)]
        if self.req.echo:
            for index in range(self.n):
                yield index, self.prompt, None
        batches = self.generation.batches()
        try:
            async for steps, end in batches:
                for index, scanner in enumerate(scanners):
                    if not scanner.done:
                        text = scanner.feed("".join(step[index] for step in steps))
                        self.generated += len(text)
                        if text:
                            yield index, text, None
                        if scanner.done:
                            yield index, "", "stop"
                if all(scanner.done for scanner in scanners):
                    return  # every choice has met a stop string: the generation ends (finally)
                if end and end[0] == "error":
                    raise APIError(500, end[1]["error"], None, "generation_failed")
        finally:
            await batches.aclose()
        for index, scanner in enumerate(scanners):
            if not scanner.done:
                text = scanner.finish()
                self.generated += len(text)
                if text:
                    yield index, text, None
                yield index, "", "length"

    def _object(self, choices: list, usage: Optional[dict] = None) -> dict:
        body = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.engine.model_id,
                "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return body

    def _usage(self, generated: int) -> dict:
        return {"prompt_tokens": len(self.prompt), "completion_tokens": generated,
                "total_tokens": len(self.prompt) + generated}

    async def whole(self) -> dict:
        texts, reasons = [""] * self.n, [None] * self.n
        async for index, text, reason in self.pieces():
            texts[index] += text
            reasons[index] = reason or reasons[index]
        choices = [{"text": t, "index": i, "logprobs": None, "finish_reason": r}
                   for i, (t, r) in enumerate(zip(texts, reasons))]
        return self._object(choices, self._usage(self.generated))

    async def sse(self) -> AsyncIterator[str]:
        """The API's stream: one chunk per piece of one choice, then usage if asked, then [DONE]."""
        try:
            async for index, text, reason in self.pieces():
                choice = {"text": text, "index": index, "logprobs": None, "finish_reason": reason}
                yield _data(self._object([choice]))
            if self.req.stream_options is not None and self.req.stream_options.include_usage:
                yield _data(self._object([], self._usage(self.generated)))
            yield "data: [DONE]\n\n"
        except APIError as e:
            yield _data(e.body())
        finally:
            if self.generation is not None:
                self.generation.stop.set()


def _data(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
