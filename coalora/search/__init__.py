"""The configuration search: a segment-wise Pareto archive, training-set selection, and proposers.

- :mod:`.settings`: method, generator, segments, GP options;
- :mod:`.pareto_search`: :class:`~coalora.search.pareto_search.ParetoSearch`, what a round calls: it
  coordinates an archive, a selection policy and a proposer;
- :mod:`.archive`: the observations, the latest finite value per configuration, de-duplication;
- :mod:`.selection`: the training-set selection policy of each method (segment fronts, frozen, growing);
- :mod:`.proposers`: the :class:`~coalora.search.proposers.Proposer` protocol, one proposer per method and
  their registry (random, NSGA-II, frozen);
- :mod:`.gp_proposer`: the ``gp`` method's proposer (GP fit, pool and fd-walk generators);
- :mod:`.gp`: encodings, the additive bits kernel, qLogNEHVI (BoTorch);
- :mod:`.moves`: mutations, crossovers, the finite-difference walk, spread selection, random spread;
- :mod:`.nsga2`: the NSGA-II baseline (Optuna);
- :mod:`.state`: the saved search state (``search.json`` and ``archive.parquet``, format versions).
"""
