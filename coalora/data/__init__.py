"""Data: packaged corpora, user tables, hub data sets, splits, tokenisation and batching.

- :mod:`.registry`: short data-set names; :mod:`.corpora`: loading any data set (``load_dataset``);
- :mod:`.tables`: CSV/TSV, JSONL, Parquet; :mod:`.hub`: Hugging Face data sets (needs ``datasets``);
- :mod:`.example`, :mod:`.splits`: one example, seeded splits;
- :mod:`.batching`: token tensors built once, seeded shuffled batches, evaluation batches.
"""
