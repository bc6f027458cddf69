"""Evaluation throughput through Ray: 1 and 2 evaluator actors against the same work in-process.

Each evaluation = one configuration scored on the held-out split with the default model. Caches are
warm in every setting (each is run once before it is timed), torch uses one thread everywhere, and the
three settings are timed round-robin in one run. Targets (issue #5): 2 actors ≥ 1.7× one actor on 2
cores; one actor within 5 % of in-process.

    python benchmarks/ray_scaling.py [--quick] [--json] [--config configs/default.yaml]
"""

from __future__ import annotations

import os


import _bench  # noqa: E402


def main() -> None:
    p = _bench.parser(__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--configs", type=int, default=8, help="configurations per measurement")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    _bench.setup_threads(1)
    import numpy as np
    import ray

    from coalora.pipeline.config import load_config
    from coalora.pipeline.evaluate import evaluate_one
    from coalora.pipeline.experiment import build_adapted, load_base, load_data
    from orchestration.evaluators import EvaluatorPool

    overrides = ["ray.cpus_per_evaluator=1", "ray.configs_per_call=1"]
    n_cfg, repeats = args.configs, args.repeats
    if args.quick:
        overrides += ["model.name=tiny-bert", "data.max_eval=64", "lora.rank=4", "lora.alpha=8"]
        n_cfg, repeats = 4, 2
    cfg = load_config(args.config, overrides)
    # Three logical CPUs: the 1-actor pool and the 2-actor pool live side by side (one CPU each), but
    # only one setting runs at a time, so the two physical cores are never oversubscribed.
    ray.init(address="local", num_cpus=3, include_dashboard=False, logging_config=ray.LoggingConfig(log_level="ERROR"),
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}})
    try:
        loaded = load_base(cfg)
        model = build_adapted(cfg, loaded, "coa")
        configs = model.space.sample_near(3.5, np.random.default_rng(0), n_cfg, tol=1.0)
        batches = load_data(cfg, loaded.tokenizer, loaded.task).eval_batches(cfg, "validation")
        state_ref = ray.put(model.trainable_state())

        def in_process() -> None:
            for c in configs:
                model.set_config(c)
                evaluate_one(model, batches, loaded.task, cfg.eval.max_batches)

        pools = {n: EvaluatorPool(cfg, n) for n in (1, 2)}

        def through(n: int):
            return lambda: pools[n].evaluate(0, state_ref, configs)

        runs = {"in-process": in_process, "ray, 1 actor": through(1), "ray, 2 actors": through(2)}
        # warmup=1 fills every weight cache before anything is timed.
        med = _bench.interleaved_medians(runs, repeats=repeats, warmup=1)
        base = med["ray, 1 actor"]
        rows = [
            {"setting": k, "median_s": v, "evals_per_s": n_cfg / v, "speedup_vs_1_actor": base / v,
             "overhead_vs_in_process": v / med["in-process"] - 1.0}
            for k, v in med.items()
        ]
        for pool in pools.values():
            pool.shutdown()
    finally:
        ray.shutdown()
    _bench.emit(f"Ray evaluation scaling: {cfg.model.name}, {n_cfg} configurations × "
                f"{sum(len(b['labels']) for b in batches)} held-out examples, {os.cpu_count()} cores",
                rows, args.json, {"repeats": repeats,
                                  "targets": "2 actors >= 1.7x one actor; 1 actor within 5% of in-process"})


if __name__ == "__main__":
    main()
