"""Labels at the seams (issue #29): defects an independent review found, each a test that failed before its fix."""
from __future__ import annotations

import random

import numpy as np
import pytest

from charrnn.checkpoint import read_safetensors
from charrnn.cli import main


def write_poems(root, authors=("alice", "bob"), files=2, chars=600):
    rng = random.Random(0)
    for a, author in enumerate(authors):
        folder = root / "poems" / author
        folder.mkdir(parents=True)
        alphabet = "abc de\n" if a % 2 == 0 else "xyz uv\n"
        for i in range(files):
            (folder / f"{author}{i}.txt").write_text("".join(rng.choice(alphabet) for _ in range(chars)))
    return root / "poems"


TINY = ["--hidden", "8", "--embed", "4", "--batch-size", "2", "--seq-len", "16", "--eval-every", "5"]


@pytest.mark.parametrize("impl", ["library", "scratch"])
def test_a_labelled_torch_run_resumes_from_its_checkpoint_file_as_if_uninterrupted(tmp_path, capsys, impl):
    """The library engine keeps label.weight inside W_ih_l0 and reindexes its optimizer slots through
    own_to_canonical/canonical_to_own; the checkpoint stores torch's 0-d `step` as shape (1,) (np.ascontiguousarray),
    which reindex_slots then takes for a per-weight slot and tries to split: every labelled library run, and a
    scratch run resumed with --impl library, is refused as 'damaged'."""
    pytest.importorskip("torch")
    poems = write_poems(tmp_path)
    common = ["train", "--data", str(poems), "--label-by", "folder", "--impl", impl, *TINY]
    assert main([*common, "--out", str(tmp_path / "full"), "--max-iters", "10"]) == 0
    assert main([*common, "--out", str(tmp_path / "half"), "--max-iters", "5"]) == 0
    capsys.readouterr()
    code = main(["train", "--resume", "--out", str(tmp_path / "half"), "--max-iters", "10", "--impl", "library"])
    assert code == 0, capsys.readouterr().err
    full = read_safetensors(tmp_path / "full" / "model.safetensors")[0]
    half = read_safetensors(tmp_path / "half" / "model.safetensors")[0]
    # library after library: the same kernels on the same inputs, so exactly equal; scratch then library: float32
    # rounding of two orders of summation over a few steps, far below 1e-5
    tol = 0.0 if impl == "library" else 1e-5
    for name, value in full.items():
        np.testing.assert_allclose(half[name], value, rtol=0, atol=tol, err_msg=name)


def test_a_labelled_run_fine_tunes_onto_the_text_of_one_new_label(tmp_path, capsys):
    """Issue #29: 'a run with labels fine-tunes onto a new label the same way'. The new text is one author's folder;
    the model then has the parent's labels and the new one (three), but the fine-tune is refused because the text
    alone has one label."""
    poems = write_poems(tmp_path)
    assert main(["train", "--data", str(poems), "--label-by", "folder", "--out", str(tmp_path / "parent"),
                 "--max-iters", "2", *TINY]) == 0
    carol = write_poems(tmp_path / "more", authors=("carol",))
    capsys.readouterr()
    code = main(["train", "--data", str(carol), "--label-by", "folder", "--init-from", str(tmp_path / "parent"),
                 "--out", str(tmp_path / "child"), "--max-iters", "2", "--batch-size", "2", "--seq-len", "16"])
    assert code == 0, capsys.readouterr().err


def test_label_by_file_gives_two_files_that_differ_only_in_extension_two_labels(tmp_path, capsys):
    """--label-by file is 'each file'; x.txt and x.md in one folder silently become one label (their names
    without the extension are the same, and so are their whole names without it)."""
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "x.txt").write_text("abc de\n" * 50)
    (folder / "x.md").write_text("xyz uv\n" * 50)
    (folder / "y.txt").write_text("abz dv\n" * 50)
    assert main(["info", str(folder), "--label-by", "file", "--json"]) == 0
    import json

    labels = json.loads(capsys.readouterr().out)["labels"]
    assert len(labels) == 3, labels


def test_preset_auto_probes_a_labelled_model_without_a_traceback(tmp_path, capsys):
    """--preset auto's speed probe (train/cli.py _probe_step) steps the run's model, labelled here, with no labels:
    a ValueError traceback and exit 1 before anything is written."""
    pytest.importorskip("torch")
    poems = write_poems(tmp_path)
    code = main(["train", "--data", str(poems), "--label-by", "folder", "--preset", "auto", "--max-time", "4",
                 "--max-iters", "3", "--batch-size", "2", "--seq-len", "16", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err


def test_val_chars_on_a_labelled_run_validates_every_label(tmp_path):
    """--val-chars keeps the first N characters of the validation text; a labelled text's come label by label, so
    the first N were all the first label's: it now takes N / labels of each."""
    from charrnn.data.batching import first_of_each_label

    data = np.arange(30, dtype=np.int64)
    segments = (np.array([0, 10, 20]), np.array([0, 1, 2]))
    text, (starts, ids) = first_of_each_label(data, segments, 12)
    assert text.tolist() == [0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23]
    assert starts.tolist() == [0, 4, 8] and ids.tolist() == [0, 1, 2]


def test_a_changed_label_rule_on_resume_says_so_in_words(tmp_path, capsys):
    poems = write_poems(tmp_path, files=3)
    assert main(["train", "--data", str(poems), "--label-by", "folder", "--out", str(tmp_path / "r"),
                 "--max-iters", "2", *TINY]) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(poems), "--label-by", "file", "--resume", "--out", str(tmp_path / "r"),
                 "--max-iters", "3"]) == 2
    err = capsys.readouterr().err
    assert "the labels are --label-by file (" in err and "were --label-by folder (alice, bob)" in err
    assert "was 0.1" not in err
