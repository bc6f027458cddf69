"""The pipeline: an experiment from its YAML to a trained, scored, exported adapter, in one process.

- :mod:`.config`: the YAML schema (loaded and checked before any work starts);
- :mod:`.experiment`: from a configuration to a model, data, a space and a training set;
- :mod:`.train`, :mod:`.evaluate`, :mod:`.methods`: the training loop, scoring, the four methods;
- :mod:`.checkpoint`, :mod:`.export`: saving and loading a trained model; a deployable PEFT adapter;
- :mod:`.rundir`: reading a run directory.
"""
