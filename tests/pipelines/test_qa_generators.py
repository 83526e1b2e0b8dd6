"""Reply parsing and validation, the chat generator's requests, and the extractive generator."""

from __future__ import annotations

import json
import re

import pytest
from lwmkit.pipelines.qa.chunks import chunk_text
from lwmkit.pipelines.qa.client import ClientOptions
from lwmkit.pipelines.qa.extractive import FORMS, ExtractiveGenerator, ExtractiveOptions
from lwmkit.pipelines.qa.generators import (
    ChatGeneratorOptions,
    ChatQAGenerator,
    InvalidReply,
    QAPair,
    Reply,
    answer_support,
    collapse_space,
    parse_pairs,
    validate_pairs,
)
from lwmkit.tokenizers import SentencePieceTokenizer

from .helpers import SHARED_DATA, book
from .qa_server import FakeChatServer

CHUNK = "Ada found the silver key near the harbour. Basil watched the quiet lighthouse."


@pytest.fixture(scope="module")
def tok(bpe_model) -> SentencePieceTokenizer:
    return SentencePieceTokenizer.from_file(bpe_model)


@pytest.mark.parametrize(
    "text",
    [
        '[{"question": "What did Ada find?", "answer": "the silver key"}]',
        '{"question": "What did Ada find?", "answer": "the silver key"}',
        '{"pairs": [{"Question": "What did Ada find?", "Answer": "the silver key"}]}',
        'Sure! Here it is:\n```json\n[{"question": "What did Ada find?", "answer": "the silver key"}]\n```\nEnjoy.',
        'Here you go: [{"question": "What did Ada find?", "answer": "the silver key"}] Hope it helps.',
        "Question: What did Ada find?\nAnswer: the silver key",
        "Q1: What did Ada find?\nA1: the silver key\n",
    ],
)
def test_accepted_reply_formats(text):
    raw = parse_pairs(text)
    assert validate_pairs(raw, CHUNK, support="exact", min_support=1.0, max_chars=100, limit=5) == [
        QAPair("What did Ada find?", "the silver key")
    ]


@pytest.mark.parametrize("text", ["Sorry, I cannot help with that.", "", "{broken json", '{"foo": 1}'])
def test_malformed_replies_raise(text):
    with pytest.raises(InvalidReply) as e:
        parse_pairs(text)
    assert e.value.reason == "malformed_reply"


def test_validation_reasons():
    def check(pairs, **kw):
        args = dict(support="words", min_support=0.5, max_chars=60, limit=3) | kw
        return validate_pairs(pairs, CHUNK, **args)

    for pairs, reason in [
        ([], "no_pairs"),
        ([(None, "x")], "missing_question"),
        ([("Who?", "  ")], "missing_answer"),
        ([("Who?", "y" * 61)], "too_long"),
        ([("What was found?", "a golden crown")], "unsupported_answer"),
    ]:
        with pytest.raises(InvalidReply) as e:
            check(pairs)
        assert e.value.reason == reason, pairs
    # Valid pairs survive invalid ones; whitespace collapses; duplicates and extras go.
    got = check(
        [
            ("What was found?", "a golden crown"),
            ("What did\n Ada  find?", "the silver\nkey"),
            ("What did Ada find?", "the key"),
            ("Who watched?", "Basil"),
            ("Where?", "near the harbour"),
        ],
        limit=2,
    )
    assert got == [QAPair("What did Ada find?", "the silver key"), QAPair("Who watched?", "Basil")]
    assert check([("Q?", "a golden crown")], support="none") == [QAPair("Q?", "a golden crown")]
    with pytest.raises(InvalidReply, match="does not occur"):
        check([("Q?", "silver harbour")], support="exact")
    assert answer_support("The SILVER key!", CHUNK) == 1.0
    assert answer_support("silver crown", CHUNK) == 0.5


def test_chat_generator_sends_the_prompt_and_parameters():
    with FakeChatServer(script=lambda p, n: "ok") as server:
        opts = ChatGeneratorOptions(
            client=ClientOptions(base_url=server.url, model="m1"),
            system_prompt="Be brief.",
            prompt='Give {n} pair(s) as JSON like {"question": ...}.\nPassage:\n{chunk}',
            temperature=0.2,
            seed=7,
            pairs_per_chunk=2,
        )
        gen = ChatQAGenerator(opts)
        chunk = chunk_text(CHUNK, 1, _Words(), 100)[0]
        captured = []
        real = gen.client.complete
        gen.client.complete = lambda messages, **params: captured.append((messages, params)) or real(messages, **params)
        reply = gen.reply(chunk, attempt=2)
    messages, params = captured[0]
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": 'Give 2 pair(s) as JSON like {"question": ...}.\nPassage:\n' + CHUNK},
    ]
    assert params == {"temperature": 0.2, "max_tokens": 512, "seed": 9}  # seed + attempt
    assert gen.parse(reply, chunk) == [
        QAPair("Which three words open passage " + _bucket(CHUNK) + "?", "Ada found the")
    ]
    assert reply.usage["total_tokens"] > 0
    with pytest.raises(InvalidReply, match="malformed_reply"):
        gen.parse(Reply("{not json"), chunk)


