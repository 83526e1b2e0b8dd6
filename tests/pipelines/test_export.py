"""`lwm-pack export --format lwm-jsonl`: lines that LWM's own loader turns back into the same records."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
from lwmkit.packing.records import encode_document
from lwmkit.packing.shards import write_json_atomic
from lwmkit.pipelines.cli import main
from lwmkit.pipelines.tools.export import (
    ExportError,
    ExportOptions,
    export_lwm_jsonl,
    lwm_loader_encode,
    run_export,
)
from lwmkit.tokenizers.text import SentencePieceTokenizer
from lwmkit.tokenizers.vision import vision_field

from ..packing.helpers import write_dataset, write_packed_dir


class _LWMTokenizer:
    """The three things lwm/data.py uses of its Hugging Face LLaMA tokenizer.

    `encode` follows Hugging Face's documented LlamaTokenizer behaviour: the special tokens' texts
    (`<unk>`, `<s>`, `</s>`) found in raw text are split out as their special ids before SentencePiece
    sees the rest (split_special_tokens=False, the default); BOS is prepended when `add_bos_token`
    (transformers' default True; the export's instructions say False) and EOS appended when
    `add_eos_token`.
    """

    SPECIALS = ("<unk>", "<s>", "</s>")

    def __init__(self, tok: SentencePieceTokenizer, add_bos_token: bool = False, add_eos_token: bool = False):
        self._tok = tok
        self.bos_token_id = tok.bos_id
        self.eos_token_id = tok.eos_id
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
        self._ids = {"<unk>": tok.unk_id, "<s>": tok.bos_id, "</s>": tok.eos_id}

    def _split(self, text: str) -> list[str]:
        """Cuts `text` around every special token's text, scanning left to right."""
        out, start, i = [], 0, 0
        while i < len(text):
            hit = next((s for s in sorted(self.SPECIALS, key=len, reverse=True) if text.startswith(s, i)), None)
            if hit is None:
                i += 1
                continue
            out += [text[start:i], hit] if i > start else [hit]
            i = start = i + len(hit)
        return out + ([text[start:]] if start < len(text) else [])

    def encode(self, text: str) -> list[int]:
        ids = [self.bos_token_id] if self.add_bos_token else []
        for chunk in self._split(text) or [""]:
            ids += [self._ids[chunk]] if chunk in self._ids else self._tok.encode(chunk)
        return ids + ([self.eos_token_id] if self.add_eos_token else [])


