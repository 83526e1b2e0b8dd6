"""`lwm-chat` and its media: frames sampled by count, LWM's chat layout (the same one the video needle
builds), streamed text, vocabulary checks, and a text-file chat whose printed answer is the model's."""

from __future__ import annotations

import numpy as np
import pytest
from lwmkit.eval.inference.chat_cli import (
    ModelSpec,
    TextStream,
    chat_prompt,
    load_model,
    main,
    random_params,
)
from lwmkit.eval.inference.media import (
    MediaError,
    count_frames,
    read_frames,
    sample_frame_indices,
    write_png,
    write_video,
)
from lwmkit.lwm_model.config import preset
from lwmkit.tokenizers.text import SentencePieceTokenizer
from lwmkit.tokenizers.vision import frame_codes

TINY = ["--preset", "tiny", "--mesh", "1,1,1,1", "--num-devices", "1"]


@pytest.fixture(scope="module")
def tok(bpe_model):
    return SentencePieceTokenizer.from_file(bpe_model)


def test_frames_are_sampled_by_count():
    # LWM's rule (lwm/vision_chat.py np.linspace(0, n - 1, k, dtype=int)) and the video pipeline's.
    assert sample_frame_indices(300, 4) == [0, 99, 199, 299]  # linspace gives 0, 99.67, 199.33, 299
    assert sample_frame_indices(9, 3) == [0, 4, 8]
    assert sample_frame_indices(10, 4) == [0, 3, 6, 9]
    assert sample_frame_indices(5, 8) == [0, 1, 2, 3, 4]  # short clips keep every frame
    assert sample_frame_indices(0, 8) == []
    for n, k in ((1000, 7), (17, 16), (2, 1)):
        idx = sample_frame_indices(n, k)
        assert len(idx) == k and len(set(idx)) == k and idx == sorted(idx) and idx[0] == 0
        assert idx[-1] == (n - 1 if k > 1 else 0)
    with pytest.raises(ValueError, match="max_frames"):
        sample_frame_indices(10, 0)


def test_frame_sampling_is_the_video_pipelines():
    # Chat must see the frames the video pipeline would have tokenized from the same clip.
    from lwmkit.pipelines.videos.index import FrameSampling, sample_frames

    for n in (1, 5, 8, 9, 30, 257, 1000):
        for k in (1, 3, 8, 32):
            times = np.arange(n) / 10.0
            assert sample_frames(times, FrameSampling("count", num_frames=k)).tolist() == sample_frame_indices(n, k)


def test_video_frames_come_back_sampled_and_preprocessed(tmp_path):
    # Frame i is flat gray 20 i, 320x240: the kept frames are told apart by their level after H.264.
    levels = 20 * np.arange(10)
    frames = np.broadcast_to(levels[:, None, None, None], (10, 240, 320, 3)).astype(np.uint8)
    path = str(tmp_path / "clip.mp4")
    write_video(path, frames, fps=4)
    assert count_frames(path) == 10
    got = read_frames(path, max_frames=4)
    assert got.shape == (4, 256, 256, 3) and got.dtype == np.uint8
    np.testing.assert_allclose(got.mean(axis=(1, 2, 3)), levels[[0, 3, 6, 9]], atol=3)
    assert read_frames(path, max_frames=20).shape[0] == 10
    write_png(str(tmp_path / "a.png"), frames[5])
    image = read_frames(str(tmp_path / "a.png"))
    assert image.shape == (1, 256, 256, 3) and abs(float(image.mean()) - 100) < 1
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(MediaError, match="junk.mp4"):
        read_frames(str(tmp_path / "junk.mp4"))
    with pytest.raises(MediaError, match="no such file"):
        read_frames(str(tmp_path / "missing.mp4"))


class _Codes:
    """An image tokenizer stand-in that returns fixed codes (the layout test needs no VQGAN)."""

    config = type("C", (), {"num_embeddings": 8192})

    def __init__(self, codes):
        self.codes = codes

    def encode(self, frames):
        assert frames.shape == (len(self.codes), 256, 256, 3)
        return self.codes


def test_chat_prompt_is_the_video_needle_layout(tok, tmp_path):
    from lwmkit.eval.video_needle import (
        VideoHaystack,
        VideoHaystackSpec,
        VideoNeedle,
        build_video_case,
        video_prompt,
    )

    hay = VideoHaystack.load(VideoHaystackSpec("generated", seed=1, frames=8))
    needle = VideoNeedle(np.full((16, 16), 7), "What color is the square?", (), "red")
    case = build_video_case(hay, tok, needle, frames=3, depth=50.0)
    want = video_prompt(case)
    codes = np.stack(frame_codes(want.tokens, want.vision_mask))  # [4, 16, 16]
    video = np.zeros((4, 64, 64, 3), np.uint8)
    write_video(str(tmp_path / "v.mp4"), video)
    got = chat_prompt(tok, case["question"], media=str(tmp_path / "v.mp4"), image_tokenizer=_Codes(codes))
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.vision_mask, want.vision_mask)


