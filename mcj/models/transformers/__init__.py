"""Transformers built from mcj's quantized layers: BERT (``bert.py``) and ViT (``vit.py``).

Every linear map is a ``layers.QuantDense`` / ``layers.QuantConv`` taking the model options
``input_quantizer``, ``kernel_quantizer`` and ``kernel_scale``; both attention products run
through ``layers.QuantDotProductAttention`` with ``query_key_quantizer``,
``attention_quantizer`` and ``value_quantizer``. Everything is float by default (None).
"""
