"""The adapted model: loading a base model, the shared LoRA, and the configuration-aware hypernetwork.

- :mod:`.registry`, :mod:`.loading`, :mod:`.tiny`: short model names, loading any model, tiny random ones;
- :mod:`.lora`: the quantized frozen base with one shared LoRA per matrix (``CoaModel``);
- :mod:`.hypernet`: configuration → an ``r × r`` adjustment per matrix;
- :mod:`.settings`: the ``lora:`` and ``hypernet:`` settings (no torch: the config loader builds them);
- :mod:`.weight_cache`, :mod:`.memory`: quantized weights kept between steps, and the memory plan.
"""
