"""Evaluation (needle-in-a-haystack generator and evaluator).

Not yet built: this package reserves its place in the layout. It may import `lwmkit.lwm_model`,
`lwmkit.tokenizers` and `lwmkit.packing`.
"""