def lwm_vision_text_processor(example: dict, index: int, tokenizer, max_n_frames: int = -1):
    """lwm/data.py `VisionTextProcessor.__call__` with fields_from_example='fields' and default config:
    add_bos_token, add_eos_token, prepend_text '', subfield_separator ' ', eof 8192, eov 8193, 256
    tokens per frame. Returns (tokens, loss_mask, vision_mask)."""
    n_tokens_per_frame, eof_token, eov_token = 256, 8192, 8193
    rand_state = random.Random(index)
    vision_start, vision_end = tokenizer.encode("<vision>"), tokenizer.encode("</vision>")
    token_buffer, loss_mask_buffer, vision_mask = [tokenizer.bos_token_id], [0.0], [False]
    fields = example["fields"]
    if isinstance(fields, (tuple, list)):
        fields = rand_state.choice(fields)
    for field in fields.split(","):
        if field.startswith("[") and field.endswith("]"):
            field, mask = field[1:-1], 0.0
        else:
            mask = 1.0
        if field == "<|bos|>":
            token_buffer.append(tokenizer.bos_token_id)
            loss_mask_buffer.append(mask)
            vision_mask.append(False)
        elif field == "<|eos|>":
            token_buffer.append(tokenizer.eos_token_id)
            loss_mask_buffer.append(mask)
            vision_mask.append(False)
        elif "vision" in field:
            vision_tokens = example[field]
            n_frames = int(len(vision_tokens) / n_tokens_per_frame)
            if max_n_frames > 0 and n_frames > max_n_frames:
                idxs = np.linspace(0, n_frames - 1, max_n_frames).astype(int)
                vision_tokens = [t for idx in idxs for t in vision_tokens[idx * 256 : (idx + 1) * 256]]
                n_frames = max_n_frames
            assert int(len(vision_tokens) / n_tokens_per_frame) == n_frames
            assert n_frames > 0
            tokens = list(vision_start)
            for j in range(n_frames):
                tokens.extend(vision_tokens[j * n_tokens_per_frame : (j + 1) * n_tokens_per_frame])
                tokens.append(eov_token if j == n_frames - 1 else eof_token)
            tokens.extend(vision_end)
            token_buffer.extend(tokens)
            loss_mask_buffer.extend([mask] * len(tokens))
            vision_mask.extend([False] * len(vision_start))
            vision_mask.extend([True] * (n_tokens_per_frame * n_frames + n_frames))
            vision_mask.extend([False] * len(vision_end))
        else:
            text = " ".join(example[subfield] for subfield in field.split("+"))
            tokens = tokenizer.encode(text)
            token_buffer.extend(tokens)
            loss_mask_buffer.extend([mask] * len(tokens))
            vision_mask.extend([False] * len(tokens))
    token_buffer.append(tokenizer.eos_token_id)
    loss_mask_buffer.append(1.0)
    vision_mask.append(False)
    return token_buffer, loss_mask_buffer, vision_mask


@pytest.fixture(scope="module")
def tok(tiny_tokenizer) -> SentencePieceTokenizer:
    return SentencePieceTokenizer.from_file(tiny_tokenizer)


def document(tok, parts, doc: int) -> dict:
    """A document record from (kind, payload, trained) parts between BOS (loss 0) and EOS (loss 1)."""
    tokens, vm, w = [np.array([tok.bos_id])], [np.array([False])], [np.array([0.0])]
    for kind, payload, trained in parts:
        if kind == "text":
            t, m = np.array(tok.encode(payload)), None
        else:
            t, m = vision_field(payload, tok)
        tokens.append(t)
        vm.append(np.zeros(len(t), bool) if m is None else m)
        w.append(np.full(len(t), 1.0 if trained else 0.0))
    tokens.append(np.array([tok.eos_id]))
    vm.append(np.array([False]))
    w.append(np.array([1.0]))
    return {
        "doc_id": 5000 + doc,
        "source_file": "pairs.jsonl",
        "source_line": doc + 1,
        "tokens": np.concatenate(tokens).astype(np.int32),
        "vision_mask": np.concatenate(vm),
        "loss_weights": np.concatenate(w).astype(np.float32),
    }


def codes(frames: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 8192, (frames, 16, 16))


def write_docs(directory, docs, tokenizer_path, tok, sha=None) -> str:
    os.makedirs(directory, exist_ok=True)
    manifest = write_dataset(str(directory), [encode_document(**d) for d in docs], kind="document", seq_len=None,
                             num_shards=2, documents=len(docs))
    manifest["tokenizer"] = {**tok.fingerprint(), "path": tokenizer_path}
    if sha:
        manifest["tokenizer"]["sha256"] = sha
    write_json_atomic(os.path.join(directory, "manifest.json"), manifest)
    return str(directory)


@pytest.fixture
def docs(tok):
    return [
        document(tok, [("vision", codes(1, 1), False), ("text", "A red ball on the grass.", True)], 0),  # understanding
        document(tok, [("text", "A red ball on the grass.", False), ("vision", codes(1, 2), True)], 1),  # generation
        document(tok, [("text", "What happens in the clip?", False), ("vision", codes(3, 3), False),
                       ("text", "The man opens the door.", True)], 2),  # video question answering
        document(tok, [("text", "Only text here, trained on.", True)], 3),
        document(tok, [("vision", codes(1, 4), True), ("vision", codes(2, 5), True)], 4),  # two fields
    ]


