"""Video needles: LWM's vision-chat layout, needle frames at their depth, rebuilds and video haystacks."""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
import pytest
from lwmkit.eval.cases import CaseError
from lwmkit.eval.video_needle import (
    VideoHaystack,
    VideoHaystackSpec,
    VideoNeedle,
    build_video_case,
    needle_from_image,
    video_prompt,
)
from lwmkit.tokenizers.vision import EOV_ID, TOKENS_PER_FRAME, frame_codes, vision_field

OPTIONS = ("a red square", "a blue circle", "a green triangle", "a yellow star")


def _needle(codes_value: int = 7, frames: int = 2) -> VideoNeedle:
    codes = np.full((frames, 16, 16), codes_value, np.int32)
    return VideoNeedle(codes, "What shape was hidden in the video?", OPTIONS, "a red square")


def test_layout_is_lwms_vision_chat_with_the_needle_at_its_depth(tok):
    hay = VideoHaystack.load(VideoHaystackSpec("generated", seed=1, frames=50, codes=200))
    needle = _needle(codes_value=250)  # outside the generated range, so its frames are recognisable
    case = build_video_case(hay, tok, needle, frames=20, depth=40.0, seed=3)
    p = video_prompt(case)
    tokens, mask = np.asarray(p.tokens), np.asarray(p.vision_mask)
    # [BOS] ids(prefix with question) <vision> frames </vision> ids(" ASSISTANT:")
    prefix = tok.encode_batch([f"You are a helpful assistant. USER: {case['question']}\n"])[0]
    frames = frame_codes(tokens, mask)
    field_tokens, field_mask = vision_field(np.stack(frames), tok)
    suffix = tok.encode_batch([" ASSISTANT:"])[0]
    assert tokens.tolist() == [tok.bos_id, *prefix, *field_tokens.tolist(), *suffix]
    assert mask.tolist() == [False] * (1 + len(prefix)) + field_mask.tolist() + [False] * len(suffix)
    assert len(frames) == 22 and case["prompt_tokens"] == len(tokens)
    assert tokens[mask][-1] == EOV_ID
    # The needle's two frames are frames 8 and 9 (40% of 20), the rest are the haystack's, in order.
    assert [int(f.max()) == 250 for f in frames] == [i in (8, 9) for i in range(22)]
    start = case["recipe"]["start"]
    rest = [f for i, f in enumerate(frames) if i not in (8, 9)]
    assert all(np.array_equal(f, hay.frames[(start + i) % 50]) for i, f in enumerate(rest))
    first_code = case["needles"][0]["token_offset"]
    assert tokens[first_code] == 250 and tokens[first_code - 1] == 8192 and mask[first_code]
    assert case["true_depth"] == 40.0 and (len(tokens) - 1 - len(prefix) - len(suffix)) > 22 * TOKENS_PER_FRAME


def test_multiple_choice_options_shuffle_by_seed_and_the_letter_is_right(tok):
    hay = VideoHaystack.load(VideoHaystackSpec("generated", frames=16))
    letters = set()
    for seed in range(8):
        case = build_video_case(hay, tok, _needle(), frames=8, depth=50.0, seed=seed)
        (letter,) = case["expected"]
        assert f"({letter}) a red square" in case["question"] and case["scoring"] == "choice"
        assert case["question"].endswith("Answer with the option's letter.")
        letters.add(letter)
        assert build_video_case(hay, tok, _needle(), frames=8, depth=50.0, seed=seed) == case
    assert len(letters) > 1
    short = VideoNeedle(np.zeros((16, 16), np.int32), "What colour was the square?", (), "red")
    case = build_video_case(hay, tok, short, frames=8, depth=0.0)
    assert case["expected"] == ["red"] and case["scoring"] == "substring"


def test_rebuild_checks_the_haystack_and_the_digest(tok):
    hay = VideoHaystack.load(VideoHaystackSpec("generated", seed=5, frames=30))
    case = build_video_case(hay, tok, _needle(), frames=12, depth=100.0)
    assert video_prompt(case).tokens.shape == (case["prompt_tokens"],)
    tampered = {**case, "recipe": {**case["recipe"], "insert": 3}}
    with pytest.raises(CaseError, match="differs from the recorded one"):
        video_prompt(tampered)
    other = {**case, "recipe": {**case["recipe"], "haystack_fingerprint": "0" * 64}}
    with pytest.raises(CaseError, match="changed since it was built"):
        video_prompt(other)


def test_needle_validation():
    with pytest.raises(ValueError, match="not one of the options"):
        VideoNeedle(np.zeros((16, 16), np.int32), "Q?", ("a", "b"), "c")
    with pytest.raises(ValueError, match=r"must be \[F>0, 16, 16\]"):
        VideoNeedle(np.zeros((8, 8), np.int32), "Q?", (), "a")
    with pytest.raises(ValueError, match="VideoHaystackSpec.codes=9000"):
        VideoHaystackSpec("generated", codes=9000)


def test_needle_image_is_encoded_with_the_vqgan(tok):
    from lwmkit.tokenizers.vqgan import ImageTokenizer
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (320, 256), "white")
    ImageDraw.Draw(img).rectangle((100, 60, 220, 190), fill="red")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    vq = ImageTokenizer.random("tiny", seed=0, batch_size=1)
    needle = needle_from_image(buf.getvalue(), vq, question="Q?", options=OPTIONS, answer=OPTIONS[0], frames=3)
    from lwmkit.tokenizers.vision import load_image

    codes = vq.encode(load_image(buf.getvalue())[None])
    assert needle.codes.shape == (3, 16, 16) and all(np.array_equal(c, codes[0]) for c in needle.codes)


