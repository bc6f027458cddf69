"""The study (issue #6): the paper's claims at CPU scale, run through the product's own commands.

Every number comes from ``python orchestration/run.py`` (coa with its search, and the search ablation)
or ``coalora train`` / ``coalora evaluate`` (the baselines and all final scores), called as a user would
call them; this script only sequences the commands, skips what is already done (it is resumable: rerun
it after an interruption), and turns the JSON the commands print into tables and plots.

Parts (``--parts``, comma-separated; default all):

- ``table2``: Table 2 at CPU scale (configs/study/minilm-rt.yaml). ``coa`` (4 orchestrated rounds with the
  GP search), ``shared``, ``per-config`` (one adapter per budget of ``eval.budgets``) and ``fp-lora``, each
  scored on the test split under the allocation configuration of every budget. Reports mean accuracy,
  the paired gap to per-config, the hypervolume of the accuracy-vs-bits front and the training time.
- ``seen-unseen``: coa's accuracy against bits on its last training set and on ``eval.random`` random
  configurations it never saw (shared on the same unseen ones, for reference).
- ``search-ablation``: the same orchestrated run with ``search.method`` = gp, nsga2, random-extend and
  frozen: hypervolume per round, and the final checkpoint's test accuracy on the random held-out
  configurations and on Table 2's allocation configurations.
- ``baseline-seeds``: table2's shared and per-config only, at several seeds: the seed-to-seed spread
  that coa's gap must beat (cheaper than all of table2 at a new seed; table2 reuses these runs).
- ``causal-lm``: SmolLM2-135M on the Wikipedia sample (configs/study/smollm2-wiki.yaml): coa, shared and
  per-config at the budgets of ``eval.budgets``, perplexity on held-out text.
- ``table2-options``: issue #15's options (``TABLE2_OPTIONS``) on Table 2's seeds, against Table 2's own
  runs (needs ``table2`` of the same seeds): no regression where quantization costs little.
- ``headroom``: the testbed where quantization hurts (configs/study/smollm2-lowbit.yaml): shared,
  per-config and coa's variants (``HEADROOM_VARIANTS``), test loss at the evaluated budgets and on random
  unseen configurations, and the gap each variant closes; learning curves from snapshots.
- ``headroom-full``: the same at the testbed configuration's own size (120 steps, 64 test blocks: about an
  hour per method on one core), beside the ``headroom`` tables: runs under ``runs/study-full/``, tables
  ``headroom-full*.csv``. (``headroom`` itself is published as a mid-size pass: ``--set train.steps=60
  --set train.warmup_steps=6 --set data.max_eval=32``.)
- ``headroom-search``: the search ablation on that testbed (gp, frozen, random-extend), orchestrated.
- ``headroom-span``: how much of each configuration's quantization residual the LoRA's directions can
  reach (benchmarks/residual_span.py).

Outputs: runs under ``runs/study/`` (checkpoints, archives, logs of every command), the small tables
and plots under ``benchmarks/results/study/`` (with ``manifest.json``: commands, commit, hardware), and
the report ``docs/results.md``, rendered from those tables into the prose of
``benchmarks/results/study/report-template.md``.

This file is the command line; the study itself is the package ``benchmarks/studylib/``: ``settings``
(parts, configurations, variants), ``common`` (shared helpers), ``runner`` (:class:`Study`: runs and logs
the commands, keeps the manifest), the parts (``paper``: Table 2 and the other claims of the paper;
``headroom``: the testbed of issue #15) and ``report``.

    python benchmarks/study.py [--parts table2,seen-unseen,...] [--seeds 0,1] [--quick] [--set KEY=VALUE ...]
                               [--variants NAME,...] [--exclude-trained] [--jobs N] [--report-only]

``--quick`` shrinks every part (2 rounds of 4 steps, 64 evaluation sentences) to check the pipeline
in a few minutes; its results and report go to ``benchmarks/results/study-quick/``. ``--report-only``
rewrites the report from the result files already there and runs nothing. ``--variants`` runs only the
named variants of ``headroom`` and ``table2-options`` and the named search methods of ``headroom-search``;
their tables keep what earlier calls recorded for the others. ``--jobs 2`` runs the headroom parts'
trainings of a seed two at a time, then their evaluations (each command is one process on one core).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path; the package lives under the repository.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.studylib.common import fmt  # noqa: E402
from benchmarks.studylib.headroom import headroom, headroom_full, headroom_search, headroom_span  # noqa: E402
from benchmarks.studylib.paper import (  # noqa: E402
    baseline_seeds,
    causal_lm,
    search_ablation,
    seen_unseen,
    table2,
    table2_options,
)
from benchmarks.studylib.report import write_report  # noqa: E402
from benchmarks.studylib.runner import Study  # noqa: E402
from benchmarks.studylib.settings import (  # noqa: E402
    HEADROOM_SEARCH_METHODS,
    HEADROOM_VARIANTS,
    PARTS,
    ROOT,
    TABLE2_OPTIONS,
    report_path,
    results_dir,
)


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    """The command line; ``root`` holds the runs, results and report (the repository but in tests)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--seeds", default="0", help="comma-separated seeds (train.seed and search.seed)")
    p.add_argument("--quick", action="store_true", help="a tiny version of every part, to check the pipeline")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every command")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the report from the result files already there; run nothing")
    p.add_argument("--variants", default=None,
                   help=f"headroom, headroom-full and table2-options parts: the comma-separated variants to run "
                        f"(default all: {','.join(HEADROOM_VARIANTS)}); on the testbed shared and per-config always run, and the "
                        f"baselines a chosen variant is matched with; table2-options runs those of "
                        f"{','.join(TABLE2_OPTIONS)} named; headroom-search those of "
                        f"{','.join(HEADROOM_SEARCH_METHODS)} named (earlier calls' rows stay in its tables)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="headroom parts: run up to N of a seed's trainings (then its evaluations) at once; each "
                        "uses one core, so 2 on a 2-core machine halves the wall time (default 1)")
    p.add_argument("--exclude-trained", action="store_true",
                   help="headroom parts: score without the evaluated configurations that a shared or coa training "
                        "set holds (listed in headroom-excluded.csv and the report) instead of stopping")
    args = p.parse_args(argv)
    results = results_dir(args.quick, root)
    if args.report_only:
        write_report(results, report_path(args.quick, root))
        return 0
    parts = args.parts.split(",")
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        p.error(f"unknown part(s) {unknown}; choose from {list(PARTS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds takes comma-separated integers, not {args.seeds!r}")
    if args.jobs < 1:
        p.error(f"--jobs must be 1 or more, not {args.jobs}")
    variants = None if args.variants is None else args.variants.split(",")
    wrong = [v for v in variants or [] if v not in HEADROOM_VARIANTS and v not in HEADROOM_SEARCH_METHODS]
    if wrong:
        p.error(f"unknown variant(s) {wrong}; choose from {list(HEADROOM_VARIANTS)} (headroom-search: "
                f"{list(HEADROOM_SEARCH_METHODS)})")
    st = Study(args.quick, args.set, variants, root=root)
    st.exclude_trained = args.exclude_trained
    st.jobs = args.jobs
    fns = {"table2": table2, "table2-options": table2_options, "seen-unseen": seen_unseen,
           "search-ablation": search_ablation, "causal-lm": causal_lm, "baseline-seeds": baseline_seeds,
           "headroom": headroom, "headroom-full": headroom_full, "headroom-search": headroom_search,
           "headroom-span": headroom_span}
    for part in parts:
        t0 = time.perf_counter()
        print(f"== {part} (seeds {seeds})", flush=True)
        result = fns[part](st, seeds)
        # Wall time of this call only (a resumed call reuses finished commands); each command's own
        # time is in manifest["commands"].
        st.manifest.setdefault("parts", {})[part] = {"seeds": seeds,
                                                     "last_call_seconds": round(time.perf_counter() - t0, 1)}
        st.save_manifest()
        for name, table in result.items():
            print(f"-- {name}")
            for row in table:
                print("   " + ", ".join(f"{k}={fmt(v)}" for k, v in row.items()))
    write_report(results, report_path(args.quick, root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
