"""The JAX/Flax LWM model and trainer with RingAttention.

Not yet built: this package reserves its place in the layout. It may import `lwmkit.packing` (its
input pipeline) and nothing else of lwmkit.
"""