def test_text_stream_pieces_add_up_to_the_answer(tok):
    text = "Café au lait ☕ costs 4 coins."
    ids = tok.encode(text)
    stream = TextStream(tok)
    pieces = [stream.push(ids[i : i + 2]) for i in range(0, len(ids), 2)]
    assert "".join(pieces) == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)  # a character split over pieces waits for its last byte
    cup = tok.encode("☕")[-3:]  # byte-fallback pieces of its three UTF-8 bytes
    cut = TextStream(tok)
    assert cut.push(cup[:2]) == "" and cut.flush() == tok.decode(cup[:2]) and "\ufffd" in cut.text


def test_vocabulary_disagreements_are_named(tok, bpe_model, tmp_path, capsys):
    from lwmkit.lwm_model.checkpoint import save_lwm_params

    small = preset("tiny")  # 256 text ids; the tokenizer has 600
    save_lwm_params(tmp_path / "params.msgpack", random_params(small))
    base = ["--tokenizer", bpe_model, "--question", "Who?", *TINY]
    assert main([*base, "--checkpoint", str(tmp_path / "params.msgpack")]) == 1
    assert "params.msgpack: the model's text vocabulary has 256 ids but the tokenizer" in capsys.readouterr().err
    write_png(str(tmp_path / "a.png"), np.zeros((64, 64, 3), np.uint8))
    media = [*base, "--media", str(tmp_path / "a.png"), "--vqgan-preset", "tiny"]
    assert main([*media, "--set", "vision_codes=256", "--set", "vision_vocab_size=320"]) == 1
    assert "256 vision codes (<eof>=256) but the VQGAN" in capsys.readouterr().err  # the VQGAN has 8192
    assert main([*media, "--set", "vision=false"]) == 1
    assert "text-only model" in capsys.readouterr().err
    with pytest.raises(ValueError, match="checkpoint_format"):
        ModelSpec(checkpoint_format="safetensors")


def test_text_file_chat_prints_the_models_answer(tok, bpe_model, tmp_path, capsys):
    import jax
    from lwmkit.lwm_model.chat import generate_text, prompt_batch
    from lwmkit.lwm_model.generate import SamplingConfig
    from lwmkit.lwm_model.prompts import text_chat_prompt

    doc = tmp_path / "letter.txt"
    doc.write_text("Dear Ada, the boat leaves at noon. Yours, Tom.", encoding="utf-8")
    argv = ["--tokenizer", bpe_model, "--text-file", str(doc), "--question", "When does the boat leave?",
            "--temperature", "0", "--max-new-tokens", "6", "--chunk", "4", "--seed", "5", *TINY]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    model, params = load_model(ModelSpec("tiny", mesh="1,1,1,1", num_devices=1, seed=5), tok, log=lambda _: None)
    prompt = text_chat_prompt(tok, "When does the boat leave?", doc.read_text(encoding="utf-8"))
    settings = SamplingConfig(6, eos_id=tok.eos_id, pad_id=tok.eos_id)
    ids = generate_text(model, params, prompt_batch(model, [prompt]), settings, jax.random.key(5), chunk=4)[0].tolist()
    assert printed == tok.decode(ids[: ids.index(tok.eos_id)] if tok.eos_id in ids else ids) + "\n"
    # The same weights saved as an LWM msgpack file load and give the same answer.
    from lwmkit.lwm_model.checkpoint import save_lwm_params

    save_lwm_params(tmp_path / "p.msgpack", jax.device_get(params))
    assert main([*argv, "--checkpoint", str(tmp_path / "p.msgpack")]) == 0
    assert capsys.readouterr().out == printed


def test_tiny_preset_chats_about_an_image_as_it_is(bpe_model, tmp_path, capsys):
    # No --set: the tiny preset's vision vocabulary is LWM's, the VQGAN's 8192 codes fit it.
    write_png(str(tmp_path / "cat.png"), np.full((64, 96, 3), 120, np.uint8))
    argv = ["--tokenizer", bpe_model, "--media", str(tmp_path / "cat.png"), "--question", "What is this?",
            "--vqgan-preset", "tiny", "--max-new-tokens", "4", "--chunk", "4", *TINY]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "(257 vision)" in out.err  # one frame: 256 codes and its end-of-vision id
    assert out.out.endswith("\n")


@pytest.mark.slow
def test_tiny_preset_chats_about_a_video_with_the_lwm_vqgan(bpe_model, tmp_path, capsys):
    # The real-size VQGAN (random weights: nothing is downloaded) encodes two frames for the tiny model.
    frames = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    write_video(str(tmp_path / "clip.mp4"), frames, fps=4)
    argv = ["--tokenizer", bpe_model, "--media", str(tmp_path / "clip.mp4"), "--question", "What happens?",
            "--vqgan-preset", "lwm", "--max-frames", "2", "--max-new-tokens", "2", "--chunk", "2", *TINY]  # fmt: skip
    assert main(argv) == 0
    assert "(514 vision)" in capsys.readouterr().err  # 2 frames x (256 codes + an end id)
