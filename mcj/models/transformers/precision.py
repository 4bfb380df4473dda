"""Named precisions of a transformer: the quantizer options that make a BERT or a ViT 8-bit
or binary, shared by the configs (``options(bits)`` is a model block's quantizer keys).

- 8: LSQ 8-bit (Esser et al. 2020) weights and inputs of every dense layer and both
  attention products' operands (Q8BERT-style 8-bit, Zafrir et al. 2019, with learned steps);
  ``embeddings=True`` also the word embedding table (Q8BERT quantizes it too).
- 1: binary encoder in BiT's two-set scheme (Liu et al. 2022): ApproxSign inputs and sign
  weights x per-channel mean|W| in every dense layer, sign Q, K and V, and the non-negative
  softmax probabilities to {0, s} with a learned s (``lsq(bits=1, signed=False)``: BiT's
  elastic binarization without its shift; ``bit_elastic`` is the full one).
- 32: float.
"""
QUANTIZED = {
    1: {'input_quantizer': 'approx_sign', 'kernel_quantizer': 'ste_sign',
        'kernel_scale': 'xnor', 'query_key_quantizer': 'ste_sign',
        'attention_quantizer': 'lsq(bits=1, signed=False)', 'value_quantizer': 'ste_sign'},
    8: {'input_quantizer': 'lsq(bits=8)', 'kernel_quantizer': 'lsq(bits=8)',
        'query_key_quantizer': 'lsq(bits=8)', 'attention_quantizer': 'lsq(bits=8, signed=False)',
        'value_quantizer': 'lsq(bits=8)'},
    32: {},
}
EMBEDDINGS = {8: {'embedding_quantizer': 'lsq(bits=8)'}}


def options(bits: int, embeddings: bool = False) -> dict:
  """The model options of precision ``bits`` (1, 8 or 32); ValueError for another."""
  if bits not in QUANTIZED:
    raise ValueError(f'bits must be one of {", ".join(map(str, sorted(QUANTIZED)))}, got '
                     f'{bits!r}.')
  return {**QUANTIZED[bits], **(EMBEDDINGS.get(bits, {}) if embeddings else {})}
