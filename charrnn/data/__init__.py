"""Text in, integers out. The path of every text, a step per module, each calling only those above it:

    sources.py     a corpus name -> a path (tinyshakespeare fetched once, pystdlib built once)
    documents.py   paths -> documents: the files named, found, filtered and ordered, each with its stamp
                   (and its label under --label-by)
    textfile.py    a document -> its text: the one reader (strict UTF-8, in blocks)
    vocab.py       characters <-> indices: the vocabulary and the one encoder of code points
    cache.py       where scans and encodings are kept, keyed by every file's stamp and the filters
    collection.py  documents -> an encoded text: scanned once, encoded once, memory-mapped from the cache
    dataset.py     what train, eval and info read: the run's vocabulary (--max-vocab; a resumed or fine-tuned
                   run's first), the split (of every label), data.json
    batching.py    an encoded text -> B streams cut into windows of T characters (and their labels): the batches

A single file is a collection of one document (validation: its last --val-frac); a folder, several
paths and pystdlib are collections of many (validation: whole documents).
"""
