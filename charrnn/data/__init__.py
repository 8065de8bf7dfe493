"""Text in, integers out: named corpora and their download (sources), the one text reader (textfile),
encoding + cache + memory map (corpus), the vocabulary (vocab) and the seed's batch layout (batching)."""
