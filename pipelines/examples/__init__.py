"""Shared stage families: LWM's vision-text examples (image-to-text, text-to-image, and their templates).

    vision_text.py   Example, ExampleBuilder, Templates, choose_kind
"""
