"""Train a small character-level GPT for a fixed wall-clock budget and print its best validation loss.

Why: this is the transformer reference charrnn is compared against, namely nanoGPT's "baby GPT" in its
README's CPU configuration (n_layer 4, n_head 4, n_embd 128, block 64, batch 12, dropout 0, lr 1e-3),
with the learning-rate schedule sized to the time budget instead of to an iteration count. It is our own
small PyTorch implementation, not nanoGPT's code. It uses the same split as charrnn on a single text (the
last --val-frac of the characters are validation), the same --max-time meaning (wall time of training and
evaluations from the first iteration) and the same --val-chars cap, so the two numbers can be put side by side.

Model: learned token and position embeddings, pre-LayerNorm blocks (causal scaled_dot_product_attention,
4x GELU MLP), a final LayerNorm and an LM head tied to the token embedding. The Linear layers have no
biases; the LayerNorms have weight and bias. Init normal(0, 0.02), residual projections scaled by
1/sqrt(2 * n_layer). Validation slides 64-character windows with stride 32 over the split so every scored
character has at least 32 characters of context (except within the first window).

    python benchmarks/babygpt.py --data PATH --max-time SECONDS [--val-frac 0.1] [--val-chars N] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line  # noqa: E402

N_LAYER, N_HEAD, N_EMBD, BLOCK = 4, 4, 128, 64
BATCH, LR, MIN_LR, WARMUP, BETAS, WEIGHT_DECAY, CLIP = 12, 1e-3, 1e-4, 100, (0.9, 0.99), 0.1, 1.0
EVAL_STRIDE, EVAL_BATCH = 32, 256


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(N_EMBD), nn.LayerNorm(N_EMBD)
        self.qkv = nn.Linear(N_EMBD, 3 * N_EMBD, bias=False)
        self.attn_proj = nn.Linear(N_EMBD, N_EMBD, bias=False)
        self.fc = nn.Linear(N_EMBD, 4 * N_EMBD, bias=False)
        self.mlp_proj = nn.Linear(4 * N_EMBD, N_EMBD, bias=False)

    def forward(self, x):
        batch, steps, _ = x.shape
        heads = [t.view(batch, steps, N_HEAD, N_EMBD // N_HEAD).transpose(1, 2)
                 for t in self.qkv(self.ln1(x)).split(N_EMBD, dim=2)]
        attended = F.scaled_dot_product_attention(*heads, is_causal=True)
        x = x + self.attn_proj(attended.transpose(1, 2).reshape(batch, steps, N_EMBD))
        return x + self.mlp_proj(F.gelu(self.fc(self.ln2(x))))


class BabyGPT(nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.token_emb, self.pos_emb = nn.Embedding(vocab_size, N_EMBD), nn.Embedding(BLOCK, N_EMBD)
        self.blocks = nn.ModuleList(Block() for _ in range(N_LAYER))
        self.ln_final = nn.LayerNorm(N_EMBD)
        self.head = nn.Linear(N_EMBD, vocab_size, bias=False)
        self.head.weight = self.token_emb.weight  # tied
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, 0.02)
        for block in self.blocks:
            for residual in (block.attn_proj, block.mlp_proj):
                nn.init.normal_(residual.weight, 0.0, 0.02 / math.sqrt(2 * N_LAYER))

    def forward(self, ids):
        x = self.token_emb(ids) + self.pos_emb(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_final(x))


def scoring_windows(n_targets: int, block: int = BLOCK, stride: int = EVAL_STRIDE):
    """(start, first scored offset) per window of min(block, n_targets) positions over the targets.

    The first window scores all its positions, later ones only the positions past the previous window's
    end (the last `stride`, or fewer for the final window placed flush with the end), so each target
    index is scored exactly once and, outside the first window, with >= block - stride of context.
    """
    if n_targets <= 0:
        return []
    length = min(block, n_targets)
    starts = list(range(0, n_targets - length + 1, stride))
    if starts[-1] + length < n_targets:
        starts.append(n_targets - length)
    windows, scored_until = [], 0
    for start in starts:
        windows.append((start, scored_until - start))
        scored_until = start + length
    return windows


@torch.no_grad()
def validation_loss(model: BabyGPT, val: torch.Tensor) -> float:
    """Mean cross-entropy (nats/char) of targets val[1:] given inputs val[:-1], in eval mode."""
    inputs, targets = val[:-1], val[1:]
    windows = scoring_windows(len(targets))
    length = min(BLOCK, len(targets))
    positions = torch.arange(length)
    model.eval()
    total = 0.0
    for first in range(0, len(windows), EVAL_BATCH):
        chunk = torch.tensor(windows[first:first + EVAL_BATCH])
        index = chunk[:, :1] + positions
        logits = model(inputs[index])
        losses = F.cross_entropy(logits.flatten(0, 1), targets[index].flatten(), reduction="none")
        total += losses.view_as(index)[positions >= chunk[:, 1:]].sum().item()
    model.train()
    return total / len(targets)


def _check_scoring() -> None:
    generator = torch.Generator().manual_seed(0)
    for n in [1, 2, 31, 63, 64, 65, 96, 97, 128, 1000, *torch.randint(2, 2000, (20,), generator=generator).tolist()]:
        counts = torch.zeros(n, dtype=torch.long)
        length = min(BLOCK, n)
        for start, offset in scoring_windows(n):
            assert 0 <= offset < length and 0 <= start and start + length <= n, (n, start, offset)
            assert start == 0 or offset >= BLOCK - EVAL_STRIDE, (n, start, offset)
            counts[start + offset:start + length] += 1
        assert bool((counts == 1).all()), f"n={n}: coverage {counts.tolist()}"


def learning_rate(iteration: int, elapsed: float, warm_end: float, max_time: float) -> float:
    """Linear warm-up over WARMUP iterations, then cosine LR -> MIN_LR over the rest of the time budget."""
    if iteration < WARMUP:
        return LR * (iteration + 1) / WARMUP
    progress = min(1.0, (elapsed - warm_end) / max(max_time - warm_end, 1e-9))
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * progress)) * (LR - MIN_LR)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="UTF-8 text file")
    parser.add_argument("--max-time", type=float, help="wall-clock budget in seconds (training + evaluations)")
    parser.add_argument("--val-frac", type=float, default=0.1, help="last fraction of the text used for validation")
    parser.add_argument("--val-chars", type=int, help="validate on only the first N characters of the split")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--json", help="write the result and the validation curve here")
    parser.add_argument("--self-check", action="store_true", help="check the validation scoring and exit")
    args = parser.parse_args()
    if args.self_check:
        _check_scoring()
        print("scoring self-check ok: every target scored exactly once")
        return 0
    if not args.data or not Path(args.data).is_file():
        parser.error(f"--data: no such file: {args.data}")
    if args.max_time is None or not args.max_time > 0:
        parser.error("--max-time must be a positive number of seconds")
    if not 0 < args.val_frac < 1:
        parser.error("--val-frac must be between 0 and 1")
    if args.val_chars is not None and args.val_chars < 2:
        parser.error("--val-chars must be at least 2")
    text = Path(args.data).read_text(encoding="utf-8")
    vocab = sorted(set(text))
    ids = torch.tensor([{ch: i for i, ch in enumerate(vocab)}[ch] for ch in text], dtype=torch.long)
    split = len(text) - int(len(text) * args.val_frac)
    train, val = ids[:split], ids[split:][:args.val_chars]
    if len(train) <= BLOCK + 1 or len(val) < 2:
        parser.error(f"{args.data}: too short for a {BLOCK}-character block and a validation split")

    print(machine_line(), flush=True)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = BabyGPT(len(vocab))
    params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=BETAS)
    offsets = torch.arange(BLOCK)
    curve, eval_time, warm_end, iteration = [], 0.0, 0.0, 0
    next_eval = args.max_time / 10

    def evaluate(elapsed: float) -> None:
        nonlocal eval_time
        began = time.perf_counter()
        loss = validation_loss(model, val)
        eval_time += time.perf_counter() - began
        curve.append([iteration, round(elapsed, 2), loss])
        print(f"iter {iteration:6d}  elapsed {elapsed:8.1f} s  val {loss:.4f} nats/char", flush=True)

    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(iteration, elapsed, warm_end, args.max_time)
        index = torch.randint(len(train) - BLOCK, (BATCH, 1), generator=generator) + offsets
        logits = model(train[index])
        loss = F.cross_entropy(logits.flatten(0, 1), train[index + 1].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        iteration += 1
        elapsed = time.perf_counter() - start
        if iteration == WARMUP:
            warm_end = elapsed
        if elapsed >= args.max_time:
            break
        if elapsed >= next_eval:
            evaluate(elapsed)
            next_eval = (math.floor((time.perf_counter() - start) / (args.max_time / 10)) + 1) * args.max_time / 10
    evaluate(elapsed)
    elapsed = time.perf_counter() - start
    best = min(point[2] for point in curve)
    chars_per_s = iteration * BATCH * BLOCK / max(elapsed - eval_time, 1e-9)
    print(f"best val {best:.4f} nats/char after {iteration} iterations ({chars_per_s:.0f} chars/s training), "
          f"parameters {params}")
    if args.json:
        result = {"best_val": best, "iterations": iteration, "elapsed_s": round(elapsed, 2), "params": params,
                  "curve": curve}
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
