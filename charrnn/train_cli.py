"""`charrnn train`: turn flags into configs, build the pieces, run the Trainer.

Flag precedence: explicit flags > --preset > defaults. With --resume the run's
saved settings replace the defaults; its model shape cannot change.
"""
from __future__ import annotations

import dataclasses
import math
import signal
import sys
from pathlib import Path

import numpy as np

from .batching import make_streams, split_train_val, validation_streams
from .checkpoint import RESUME, load_run, load_run_config, save_run_config
from .config import ModelConfig, TrainConfig, from_dict
from .dataset import Corpus, load_corpus
from .devices import init_distributed, make_reducers, resolve_device, world_from_env
from .errors import UserError
from .presets import preset_values
from .vocab import format_chars

MODEL_KEYS = {f.name for f in dataclasses.fields(ModelConfig)}
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


def build_configs(given: dict) -> tuple[TrainConfig, dict]:
    """Resolve TrainConfig and the model flags (a dict; vocab_size comes from the data)."""
    values = preset_values(given.pop("preset", None))
    values.update(given)
    out = Path(values.get("out", TrainConfig.out))
    if values.get("resume"):
        saved_model, saved_train = load_run_config(out)
        for key in MODEL_KEYS - {"vocab_size"}:
            if key in given and given[key] != getattr(saved_model, key):
                raise UserError(f"--{key.replace('_', '-')} {given[key]} differs from the run being resumed "
                                f"({getattr(saved_model, key)}); drop the flag or start a new run")
        base = {k: v for k, v in (saved_train or {}).items() if k in TRAIN_KEYS}
        base.update({k: v for k, v in given.items() if k in TRAIN_KEYS})
        train = from_dict(TrainConfig, base, "settings")
        return train, dataclasses.asdict(saved_model)
    train = from_dict(TrainConfig, {k: v for k, v in values.items() if k in TRAIN_KEYS}, "settings")
    return train, {k: v for k, v in values.items() if k in MODEL_KEYS}


def _remap_to_vocab(corpus: Corpus, vocab) -> np.ndarray:
    missing = [c for c in corpus.vocab.chars if c not in vocab]
    if missing:
        raise UserError(f"the new corpus has characters the --init-from model never saw: {format_chars(missing)}; "
                        "fine-tune on a text within its vocabulary, or train a new model")
    table = np.array([vocab.chars.index(c) for c in corpus.vocab.chars], dtype=vocab.dtype)
    return table[np.asarray(corpus.data)]


