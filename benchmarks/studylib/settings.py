"""The study's fixed choices: its parts, configurations, the headroom testbed's variants and how they pair
up, the --quick sizes, and where results and the report go."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository

TEMPLATE = "report-template.md"  # in the results directory: the prose around the generated tables
PARTS = ("table2", "table2-options", "seen-unseen", "search-ablation", "causal-lm", "baseline-seeds", "headroom", "headroom-full",
         "headroom-search", "headroom-span")
MINILM = "configs/study/minilm-rt.yaml"
SMOLLM = "configs/study/smollm2-wiki.yaml"
LOWBIT = "configs/study/smollm2-lowbit.yaml"  # the headroom testbed (issue #15)
# The variants on the testbed beside the plain shared and per-config baselines: name -> (method, the --set
# values that make it), one per option of issue #15. A shared-* variant gives shared the same change, to tell
# whether it helps coa more than shared. The -random ones swap one of the two configurations of each step
# for a fresh random one, so every method keeps the same compute per step.
RANDOM_ONE = ["train.configs_per_step=1", "train.random_configs=1"]
HEADROOM_VARIANTS: dict[str, tuple[str, list[str]]] = {
    "coa": ("coa", []),
    "coa-warm": ("coa", ["hypernet.warm_start=0.5"]),
    "coa-damage": ("coa", ["hypernet.damage=true"]),
    "coa-residual": ("coa", ["lora.init=residual"]),
    "shared-residual": ("shared", ["lora.init=residual"]),
    "coa-random": ("coa", RANDOM_ONE),
    "shared-random": ("shared", RANDOM_ONE),
    "coa-distill": ("coa", ["train.distill=0.5"]),
    "shared-distill": ("shared", ["train.distill=0.5"]),
    # The structured core at 4 × the rank (issue #15, option 4): a rank-64 LoRA in 4 gated blocks of 16,
    # against shared at the same rank (shared-residual-r64); both start from the residual.
    "coa-gates": ("coa", ["lora.init=residual", "hypernet.residual_fit=200", "lora.rank=64", "lora.alpha=128",
                          "hypernet.gates=4"]),
    "shared-residual-r64": ("shared", ["lora.init=residual", "lora.rank=64", "lora.alpha=128"]),
    # Distillation on top of the best start (issue #15, option 5), against shared with the same two options.
    "coa-residual-fit-distill": ("coa", ["lora.init=residual", "hypernet.residual_fit=200", "train.distill=0.5"]),
    "shared-residual-distill": ("shared", ["lora.init=residual", "train.distill=0.5"]),
    # U_θ fitted, before any data, to each configuration's own residual within the residual-initialised LoRA.
    "coa-residual-fit": ("coa", ["lora.init=residual", "hypernet.residual_fit=200"]),
    # That fit within a trust region (hypernet.residual_fit_radius): each target core at most 0.5 or 1 × ‖I‖
    # from the identity. Unbounded, the lowest budgets' targets reach 8 × ‖I‖ on MiniLM and stopped it learning.
    "coa-residual-fit-r05": ("coa", ["lora.init=residual", "hypernet.residual_fit=200", "hypernet.residual_fit_radius=0.5"]),
    "coa-residual-fit-r1": ("coa", ["lora.init=residual", "hypernet.residual_fit=200", "hypernet.residual_fit_radius=1"]),
    # Both that fit and the random configurations (which help every method on the unseen set).
    "coa-residual-fit-random": ("coa", ["lora.init=residual", "hypernet.residual_fit=200", *RANDOM_ONE]),
    # The fit weighed by the inputs of 8 training batches (the output error rather than the weight error).
    "coa-residual-fit-x": ("coa", ["lora.init=residual", "hypernet.residual_fit=200",
                                   "hypernet.residual_fit_calibration=8"]),
    "coa-residual-fit-x-random": ("coa", ["lora.init=residual", "hypernet.residual_fit=200",
                                          "hypernet.residual_fit_calibration=8", *RANDOM_ONE]),
    # The fit kept: U_θ then trains at a tenth of the learning rate, so the data moves A and B more than
    # the configuration-aware cores fitted to every option (the unseen configurations' only knowledge).
    "coa-residual-fit-slow": ("coa", ["lora.init=residual", "hypernet.residual_fit=200", "train.hypernet_lr_scale=0.1"]),
    # Its matching shared: both options a shared LoRA can take.
    "shared-residual-random": ("shared", ["lora.init=residual", *RANDOM_ONE]),
    # A configuration-dependent direction (lora.bank): a rank-16 pair per (matrix, weight bit width), from the
    # residual. With a bank shared is configuration-aware too (by each matrix's width), so the pair is matched.
    "coa-bank": ("coa", ["lora.init=residual", "hypernet.residual_fit=200", "lora.bank=16", *RANDOM_ONE]),
    "shared-bank": ("shared", ["lora.init=residual", "lora.bank=16", *RANDOM_ONE]),
}
# per-config's variants (one adapter per evaluated configuration, each with the option): name -> --set values.
HEADROOM_PER_CONFIG: dict[str, list[str]] = {"per-config": [], "per-config-residual": ["lora.init=residual"]}
# A coa variant whose option the baselines take too is also scored against those (G_match: the gap between
# shared and per-config with the option that it closes): coa variant -> (shared variant, per-config variant).
HEADROOM_MATCH: dict[str, tuple[str, str]] = {
    "coa-residual": ("shared-residual", "per-config-residual"),
    "coa-residual-fit": ("shared-residual", "per-config-residual"),
    "coa-residual-fit-r05": ("shared-residual", "per-config-residual"),
    "coa-residual-fit-r1": ("shared-residual", "per-config-residual"),
    "coa-residual-fit-random": ("shared-residual-random", "per-config-residual"),
    "coa-residual-fit-x": ("shared-residual", "per-config-residual"),
    "coa-residual-fit-slow": ("shared-residual", "per-config-residual"),
    "coa-gates": ("shared-residual-r64", "per-config-residual"),  # per-config stays at rank 16
    "coa-residual-fit-distill": ("shared-residual-distill", "per-config-residual"),
    "coa-residual-fit-x-random": ("shared-residual-random", "per-config-residual"),
    "coa-bank": ("shared-bank", "per-config-residual"),  # per-config keeps rank 16 and no bank
    "coa-random": ("shared-random", "per-config"),
    "coa-distill": ("shared-distill", "per-config"),
}
HEADROOM_UNSEEN_PER_CONFIG = 3  # unseen configurations that per-config also trains an adapter for
# Learning curves (train.snapshots at a quarter, half and three quarters of the steps, and the end) for the
# baselines and the variant pair that decides; the others' snapshots are kept but not evaluated.
HEADROOM_CURVES = ("shared", "per-config", "per-config-residual", "shared-residual-random", "coa-residual-fit-random")
# --quick for the headroom part: minutes, not hours (the signal is weak at this size; it checks the pipeline).
QUICK_HEADROOM = ["train.steps=12", "train.warmup_steps=2", "data.max_eval=16", "data.max_train=256", "eval.random=4"]
SEARCH_METHODS = ("gp", "nsga2", "random-extend", "frozen")
# The search ablation on the headroom testbed (issue #15): the orchestrated coa with the options of this
# variant, in 4 rounds of a quarter of train.steps each, 4 candidates a round, segments across the
# training range. The one evaluator and one training worker fit the 2-core machine.
HEADROOM_SEARCH_METHODS = ("gp", "frozen", "random-extend")
HEADROOM_SEARCH_VARIANT = "coa-residual-fit"
HEADROOM_SEARCH_SETS = ["run.rounds=4", "search.candidates=4", "search.n_segments=8", "search.bits_range=[2.7, 4.5]",
                        "ray.num_workers=1", "ray.evaluators=1", "ray.search_cpus=0"]
UNSEEN_SEED = 4321  # seed of the random held-out configurations (never a training configuration)
QUICK = ["train.steps=4", "run.rounds=2", "data.max_eval=64", "data.max_train=512", "eval.random=3",
         "search.candidates=4"]
QUICK_LM = ["train.steps=3", "data.max_eval=8", "data.max_train=64"]


# Issue #15's options on Table 2 (MiniLM, where quantization costs little): the options that lead on the
# headroom testbed, for coa (orchestrated) and shared, against Table 2's plain runs of the same seeds. Each
# is the headroom variant of that name (``--variants`` picks some of them). The -random pair tells the bank's
# cost on MiniLM from that of its random training configurations (drawn across eval.random_bits).
TABLE2_OPTIONS: dict[str, tuple[str, list[str]]] = {
    name: HEADROOM_VARIANTS[name] for name in ("coa-residual-fit", "shared-residual", "coa-residual-fit-random",
                                               "shared-residual-random", "coa-bank", "shared-bank",
                                               "coa-residual-fit-r05", "coa-residual-fit-r1")}


# The residual-span analyses: name -> residual_span.py arguments. The bank run measures lora.bank's reach.
HEADROOM_SPAN_RUNS: dict[str, list[str]] = {"r16": ["--rank", "16"], "r64": ["--rank", "64"],
                                            "bank16": ["--rank", "16", "--bank", "16"]}


# ---------------------------------------------------------------------- the report
def results_dir(quick: bool, root: Path = ROOT) -> Path:
    """Where a study's tables, plots and manifest go (under ``root``, the repository but in tests)."""
    return root / "benchmarks" / "results" / ("study-quick" if quick else "study")


def report_path(quick: bool, root: Path = ROOT) -> Path:
    """The study's report: ``docs/results.md``; a quick check's stays beside its results."""
    return results_dir(True, root) / "results.md" if quick else root / "docs" / "results.md"
