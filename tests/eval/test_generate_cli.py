"""`lwm-generate` end to end with the tiny model and random weights: an MP4 of n frames that PyAV
opens, a PNG, refusals before any work, and chat over the generated video on 4 virtual CPU devices."""

from __future__ import annotations

import av
import numpy as np
import pytest
from lwmkit.eval.inference.chat_cli import main as chat_main
from lwmkit.eval.inference.generate_cli import main, output_kind
from PIL import Image

# The tiny LWM preset as it is: LWM's vision numbering (8192 codes, <eof> 8192), the VQGAN's codes.
MODEL = ["--preset", "tiny", "--vqgan-preset", "tiny", "--vqgan-batch-size", "3"]
ONE_DEVICE = ["--mesh", "1,1,1,1", "--num-devices", "1"]


@pytest.fixture(scope="module")
def video(bpe_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("generated") / "fox.mp4")
    argv = ["--tokenizer", bpe_model, "--prompt", "a red fox", "--output", path, "--frames", "3",
            "--cfg-scale-image", "3", "--top-k-video", "50", *MODEL, *ONE_DEVICE]  # fmt: skip
    assert main(argv) == 0
    return path


def test_generated_video_opens_with_pyav_and_has_n_frames(video, capsys):
    with av.open(video) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.codec_context.name in ("h264", "mpeg4")
    assert len(frames) == 3 and all(f.shape == (256, 256, 3) for f in frames)
    assert float(np.std(frames[0])) > 1  # decoded codes, not a blank frame


def test_chat_over_the_generated_video_on_four_devices(video, bpe_model, capsys):
    capsys.readouterr()
    argv = ["--tokenizer", bpe_model, "--media", video, "--question", "What is in the video?",
            "--mesh", "1,1,1,4", "--num-devices", "4", "--max-new-tokens", "8", "--chunk", "4", *MODEL]  # fmt: skip
    assert chat_main(argv) == 0
    out = capsys.readouterr()
    assert "(771 vision)" in out.err  # 3 frames x 257 vision tokens, prefilled as RingAttention over sp=4
    assert out.out.endswith("\n")


def test_png_output_is_one_frame(bpe_model, tmp_path):
    path = str(tmp_path / "fox.png")
    argv = ["--tokenizer", bpe_model, "--prompt", "a red fox", "--output", path, "--cfg-scale-image", "3",
            *MODEL, *ONE_DEVICE]  # fmt: skip
    assert main(argv) == 0
    with Image.open(path) as im:
        assert im.size == (256, 256) and im.mode == "RGB"


def test_refusals_come_before_any_work(bpe_model, tmp_path, capsys):
    base = ["--tokenizer", bpe_model, "--prompt", "a fox", *ONE_DEVICE]
    assert main([*base, "--output", str(tmp_path / "a.png"), "--frames", "3", *MODEL]) == 1
    assert "an image holds one frame" in capsys.readouterr().err
    assert main([*base, "--output", str(tmp_path / "a.gif"), *MODEL]) == 1
    assert "unknown output type '.gif'" in capsys.readouterr().err
    small = ["--set", "vision_codes=256", "--set", "vision_vocab_size=320"]  # a code book the VQGAN's codes overflow
    assert main([*base, "--output", str(tmp_path / "a.png"), *MODEL, *small]) == 1
    assert "256 vision codes" in capsys.readouterr().err
    assert main([*base, "--output", str(tmp_path / "a.png"), *MODEL, "--cfg-scale-image", "-1"]) == 1
    assert "cfg_scale" in capsys.readouterr().err
    assert output_kind("x.MP4", 1) == "video" and output_kind("x.jpg", 1) == "image"
