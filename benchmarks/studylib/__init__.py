"""The study driver's parts (``benchmarks/study.py`` is its command line): settings < common < runner <
the parts (paper, headroom) and the report."""
