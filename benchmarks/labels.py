"""Labels (`--label-by`): does one labelled model beat an unlabelled one of the same size and budget on each
label's held-out documents, and can it tell which label a text came from?

    python benchmarks/labels.py [--iters 1500] [--hidden 256] [--kb 120] [--keep]

The texts: Debian changelog entries (the bodies only: no package line, no signature, no team credit "[ Name ]",
the maintainers' names replaced) by three maintainers of the same era, read from this machine's
/usr/share/doc/*/changelog.Debian.gz, one folder per maintainer, each document a package's consecutive entries
(about 3 KB). Nothing is committed or downloaded.

1. `charrnn train --label-by folder` on the three folders (its validation: whole documents of every label).
2. The same model and iterations without labels, trained on exactly the labelled run's training documents and
   validated on its held-out ones (--val-data), so both are judged on the same unseen documents.
3. Each label's held-out documents: loss of both models (the labelled one under the true label).
4. Attribution: the held-out documents cut into 2,000-character pieces, each assigned to the label under which
   the labelled model's loss is lowest; accuracy against chance (1/3).
5. 50 samples of 300 characters per label (`sample --label X`, temperature 1), attributed the same way.
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from _common import ROOT, machine_line, print_table, scratch_folder

sys.path.insert(0, str(ROOT))
AUTHORS = ("Matthias Klose", "Simon McVittie", "Aurelien Jarno")
DOC_CHARS = 3000
PIECE = 2000
SAMPLES, SAMPLE_CHARS = 50, 300
SIGNATURE = re.compile(r"^ -- (.+?) <[^>]*>  .*$", re.M)
HEADER = re.compile(r"^\S.*\(.*\).*;.*urgency=.*$", re.M)
CREDIT = re.compile(r"^\s*\[ .* \]\s*$\n?", re.M)   # "[ Name ]": who did it, in a team's entry


def entries_by_author(authors) -> dict:
    """author -> {package: [entry body, ...]}, each entry once (binary packages of one source share a changelog)."""
    found, seen = {a: defaultdict(list) for a in authors}, set()
    for path in sorted(Path("/usr/share/doc").glob("*/changelog.Debian.gz")):
        try:
            text = gzip.decompress(path.read_bytes()).decode("utf-8")
        except (OSError, UnicodeDecodeError, EOFError):
            continue
        start = 0
        for match in SIGNATURE.finditer(text):
            entry, start = text[start:match.start()], match.end()
            package = (HEADER.search(entry).group(0).split()[0] if HEADER.search(entry) else path.parent.name)
            body = CREDIT.sub("", HEADER.sub("", entry)).strip("\n")
            for name in authors:  # a maintainer thanked or named in an entry must not give the label away
                body = body.replace(name, "someone").replace(name.split()[-1], "someone")
            if match.group(1) in found and body.strip() and body not in seen:
                seen.add(body)
                found[match.group(1)][package].append(body)
    return found


def write_collection(root: Path, authors, kb: int) -> None:
    for author, packages in entries_by_author(authors).items():
        folder = root / author.split()[-1].lower()
        folder.mkdir(parents=True)
        total, n = 0, 0
        for package in sorted(packages):
            doc = []
            for i, body in enumerate(packages[package]):
                doc.append(body)
                last = i == len(packages[package]) - 1
                if sum(map(len, doc)) >= DOC_CHARS or (last and sum(map(len, doc)) >= PIECE // 4):
                    (folder / f"{package}-{n}.txt").write_text("\n\n".join(doc) + "\n", encoding="utf-8")
                    total, n, doc = total + sum(map(len, doc)), n + 1, []
            if total >= kb * 1000:
                break


def train(args, out: Path, data_args, env) -> float:
    cmd = [sys.executable, "-m", "charrnn", "train", *data_args, "--out", str(out), "--impl", "library",
           "--hidden", str(args.hidden), "--layers", "2", "--embed", "64", "--batch-size", "32", "--seq-len", "100",
           "--max-iters", str(args.iters), "--schedule", "cosine", "--eval-every", str(max(1, args.iters // 10)),
           "--log-every", "100", "--overwrite"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"training failed: {done.stderr.strip().splitlines()[-1]}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=1500)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--kb", type=int, default=120, help="about this many KB of entries per maintainer")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    import os

    import numpy as np

    import charrnn

    with scratch_folder("charrnn-labels-", args.keep) as tmp:
        env = dict(os.environ, CHARRNN_DATA_DIR=str(tmp / "cache"),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        coll = tmp / "changelogs"
        write_collection(coll, AUTHORS, args.kb)
        labelled, plain = tmp / "labelled", tmp / "plain"
        seconds = {"labelled": train(args, labelled, ["--data", str(coll), "--label-by", "folder"], env)}
        record = json.loads((labelled / "data.json").read_text(encoding="utf-8"))
        held = [d for d in record["documents"] if d.get("held_out")]
        assert all(d["held_out"] is True for d in held), "every maintainer has several documents"
        (tmp / "train").mkdir()
        (tmp / "val").mkdir()
        for d in record["documents"]:
            target = tmp / ("val" if d.get("held_out") else "train") / d["key"]
            target.parent.mkdir(exist_ok=True)
            target.write_bytes((coll / d["key"]).read_bytes())
        seconds["plain"] = train(args, plain, ["--data", str(tmp / "train"), "--val-data", str(tmp / "val")], env)

        with_labels = charrnn.load(labelled, which="best", impl="naive")
        without = charrnn.load(plain, which="best", impl="naive")
        texts = {label: [(coll / d["key"]).read_text(encoding="utf-8") for d in held if d["label"] == label]
                 for label in record["labels"]}
        rows = []
        for label, docs in texts.items():
            n = sum(len(t) for t in docs)
            lab = sum(with_labels.evaluate(t, unknown="skip", label=label).loss * len(t) for t in docs) / n
            unl = sum(without.evaluate(t, unknown="skip").loss * len(t) for t in docs) / n
            rows.append([label, f"{len(docs)}", f"{n:,}", f"{unl:.3f}", f"{lab:.3f}", f"{lab - unl:+.3f}"])
        pieces = [(label, t[i:i + PIECE]) for label, docs in texts.items() for t in docs
                  for i in range(0, len(t) - PIECE + 1, PIECE)]
        right = sum(with_labels.evaluate_by_label(p, unknown="skip")[0][0] == label for label, p in pieces)
        made = {label: [with_labels.sample(length=SAMPLE_CHARS, temperature=1.0, seed=i, label=label)
                        for i in range(SAMPLES)] for label in record["labels"]}
        own = {label: sum(with_labels.evaluate_by_label(s, unknown="skip")[0][0] == label for s in samples)
               for label, samples in made.items()}
        print("# labels: one labelled model vs an unlabelled one of the same size and iterations")
        print(machine_line())
        print(f"texts: Debian changelog entries by {', '.join(AUTHORS)} (bodies only), ~{args.kb} KB each; "
              f"2x{args.hidden} LSTM, {args.iters} iterations, library engine; training took "
              f"{seconds['labelled']:.0f} s labelled, {seconds['plain']:.0f} s unlabelled; scored with "
              "best.safetensors")
        print()
        print_table(["label", "held-out docs", "characters", "unlabelled loss", "labelled loss", "difference"], rows)
        chance = 1 / len(record["labels"])
        print(f"\nattribution of {len(pieces)} held-out pieces of {PIECE:,} characters: {right}/{len(pieces)} = "
              f"{right / max(1, len(pieces)):.1%} (chance {chance:.1%})")
        for label, count in own.items():
            print(f"samples with --label {label}: {count}/{SAMPLES} attributed to {label} = {count / SAMPLES:.0%} "
                  f"(chance {chance:.0%})")
        print(f"mean over labels: {np.mean(list(own.values())) / SAMPLES:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