def test_round_trip_through_lwms_loader(tmp_path, docs, tok, tiny_tokenizer):
    d = write_docs(tmp_path / "documents", docs, tiny_tokenizer, tok)
    out = tmp_path / "lwm.jsonl"
    summary = export_lwm_jsonl(d, str(out))
    assert summary["written"] == summary["records"] == len(docs) and summary["skipped_by_reason"] == {}
    assert summary["text_parts_retokenized_differently"] == 0 and summary["loss_weights_binarized"] == 0
    assert summary["loss_tokens_differing"] == 0 and summary["records_with_loss_differences"] == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["fields"] for x in lines] == [
        "[vision],caption",
        "[caption],vision",
        "[caption],[vision],caption_2",
        "caption",
        "vision,vision_2",
    ]
    assert lines[0]["caption"] == "A red ball on the grass." and lines[2]["caption_2"] == "The man opens the door."
    assert lines[1]["vision"] == codes(1, 2).reshape(-1).tolist()  # codes only: LWM adds <eof>/<eov>
    assert len(lines[2]["vision"]) == 3 * 256 and len(lines[4]["vision_2"]) == 2 * 256
    assert [x["lwmkit_doc_id"] for x in lines] == [d["doc_id"] for d in docs]
    for index, (line, doc) in enumerate(zip(lines, docs, strict=True)):
        tokens, loss_mask, vision_mask = lwm_vision_text_processor(line, index, _LWMTokenizer(tok))
        np.testing.assert_array_equal(tokens, doc["tokens"])
        np.testing.assert_array_equal(vision_mask, doc["vision_mask"])
        np.testing.assert_array_equal(loss_mask, (doc["loss_weights"] > 0).astype(float))
        vm = np.asarray(vision_mask)
        np.testing.assert_array_equal(np.asarray(tokens)[vm], doc["tokens"][doc["vision_mask"]])


def test_special_ids_inside_text_and_fractional_weights(tmp_path, tok, tiny_tokenizer):
    doc = document(tok, [("text", "Question one.", False), ("text", "Answer one.", True)], 0)
    # An EOS + BOS between two turns, and a balanced loss (0.5) on the answer.
    first = len(tok.encode("Question one.")) + 1
    tokens = np.insert(doc["tokens"], first, [tok.eos_id, tok.bos_id])
    weights = np.insert(doc["loss_weights"], first, [1.0, 0.0])
    weights[first + 2 : -1] = 0.5
    doc.update(tokens=tokens, vision_mask=np.zeros(len(tokens), bool), loss_weights=weights)
    d = write_docs(tmp_path / "documents", [doc], tiny_tokenizer, tok)
    summary = export_lwm_jsonl(d, str(tmp_path / "x.jsonl"))
    line = json.loads((tmp_path / "x.jsonl").read_text())
    assert line["fields"] == "[caption],<|eos|>,[<|bos|>],caption_2"
    assert summary["loss_weights_binarized"] == int((weights == 0.5).sum())
    got, loss, _ = lwm_vision_text_processor(line, 0, _LWMTokenizer(tok))
    np.testing.assert_array_equal(got, tokens)
    np.testing.assert_array_equal(loss, (weights > 0).astype(float))


def test_a_job_directory_exports_its_documents(tmp_path, docs, tok, tiny_tokenizer):
    job = tmp_path / "job"
    write_docs(job / "documents", docs[:2], tiny_tokenizer, tok)
    write_packed_dir(str(job / "packed-1024"), [300, 200], 1024)
    write_json_atomic(str(job / "manifest.json"), {"format_version": 1, "kind": "job",
                                                   "datasets": {"packed-1024": {}, "documents": {}}})
    summary = run_export("lwm-jsonl", str(job), str(tmp_path / "out" / "lwm.jsonl"))
    assert summary["written"] == 2
    with pytest.raises(ExportError, match="no document records"):
        export_lwm_jsonl(str(job / "packed-1024"), str(tmp_path / "y.jsonl"))
    with pytest.raises(ValueError, match="unknown export format 'webdataset'; valid: lwm-jsonl"):
        run_export("webdataset", str(job), str(tmp_path / "z"))


