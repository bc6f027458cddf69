"""The core: the quantization configuration space, the quantizer, and Pareto fronts.

Everything else stands on these three; they import nothing of coalora but its errors.

- :mod:`.space`: target matrices, quantization options (bits, block sizes, scale dtype), and
  configurations ``(N, 5)``; exact average bits.
- :mod:`.quant`: block-wise NormalFloat / integer quantization with double-quantized scales.
- :mod:`.pareto`: non-dominated masks, 2-D hypervolume, the segment-wise Pareto filter.
"""