def _write_video_dataset(directory: str, tok, clips: list[np.ndarray], **recorded) -> None:
    from lwmkit.packing.records import FORMAT_VERSION, encode_document
    from lwmkit.packing.shards import shard_name, write_json_atomic, write_shard

    recs = []
    for i, clip in enumerate(clips):
        field, fmask = vision_field(clip, tok)
        text = np.asarray(tok.encode_batch(["A caption."])[0], np.int32)
        tokens = np.concatenate([[tok.bos_id], field, text, [tok.eos_id]])
        mask = np.concatenate([[False], fmask, np.zeros(len(text) + 1, bool)])
        recs.append(encode_document(doc_id=i, source_file=f"clip{i}.mp4", source_line=1, tokens=tokens, vision_mask=mask))
    info = write_shard(os.path.join(directory, shard_name("documents", 0, 1)), recs)
    write_json_atomic(
        os.path.join(directory, "manifest.json"),
        {"format_version": FORMAT_VERSION, "dataset_name": "documents", "kind": "document",
         "records": info.records, "shards": [info.to_json()], **recorded},
    )  # fmt: skip


def test_tokenized_video_dataset_is_a_haystack(tmp_path, tok):
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 8192, size=(n, 16, 16), dtype=np.int32) for n in (3, 5)]
    _write_video_dataset(str(tmp_path / "video"), tok, clips)
    hay = VideoHaystack.load(VideoHaystackSpec(str(tmp_path / "video")))
    assert np.array_equal(hay.frames, np.concatenate(clips))
    case = build_video_case(hay, tok, _needle(), frames=6, depth=50.0)
    assert len(frame_codes(video_prompt(case).tokens, video_prompt(case).vision_mask)) == 8


def _clips(*sizes: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 8192, size=(n, 16, 16), dtype=np.int32) for n in sizes]


def test_cases_never_wrap_and_name_the_videos_they_span(tmp_path, tok):
    clips = _clips(3, 5, 4)
    _write_video_dataset(str(tmp_path / "video"), tok, clips)
    hay = VideoHaystack.load(VideoHaystackSpec(str(tmp_path / "video")))
    assert hay.videos == [("clip0.mp4:1", 0, 3), ("clip1.mp4:1", 3, 5), ("clip2.mp4:1", 8, 4)]
    starts = set()
    for r in range(40):
        case = build_video_case(hay, tok, _needle(frames=1), frames=7, depth=50.0, round_=r)
        start = case["recipe"]["start"]
        starts.add(start)
        assert start + 7 <= 12 and case["repeat_frames"] == 0 and case["repeat_share"] == 0.0
        # The spans cover the frames in order, each inside its own video.
        spans = case["videos"]
        assert sum(s["frames"] for s in spans) == 7
        flat = np.concatenate([clips[int(s["video"][4])][s["first_frame"] : s["first_frame"] + s["frames"]]
                               for s in spans])  # fmt: skip
        assert np.array_equal(flat, hay.frames[start : start + 7])
        assert [s["video"] for s in spans] == sorted(s["video"] for s in spans)
    assert len(starts) > 1
    # A dataset haystack's recipe names the directory alone, no generated-haystack fields.
    assert case["recipe"]["haystack"] == {"source": str(tmp_path / "video")}
    assert np.array_equal(video_prompt(case).tokens, video_prompt(case).tokens)


def test_a_too_small_video_haystack_fails_or_records_its_repeat_share(tmp_path, tok):
    _write_video_dataset(str(tmp_path / "video"), tok, _clips(3, 5))
    hay = VideoHaystack.load(VideoHaystackSpec(str(tmp_path / "video")))
    with pytest.raises(CaseError, match=r"holds 8 frames; a case of 10 frames would repeat 2 of them.*--allow-repeat"):
        build_video_case(hay, tok, _needle(), frames=10, depth=50.0)
    case = build_video_case(hay, tok, _needle(), frames=10, depth=50.0, allow_repeat=True)
    assert case["repeat_frames"] == 2 and case["repeat_share"] == 0.2
    assert sum(s["frames"] for s in case["videos"]) == 10
    assert len(frame_codes(video_prompt(case).tokens, video_prompt(case).vision_mask)) == 12


def test_a_needle_from_another_vqgan_or_tokenizer_is_refused(tmp_path, tok):
    from lwmkit.eval.encoders import EncoderMismatch

    def fp(seed):
        return {"sha256": str(seed) * 64, "preset": "tiny", "source": "random_init", "random_init": True, "seed": seed}

    _write_video_dataset(str(tmp_path / "video"), tok, _clips(3, 5), vqgan=fp(7), tokenizer=tok.fingerprint())
    hay = VideoHaystack.load(VideoHaystackSpec(str(tmp_path / "video")))
    needle = dataclasses.replace(_needle(), vqgan=fp(0))
    with pytest.raises(EncoderMismatch, match=r"video: its frames were encoded with VQGAN 7{12}… \(random_init, preset "
                       r"tiny, seed 7\); the needle 'video_needle' was encoded with 0{12}… \(random_init, .*seed 0\)"):
        build_video_case(hay, tok, needle, frames=4, depth=50.0)
    case = build_video_case(hay, tok, dataclasses.replace(needle, vqgan=fp(7)), frames=4, depth=50.0)
    assert case["needle_vqgan"]["seed"] == 7
    _write_video_dataset(str(tmp_path / "other"), tok, _clips(3), tokenizer={"sha256": "ab" * 32})
    with pytest.raises(EncoderMismatch, match=r"other: made with tokenizer abababababab…, given "):
        build_video_case(VideoHaystack.load(VideoHaystackSpec(str(tmp_path / "other"))), tok, needle, 2, 50.0)
