"""The configuration search: a segment-wise Pareto archive, training-set selection, and proposers.

- :mod:`.settings`: method, generator, segments, GP options;
- :mod:`.pareto_search`: :class:`~coalora.search.pareto_search.ParetoSearch`, what a round calls;
- :mod:`.gp`: encodings, the additive bits kernel, qLogNEHVI (BoTorch);
- :mod:`.moves`: mutations, crossovers, the finite-difference walk, spread selection;
- :mod:`.nsga2`: the NSGA-II baseline (Optuna).
"""
