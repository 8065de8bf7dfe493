"""Generate text from a charrnn model exported to ONNX, with NumPy and ONNX Runtime only.

    pip install numpy onnxruntime
    charrnn export --checkpoint runs/shakespeare --which best --format onnx --out shakespeare.onnx
    python onnx_generate.py shakespeare.onnx --prime "ROMEO:" --length 300 --temperature 0.8 --seed 1
    python onnx_generate.py poets.onnx --label dickinson --length 300   # a run trained with labels

Copy this file into your own service: it does not import charrnn. Everything the model needs is in
the .onnx file: the weights, the vocabulary and the model's shape (its metadata). The graph takes
characters and the recurrent state, and returns logits and the new state; ONNX Runtime keeps no
state between calls, so this script carries it from one call to the next.

With the same seed and temperature it prints exactly what `charrnn sample` prints: it draws the
next character with the same rule (softmax of logits / temperature, then one uniform number from
NumPy's default generator per character, inverse CDF).
"""
import argparse
import json
import sys

import numpy as np
import onnxruntime as ort


class CharModel:
    """One .onnx file: `step(chars, state) -> (logits, state)` and the vocabulary to encode and decode."""

    def __init__(self, path):
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.chars = json.loads(meta["vocab"])             # index -> character
        self.index = {c: i for i, c in enumerate(self.chars)}
        config = json.loads(meta["config"])                # cell, layers, hidden, embed, vocab_size, ...
        self.layers, self.hidden = config["layers"], config["hidden"]
        self.lstm = config["cell"] == "lstm"               # an LSTM carries two states: h and c
        # a run on a folder of documents learned a separator between them: an empty prime starts a new document;
        # a --max-vocab run has an unknown symbol (U+FFFD) for the characters it dropped: never drawn
        self.separator = json.loads(meta.get("doc_sep", "null"))
        self.unknown = json.loads(meta.get("unknown", "null"))
        # a run trained with labels (one per document) writes under one: the graph's `label` input, (1,)
        self.labels = json.loads(meta.get("labels", "[]"))
        self.label = None                                  # its index, set before the first step

    def zero_state(self, batch=1):
        """h0 (and c0): zeros of shape (layers, batch, hidden)."""
        shape = (self.layers, batch, self.hidden)
        return [np.zeros(shape, np.float32) for _ in range(2 if self.lstm else 1)]

    def step(self, chars, state):
        """chars: (batch, time) character indices. Returns logits (batch, time, vocab) and the new state."""
        feeds = {"chars": np.asarray(chars, dtype=np.int64), "h0": state[0]}
        if self.lstm:
            feeds["c0"] = state[1]
        if self.labels:
            feeds["label"] = np.array([self.label], dtype=np.int64)
        logits, *state = self.session.run(None, feeds)      # outputs: logits, hn (, cn)
        return logits, state


def next_char(logits, temperature, greedy, rng, banned=None):
    """One index from a row of logits (vocab,): the argmax, or a draw at this temperature; never `banned`."""
    if banned is not None:
        logits = logits.copy()
        logits[banned] = -np.inf
    if greedy:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) * (1.0 / temperature)
    p = np.exp(z - z.max())                                 # unnormalized probabilities
    cdf = np.cumsum(p)
    u = rng.random() * cdf[-1]                              # one uniform number per character
    return min(int((cdf <= u).sum()), len(p) - 1)           # the first index whose cdf exceeds u


def generate(model, prime, length, temperature=1.0, greedy=False, seed=None):
    """Yield `length` characters after feeding `prime` (an empty prime starts a new document, else a newline)."""
    rng = np.random.default_rng(seed)
    start = prime or model.separator or ("\n" if "\n" in model.index else model.chars[0])
    banned = model.index.get(model.unknown)
    state = model.zero_state()
    logits, state = model.step([[model.index[c] for c in start]], state)  # the whole prime in one call
    last = logits[0, -1]
    for _ in range(length):
        i = next_char(last, temperature, greedy, rng, banned)
        yield model.chars[i]
        logits, state = model.step([[i]], state)            # one character in, the state carried
        last = logits[0, -1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a .onnx file written by 'charrnn export --format onnx'")
    parser.add_argument("--prime", default="", help="text to start from")
    parser.add_argument("--length", type=int, default=500, help="characters to generate")
    parser.add_argument("--temperature", type=float, default=1.0, help="> 0; lower is more conservative")
    parser.add_argument("--greedy", action="store_true", help="always take the most likely character")
    parser.add_argument("--seed", type=int, help="the same seed gives the same text")
    parser.add_argument("--label", help="a run trained with labels: the label to write under")
    args = parser.parse_args()

    model = CharModel(args.model)
    if model.labels and args.label not in model.labels:
        parser.error(f"this model was trained with labels {', '.join(model.labels)}; give --label NAME")
    if args.label is not None and not model.labels:
        parser.error("this model was trained without labels; drop --label")
    model.label = model.labels.index(args.label) if model.labels else None
    if model.unknown:                                       # a --max-vocab run reads what it lacks as its symbol
        args.prime = "".join(c if c in model.index else model.unknown for c in args.prime)
    unknown = sorted(set(args.prime) - set(model.index))
    if unknown:
        parser.error(f"the prime has characters the model does not know: {unknown}")
    sys.stdout.write(args.prime)
    for ch in generate(model, args.prime, args.length, args.temperature, args.greedy, args.seed):
        sys.stdout.write(ch)
        sys.stdout.flush()                                  # stream each character as it comes
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