def test_image_text_job_layout_exports_with_counted_loss_differences(tmp_path, docs, tok, tiny_tokenizer):
    # A generation example trained on the vision-mask tokens only (tags and EOS weigh 0; lwmkit's own
    # image-text job weighs them 1, as LWM does). LWM's `[caption],vision` trains tags and EOS too;
    # those tokens are counted.
    gen = dict(docs[1], loss_weights=docs[1]["vision_mask"].astype(np.float32))
    d = write_docs(tmp_path / "documents", [docs[0], gen], tiny_tokenizer, tok)
    summary = export_lwm_jsonl(d, str(tmp_path / "x.jsonl"))
    tags = len(tok.encode("<vision>")) + len(tok.encode("</vision>"))
    assert summary["loss_tokens_differing"] == tags + 1 and summary["records_with_loss_differences"] == 1
    line = json.loads((tmp_path / "x.jsonl").read_text().splitlines()[1])
    assert line["fields"] == "[caption],vision"
    got, loss, vm = lwm_vision_text_processor(line, 1, _LWMTokenizer(tok))
    np.testing.assert_array_equal(got, gen["tokens"])
    np.testing.assert_array_equal(vm, gen["vision_mask"])
    np.testing.assert_array_equal(np.asarray(loss)[gen["vision_mask"]], 1.0)  # every vision token trained
    assert int((np.asarray(loss) != (gen["loss_weights"] > 0)).sum()) == tags + 1
    message = rf"record 1 \(doc 5001, pairs.jsonl:2\): loss_not_expressible: {tags + 1} tokens"
    with pytest.raises(ExportError, match=message):
        export_lwm_jsonl(d, str(tmp_path / "y.jsonl"), options=ExportOptions(exact_loss=True))


def _bad_docs(tok, docs) -> list[dict]:
    no_bos = dict(docs[0], tokens=docs[0]["tokens"][1:], vision_mask=docs[0]["vision_mask"][1:],
                  loss_weights=docs[0]["loss_weights"][1:])
    mixed = dict(docs[1], loss_weights=docs[1]["loss_weights"].copy())
    mixed["loss_weights"][np.flatnonzero(mixed["vision_mask"])[:100]] = 0.0  # some codes trained, some not
    untagged = dict(docs[0], vision_mask=docs[0]["vision_mask"].copy())
    untagged["vision_mask"][np.flatnonzero(untagged["vision_mask"])[0] - 1] = True  # tag token marked vision
    bad_eof = dict(docs[2], tokens=docs[2]["tokens"].copy())
    bad_eof["tokens"][np.flatnonzero(bad_eof["vision_mask"])[256]] = 8193  # first of 3 frames ends with <eov>
    return [docs[3], no_bos, mixed, untagged, bad_eof]


def test_unexportable_records_fail_strictly_or_are_counted(tmp_path, docs, tok, tiny_tokenizer):
    d = write_docs(tmp_path / "documents", _bad_docs(tok, docs), tiny_tokenizer, tok)
    out = tmp_path / "lwm.jsonl"
    out.write_text("old\n")
    with pytest.raises(ExportError, match=r"record 1 \(doc 5000, pairs.jsonl:1\): no_leading_bos"):
        export_lwm_jsonl(d, str(out))
    assert out.read_text() == "old\n"  # nothing half-written, no temporary file left behind
    assert sorted(os.listdir(tmp_path)) == ["documents", "lwm.jsonl"]
    summary = export_lwm_jsonl(d, str(out), options=ExportOptions(strict=False))
    assert summary["written"] == 1 and summary["skipped_by_reason"] == {
        "no_leading_bos": 1, "vision_frames": 1, "vision_loss_mixed": 1, "vision_tags": 1,
    }
    assert json.loads(out.read_text())["fields"] == "caption"


