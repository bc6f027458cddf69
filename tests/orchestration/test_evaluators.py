"""An evaluator that runs out of memory is that actor's failure, never the configuration's result.

The out-of-memory is real: the evaluator's address space is capped (``RLIMIT_AS``) a little above what
its loaded model needs, so torch's allocator fails on a large evaluation batch and succeeds on a
smaller one. The model is a tiny Llama with a 65,536-token vocabulary, so that one 128-token block's
logits take 32 MB and a few copies of them are alive at once: measured here, 4 blocks need more than
300 MB beyond the loaded model, 2 blocks less than 200 MB, 1 block more than 50 MB. The pool must
replace the actor with one at half the batch and redo the work; the scores must equal those computed
in this process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import ray

from coalora.pipeline.config import load_config
from orchestration.evaluators import EvaluatorActor, EvaluatorPool

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
LM = ["data.name=wiki", "data.block_size=128", "data.max_eval=8", "data.max_train=8", "ray.evaluators=1",
      "ray.configs_per_call=1", "ray.cpus_per_evaluator=0.5"]


@pytest.fixture(scope="module")
def big_vocab(tmp_path_factory) -> str:
    """A tiny random Llama (2 layers, hidden 64) with a 65,536-token vocabulary, saved as a model directory."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from coalora.model.tiny import build_tiny_tokenizer

    d = tmp_path_factory.mktemp("big-vocab")
    cfg = LlamaConfig(vocab_size=65536, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    build_tiny_tokenizer("llama").save_pretrained(d)
    return str(d)


class _Capped(EvaluatorActor):
    """An evaluator whose address space may grow only ``headroom_mb`` beyond its loaded model."""

    headroom_mb = 0

    def __init__(self, *args, **kwargs) -> None:
        import resource

        import psutil

        super().__init__(*args, **kwargs)
        # Map the object store into this process before the cap (the round's weights arrive through it).
        ray.get(ray.put(np.zeros(1 << 18)))
        vms = psutil.Process().memory_info().vms
        resource.setrlimit(resource.RLIMIT_AS, (vms + self.headroom_mb * 2**20, resource.RLIM_INFINITY))


def _capped(headroom_mb: int):
    cls = type(f"Capped{headroom_mb}", (_Capped,), {"headroom_mb": headroom_mb})
    return ray.remote(cls)


def _state_and_configs(cfg):
    from coalora.pipeline.experiment import build_adapted, load_base

    model = build_adapted(cfg, load_base(cfg), "coa")
    configs = model.space.sample_near(4.0, np.random.default_rng(0), 2)
    return model, configs


def test_out_of_memory_evaluator_is_replaced_with_half_the_batch(ray_local, big_vocab):
    from coalora.pipeline.evaluate import evaluate_one
    from coalora.pipeline.experiment import load_base, load_data

    cfg = load_config(ROOT / "configs" / "smoke.yaml", [f"model.name={big_vocab}", *LM, "data.eval_batch_size=4"])
    model, configs = _state_and_configs(cfg)
    said: list[str] = []
    pool = EvaluatorPool(cfg, say=said.append, actor_class=_capped(250))
    try:
        rows = pool.evaluate(0, ray.put(model.trainable_state()), configs)
    finally:
        pool.shutdown()
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
    assert pool.batch_size == 2 and pool.spawned == 2  # one replacement, at half the batch
    assert said == [said[0]] and said[0].startswith("evaluator-0 ran out of memory at evaluation batch 4: ")
    assert said[0].endswith("retrying on a new evaluator with batch 2")
    loaded = load_base(cfg)
    batches = load_data(cfg, loaded.tokenizer, loaded.task).eval_batches(cfg, "validation")
    for c, row in zip(configs, rows):
        model.set_config(c)
        assert row["loss"] == pytest.approx(evaluate_one(model, batches, loaded.task)["loss"], rel=1e-6)


def test_out_of_memory_at_batch_one_fails_the_run_not_the_configuration(ray_local, big_vocab):
    # One 512-token block's logits alone are 128 MB: far beyond the 20 MB cap and any free heap space.
    cfg = load_config(ROOT / "configs" / "smoke.yaml", [f"model.name={big_vocab}", *LM, "data.block_size=512",
                                                        "data.eval_batch_size=2"])
    model, configs = _state_and_configs(cfg)
    pool = EvaluatorPool(cfg, actor_class=_capped(20))
    try:
        with pytest.raises(RuntimeError, match="does not fit in memory even one example at a time"):
            pool.evaluate(0, ray.put(model.trainable_state()), configs[:1])
    finally:
        pool.shutdown()
