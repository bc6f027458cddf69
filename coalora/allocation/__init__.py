"""Allocation: from a bit budget to a configuration.

- :mod:`.sensitivity`: the target weights and their diagonal Fisher;
- :mod:`.error_tables`: ``err[i, k]`` per matrix and option, cached on disk;
- :mod:`.knapsack`: the multiple-choice knapsack (SciPy's HiGHS, or greedy) and the initial training set.
"""