def test_tokenizer_must_be_the_datasets(tmp_path, docs, tok, tiny_tokenizer):
    d = write_docs(tmp_path / "a", docs, tiny_tokenizer, tok, sha="0" * 64)
    with pytest.raises(ExportError, match="SHA-256"):
        export_lwm_jsonl(d, str(tmp_path / "x.jsonl"))
    d = write_docs(tmp_path / "b", docs, str(tmp_path / "moved.model"), tok)
    with pytest.raises(ExportError, match="moved.model not found; pass --tokenizer"):
        export_lwm_jsonl(d, str(tmp_path / "x.jsonl"))
    assert export_lwm_jsonl(d, str(tmp_path / "x.jsonl"), tokenizer=tiny_tokenizer)["written"] == len(docs)


@pytest.mark.parametrize(
    "kw, message",
    [({"text_key": "vision_text"}, "text_key"), ({"vision_key": "codes"}, "vision_key"),
     ({"text_key": "fields"}, "text_key"), ({"text_key": "a,b"}, "text_key")],
)
def test_options_are_validated(kw, message):
    with pytest.raises(ValueError, match=f"ExportOptions.{message}="):
        ExportOptions(**kw)


def test_cli_export(tmp_path, docs, tok, tiny_tokenizer, capsys):
    d = write_docs(tmp_path / "documents", docs, tiny_tokenizer, tok)
    out = tmp_path / "lwm.jsonl"
    assert main(["export", "--format", "lwm-jsonl", d, "--output", str(out)]) == 0
    assert f"wrote {len(docs)} of {len(docs)} records" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == len(docs)
    bad = write_docs(tmp_path / "bad", _bad_docs(tok, docs), tiny_tokenizer, tok)
    assert main(["export", bad, "--output", str(tmp_path / "b.jsonl")]) == 1
    assert capsys.readouterr().err.startswith("lwm-pack export: error:")


_SPECIAL_TEXTS = ["Close the tag with </s> and go on.", "A <s> in the middle.", "An <unk> word.", "x</s>"]


def test_text_that_parses_to_special_ids_is_never_exported(tmp_path, docs, tok, tiny_tokenizer):
    # lwmkit tokenizes "</s>" in a document as ordinary pieces; LWM's Hugging Face tokenizer would
    # read the exported text as EOS (id 2) in mid-document. Such records are refused, never written.
    specials = [document(tok, [("text", text, True)], 10 + k) for k, text in enumerate(_SPECIAL_TEXTS)]
    d = write_docs(tmp_path / "documents", [docs[0], *specials, docs[3]], tiny_tokenizer, tok)
    out = tmp_path / "lwm.jsonl"
    with pytest.raises(ExportError, match=r"record 1 \(doc 5010, pairs.jsonl:11\): special_token_text: "
                                          r"text part 1 holds '</s>', which LWM's tokenizer reads as id 2 "
                                          r"\(--skip-unexportable"):
        export_lwm_jsonl(d, str(out))
    summary = run_export("lwm-jsonl", d, str(out), strict=False)
    assert summary["written"] == 2 and summary["skipped_by_reason"] == {"special_token_text": len(_SPECIAL_TEXTS)}
    assert [(f["doc_id"], f["reason"]) for f in summary["failures"]] == [
        (5010 + k, "special_token_text") for k in range(len(_SPECIAL_TEXTS))
    ]
    assert "'<unk>', which LWM's tokenizer reads as id 0" in summary["failures"][2]["detail"]
    lwm = _LWMTokenizer(tok)
    for index, line in enumerate(json.loads(x) for x in out.read_text().splitlines()):
        tokens, _, _ = lwm_vision_text_processor(line, index, lwm)
        assert tokens.count(tok.eos_id) == 1 and tokens[-1] == tok.eos_id  # EOS only at the end
        assert tokens.count(tok.bos_id) == 1 and tokens[0] == tok.bos_id


