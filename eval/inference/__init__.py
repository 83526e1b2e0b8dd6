"""Inference with an LWM checkpoint: `lwm-chat` and `lwm-generate`, and the media they read and write.

    chat_cli.py      `lwm-chat`: chat over an image, a video or a text file
    generate_cli.py  `lwm-generate`: text to image or video with classifier-free guidance
    media.py         reading frames and text, writing PNGs and videos

They live in `eval/` because only `eval/` may join the model (`lwm_model/`) and the tokenizers
(`tokenizers/`), STYLE.md's direction; in a folder of their own, apart from the
needle-in-a-haystack evaluation.
"""