def test_chat_generator_identity_and_description_hold_no_secret(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    opts = ChatGeneratorOptions(client=ClientOptions(base_url="http://127.0.0.1:9/v1", model="m"))
    gen = ChatQAGenerator(opts)
    assert "sk-very-secret" not in json.dumps(gen.describe()) + json.dumps(gen.cache_identity())
    assert gen.describe()["kind"] == "openai_chat"
    other = ChatQAGenerator(
        ChatGeneratorOptions(
            client=ClientOptions(base_url="http://127.0.0.1:9/v1", model="m", timeout_s=5, concurrency=64)
        )
    )
    assert other.cache_identity() == gen.cache_identity()  # transport settings do not change replies
    hotter = ChatQAGenerator(ChatGeneratorOptions(client=opts.client, temperature=1.0))
    assert hotter.cache_identity() != gen.cache_identity()


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(prompt="no placeholder"), "prompt"),
        (dict(temperature=3.0), "temperature"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(pairs_per_chunk=0), "pairs_per_chunk"),
        (dict(support="fuzzy"), "support"),
        (dict(min_support=1.5), "min_support"),
    ],
)
def test_bad_chat_generator_options_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        ChatGeneratorOptions(client=ClientOptions(base_url="http://x/v1", model="m"), **kw)


# --- extractive ----------------------------------------------------------------------------------------


class _Words:
    def encode_batch(self, texts):
        return [list(range(len(t.split()))) for t in texts]


def _bucket(text: str) -> str:
    from .qa_server import bucket

    return str(bucket(text))


def _occurs(answer: str, chunk: str) -> bool:
    return collapse_space(answer).lower() in collapse_space(chunk).lower()


def test_extractive_is_deterministic_and_labelled(tok):
    chunks = chunk_text(book(8, 20), 8, tok, 120)
    gen = ExtractiveGenerator(ExtractiveOptions(seed=3, pairs_per_chunk=2))
    first = [gen.parse(gen.reply(c, 0), c) for c in chunks]
    again = [ExtractiveGenerator(ExtractiveOptions(seed=3, pairs_per_chunk=2)).pairs(c, 0) for c in chunks]
    assert first == again
    assert all(len(p) == 2 for p in first)
    other = [ExtractiveGenerator(ExtractiveOptions(seed=4, pairs_per_chunk=2)).pairs(c, 0) for c in chunks]
    assert other != first
    assert [gen.pairs(c, 1) for c in chunks] != first  # a retry draws anew
    d = gen.describe()
    assert d["kind"] == "extractive" and "no language model" in d["label"] and d["seed"] == 3
    assert gen.cache_identity() is None and gen.concurrency == 1


def test_extractive_forms_build_answerable_questions():
    text = (
        'Ada found the silver key near the harbour. "We should leave before the storm turns cold," said Basil. '
        "Nobody at the station knew why the clock was so quiet."
    )
    chunk = chunk_text(text, 1, _Words(), 100)[0]
    cands = ExtractiveGenerator().candidates(chunk)
    assert set(cands) == set(FORMS)
    assert ("According to the passage, what did Basil say?", "We should leave before the storm turns cold") in cands[
        "quote"
    ]
    assert (
        'In the passage, which sentence comes right after "Ada found the silver key near the harbour."?',
        '"We should leave before the storm turns cold," said Basil.',
    ) in cands["next_sentence"]
    assert (
        'Fill in the blank with the word from the passage: "Ada found the ____ key near the harbour."',
        "silver",
    ) in cands["cloze"]
    for form, pairs in cands.items():
        for q, a in pairs:
            assert _occurs(a, text), (form, a)
            if form == "cloze":
                assert q.count("____") == 1 and re.sub("____", a, q.split(": ", 1)[1].strip('"')) in text
    only = ExtractiveGenerator(ExtractiveOptions(forms=("quote",)))
    assert only.pairs(chunk) == [
        QAPair("According to the passage, what did Basil say?", "We should leave before the storm turns cold")
    ]


def test_extractive_without_material_fails_validation():
    chunk = chunk_text("Tiny.", 1, _Words(), 100)[0]
    gen = ExtractiveGenerator()
    with pytest.raises(InvalidReply) as e:
        gen.parse(gen.reply(chunk, 0), chunk)
    assert e.value.reason == "no_pairs"


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(forms=()), "forms"),
        (dict(forms=("riddle",)), "forms"),
        (dict(forms=("cloze", "cloze")), "forms"),
        (dict(pairs_per_chunk=0), "pairs_per_chunk"),
        (dict(max_sentence_chars=5), "max_sentence_chars"),
    ],
)
def test_bad_extractive_options_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        ExtractiveOptions(**kw)


@pytest.mark.realdata
def test_extractive_questions_on_real_text_are_answerable(tok):
    names = ("kjv_bible.txt", "jargon_file.txt", "devils_dictionary.txt")
    folder = SHARED_DATA / "text"
    if not all((folder / n).is_file() for n in names):
        pytest.skip(f"real sample text not found under {folder} (the shared data folder beside the checkout)")
    gen = ExtractiveGenerator(ExtractiveOptions(pairs_per_chunk=2))
    forms_seen = set()
    for name in names:
        text = (folder / name).read_text(encoding="utf-8")
        start = len(text) // 3  # past any front matter
        chunks = chunk_text(text[start : start + 80_000], 1, tok, 300)
        made = 0
        for c in chunks:
            try:
                pairs = gen.parse(gen.reply(c, 0), c)
            except InvalidReply:
                continue
            made += 1
            for p in pairs:
                assert _occurs(p.answer, c.text), (name, c.chunk_id, p)
                assert p.question and p.answer and p.question != p.answer
                forms_seen.add(p.question.split(" ", 3)[:3][0])
        assert made >= 0.95 * len(chunks), (name, made, len(chunks))
    assert {"Fill", "In"} <= forms_seen  # cloze and next_sentence both occur