def run_train(args: dict) -> int:
    given = {k: v for k, v in args.items() if k not in ("command", "handler", "overwrite")}
    train_cfg, model_flags = build_configs(given)
    world = world_from_env()
    out = Path(train_cfg.out)
    if not train_cfg.resume and (out / RESUME).exists() and not args.get("overwrite"):
        raise UserError(f"{out} already holds a run; pass --resume to continue it, --overwrite to replace it, or choose another --out")
    if train_cfg.impl == "naive":
        for flag, on in (("--bf16", train_cfg.bf16), ("--compile", train_cfg.compile), ("torchrun", world.distributed)):
            if on:
                raise UserError(f"--impl naive does not support {flag}; use --impl library or scratch")
    if train_cfg.bf16 and train_cfg.device not in ("auto", "cuda"):
        raise UserError("--bf16 needs CUDA; drop it on the CPU")

    corpus = load_corpus(train_cfg.data)
    if world.is_main:
        print(corpus.summary(), flush=True)
    vocab, data = corpus.vocab, corpus.data
    init_params = None
    if train_cfg.init_from and not train_cfg.resume:
        init_model, vocab, init_params = load_run(Path(train_cfg.init_from), "latest")
        data = _remap_to_vocab(corpus, vocab)
        for key in MODEL_KEYS - {"vocab_size", "dropout"}:
            if key in model_flags and model_flags[key] != getattr(init_model, key):
                raise UserError(f"--{key} differs from the --init-from model ({getattr(init_model, key)}); drop it")
        model_flags = {**dataclasses.asdict(init_model), "dropout": model_flags.get("dropout", init_model.dropout)}
    elif train_cfg.resume:
        from .checkpoint import load_vocab

        vocab = load_vocab(out, ModelConfig(**model_flags))
        if vocab != corpus.vocab:
            data = _remap_to_vocab(corpus, vocab)
    model_cfg = ModelConfig(**{**model_flags, "vocab_size": len(vocab)})

    train_data, val_data = split_train_val(data, train_cfg.val_frac)
    train_streams = make_streams(train_data, train_cfg.batch_size, train_cfg.seq_len, what="training split")
    val_streams = validation_streams(val_data, train_cfg.batch_size, train_cfg.seq_len, multiple_of=world.size) if len(val_data) else None
    if train_cfg.val_frac > 0 and val_streams is None and world.is_main:
        print("warning: the validation split is too short for one window; training without validation", file=sys.stderr)

    device = resolve_device(train_cfg.device, train_cfg.impl, world.local_rank if world.distributed else None)
    if world.distributed:
        init_distributed(world, device)
        train_streams = train_streams.shard(world.rank, world.size)
        val_streams = val_streams.shard(world.rank, world.size) if val_streams else None
    stepper = _make_stepper(train_cfg, model_cfg, device, world, init_params)

    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        from .atomic import remove_stale_temporaries

        remove_stale_temporaries(out)
        if not train_cfg.resume:
            vocab.save(out / "vocab.json")
        save_run_config(out, model_cfg, train_cfg)

    from .train import Trainer

    reduce_sum, gather_state = make_reducers(world, device) if device is not None else ((lambda v: v), (lambda s: s))
    trainer = Trainer(train_cfg, stepper, train_streams, val_streams, out, is_main=world.is_main,
                      reduce_sum=reduce_sum, gather_state=gather_state, sampler=_make_sampler(stepper, vocab, train_cfg))
    per = train_streams.batch_size
    trainer.rank_rows = (world.rank * per, (world.rank + 1) * per, per * world.size)
    if train_cfg.resume:
        trainer.restore()
        if world.is_main:
            p = trainer.progress
            print(f"resuming {out} at iteration {p.iteration} (epoch {p.epoch}, window {p.window})", flush=True)
    _install_signal_handlers(trainer)
    try:
        progress = trainer.run()
    finally:
        if world.distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
    if world.is_main:
        best = f"best validation loss {progress.best_val:.4f} nats/char" if math.isfinite(progress.best_val) else "no validation"
        print(f"done: iteration {progress.iteration}, epoch {progress.epoch}, {best}; checkpoints in {out}", flush=True)
    return 0


def _make_stepper(cfg: TrainConfig, model_cfg: ModelConfig, device, world, init_params):
    from .models import build_model

    if cfg.impl == "naive":
        from .steppers import NumpyStepper

        model = build_model("naive", model_cfg, seed=cfg.seed, params=init_params)
        return NumpyStepper(model, cfg.resolved_optimizer, cfg.resolved_lr, cfg.weight_decay, cfg.grad_clip, cfg.seed)
    import torch

    from .steppers import TorchStepper

    model = build_model(cfg.impl, model_cfg, seed=cfg.seed, params=init_params, device=device)
    torch.manual_seed(cfg.seed + world.rank)
    return TorchStepper(model, cfg.resolved_optimizer, cfg.resolved_lr, cfg.weight_decay, cfg.grad_clip, device,
                        bf16=cfg.bf16, compile=cfg.compile, distributed=world.distributed)


def _make_sampler(stepper, vocab, cfg: TrainConfig):
    if not cfg.sample_every:
        return None
    from .sample import generate

    rng = np.random.default_rng(cfg.seed + 1)  # its own RNG: sampling must not change training's randomness
    return lambda: generate(stepper.model, vocab, prime="\n", length=200, temperature=0.8, rng=rng)


def _install_signal_handlers(trainer) -> None:
    """First Ctrl-C or SIGTERM: finish the step, save, exit 0. A second Ctrl-C stops at once."""

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if trainer.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.stop_requested = f"received {name}"

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