@pytest.mark.parametrize("text", [*_SPECIAL_TEXTS, "plain text", "", "<s</s>>", "<<unk>>", "</s></s>"])
def test_lwm_loader_encode_follows_hugging_face_parsing(tok, text):
    assert lwm_loader_encode(tok, text) == _LWMTokenizer(tok).encode(text)


def test_transformers_default_bos_would_add_stray_ids(tmp_path, docs, tok, tiny_tokenizer):
    # Why the help and README say add_bos_token=False: with transformers' default every text field
    # (and each "<vision>"/"</vision>" tag) starts with a BOS that the record does not have.
    d = write_docs(tmp_path / "documents", docs[:1], tiny_tokenizer, tok)
    export_lwm_jsonl(d, str(tmp_path / "x.jsonl"))
    line = json.loads((tmp_path / "x.jsonl").read_text())
    right, _, _ = lwm_vision_text_processor(line, 0, _LWMTokenizer(tok))
    wrong, _, _ = lwm_vision_text_processor(line, 0, _LWMTokenizer(tok, add_bos_token=True))
    np.testing.assert_array_equal(right, docs[0]["tokens"])
    assert wrong.count(tok.bos_id) == 4  # its own, one per tag, one for the caption


def test_export_help_states_the_tokenizer_settings(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for phrase in ("add_bos_token=False", "add_eos_token=False", "split_special_tokens=True",
                   "special_token_text", "--skip-unexportable"):
        assert phrase in help_text


def test_cli_export_shows_a_bar_on_a_terminal_only(tmp_path, docs, tok, tiny_tokenizer, capsys, monkeypatch):
    d = write_docs(tmp_path / "documents", docs, tiny_tokenizer, tok)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich takes stderr for a terminal
    assert main(["export", d, "--output", str(tmp_path / "a.jsonl")]) == 0
    err = capsys.readouterr().err
    assert "exporting records" in err and f"{len(docs)}/{len(docs)}" in err and "\x1b[" in err
    assert main(["export", d, "--output", str(tmp_path / "b.jsonl"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("TTY_COMPATIBLE", "0")  # not a terminal
    assert main(["export", d, "--output", str(tmp_path / "c.jsonl")]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("final_eos_loss, differing", [(True, 0), (False, 1)])
def test_chat_examples_round_trip_with_lwms_loss_on_the_final_eos(tmp_path, tok, tiny_tokenizer, final_eos_loss,
                                                                  differing):
    from lwmkit.pipelines.videos.examples import VideoExampleBuilder, VideoTemplates

    builder = VideoExampleBuilder(tok, VideoTemplates(final_eos_loss=final_eos_loss))
    ex = builder.build("chat", codes(2, 7), turns=[["What moves?", "A red bus."], ["Where?", "On a bridge."]])
    doc = {"doc_id": 9, "source_file": "chat.jsonl", "source_line": 1, "tokens": ex.tokens,
           "vision_mask": ex.vision_mask, "loss_weights": ex.loss_weights, "example_kind": "chat"}
    d = write_docs(tmp_path / "documents", [doc], tiny_tokenizer, tok)
    summary = export_lwm_jsonl(d, str(tmp_path / "x.jsonl"))
    assert summary["written"] == 1 and summary["loss_tokens_differing"] == differing
    line = json.loads((tmp_path / "x.jsonl").read_text())
    got, loss, _ = lwm_vision_text_processor(line, 0, _LWMTokenizer(tok))
    np.testing.assert_array_equal(got, ex.tokens)
    assert int((np.asarray(loss) != (ex.loss_weights > 0)).sum()) == differing  # LWM always trains the EOS
