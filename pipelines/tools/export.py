"""`lwm-pack export`: lwmkit document records -> LWM's own `json_vision` training lines.

LWM's trainer (lwm/data.py `JsonVisionDataset` + `VisionTextProcessor`, run with
`vision_text_processor.fields_from_example='fields'`) reads one JSON object per line: VQGAN codes as
flat integer lists under keys containing "vision" (LWM itself adds "<vision>", the <eof>/<eov> after
each frame and "</vision>"), text under other keys, and a `fields` spec that orders them: `[x]` = loss
0, `x` = loss 1, `<|bos|>`/`<|eos|>` = special ids; BOS (loss 0) is prepended and EOS (loss 1)
appended. Each document record is split into those parts and the spec is written so that LWM
rebuilds the record's own tokens and vision mask exactly, and its loss layout (weight > 0 becomes 1)
as nearly as LWM's spec can say it: a vision field takes the loss of its codes, so "<vision>" and
"</vision>" tag tokens weighted otherwise differ (lwmkit's image-text and video jobs weight the tags
as LWM does: 1 in a generation example, 0 where the field is not trained), and so does an EOS of
weight 0 (LWM always trains EOS; lwmkit's jobs train it too, chat examples included, unless made
with `--no-final-eos-loss`). Such tokens are counted in the summary; with `exact_loss=True` a
record with any of them is refused instead.

Example, an understanding record (image, then a caption trained on):
    before: tokens       <s> ids("<vision>") c0..c255 8193 ids("</vision>") ids("A red ball.") </s>
            loss_weights  0  0 ...                                      0   1 ...             1
    after:  {"vision": [c0, ..., c255], "caption": "A red ball.", "fields": "[vision],caption",
             "lwmkit_doc_id": 123, "lwmkit_source": "pairs.jsonl:4"}

Text parts are decoded with the dataset's tokenizer and re-tokenized by LWM; the summary counts the
parts whose re-tokenization differs from the record's ids (the text is the same, the ids are not).

The tokenizer LWM's loader must use (README, `lwm-pack export --help`): LWM's train.py loads it with
`AutoTokenizer.from_pretrained(...)`, a Hugging Face LlamaTokenizer, and `VisionTextProcessor`
calls `tokenizer.encode(text)` once per text field. It must be loaded with `add_bos_token=False`
and `add_eos_token=False` (transformers' default `add_bos_token=True` puts a stray BOS before every
text field; LWM adds BOS and EOS itself). By default Hugging Face splits the text of its special
tokens (`<s>`, `</s>`, `<unk>`) out of raw text as special ids before SentencePiece sees it, so a
document that merely contains the characters "</s>" would train an EOS in mid-document. There is
no escape that re-tokenizes to the record's ids, so such a text part is never written: the record
is refused with reason `special_token_text` (skipped and counted, or an error in strict mode).
Every line written therefore gives the same ids with special-token parsing on (the default) or off
(`split_special_tokens=True`). `lwm_loader_encode` is those rules, and the round-trip count uses it.

    before: tokens   <s> ids("Use </s> to end.") </s>     (the text holds the characters "</s>")
    after:  no line; summary skipped_by_reason {"special_token_text": 1}, failures [{..., "reason":
            "special_token_text", "detail": "text part 1 holds '</s>', which LWM's tokenizer reads as id 2"}]
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from lwmkit.packing.manifest import load_manifest
from lwmkit.packing.source import ShardDataSource
from lwmkit.pipelines.tools.progress_bar import progress_bar
from lwmkit.tokenizers.text import SentencePieceTokenizer
from lwmkit.tokenizers.vision import VisionFieldError, run_frames, vision_runs, vision_tags

FORMATS = ("lwm-jsonl",)
_SKIP_HINT = "--skip-unexportable skips and counts such records"
_RESERVED_KEYS = ("fields", "lwmkit_doc_id", "lwmkit_source")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class ExportError(ValueError):
    """A dataset or record cannot be exported; `.reason` says why (snake_case)."""

    def __init__(self, message: str, reason: str = "export"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ExportOptions:
    """How records become LWM lines.

    Attributes:
      text_key: name of the first text part; later ones get `_2`, `_3`, ... (no "vision" in it).
      vision_key: name of the first vision part; later ones get `_2`, ... (must contain "vision").
      strict: an unexportable record stops the export (True) or is skipped and counted (False).
      exact_loss: refuse (reason `loss_not_expressible`) records whose loss LWM's spec cannot
        reproduce token for token (see the module docstring), instead of counting the differences.
    """

    text_key: str = "caption"
    vision_key: str = "vision"
    strict: bool = True
    exact_loss: bool = False

    def __post_init__(self):
        for name in ("text_key", "vision_key"):
            value = getattr(self, name)
            if not _KEY.match(value) or value in _RESERVED_KEYS:
                raise ValueError(
                    f"ExportOptions.{name}={value!r}; allowed: an identifier other than {', '.join(_RESERVED_KEYS)}"
                )
        if "vision" in self.text_key:
            raise ValueError(
                f"ExportOptions.text_key={self.text_key!r}; LWM reads any key containing 'vision' as codes"
            )
        if "vision" not in self.vision_key:
            raise ValueError(f"ExportOptions.vision_key={self.vision_key!r}; LWM needs 'vision' in the key")


def documents_dir(directory: str) -> str:
    """The document dataset of a job directory (or `directory` itself if it is one).

    Raises:
      ExportError: if there is none (e.g. a packed dataset: export reads whole documents).
    """
    manifest = load_manifest(directory)
    kind = manifest["kind"]
    if kind == "document":
        return directory
    if kind in ("job", "stages"):
        for name in manifest.get("datasets", {}):
            path = os.path.join(directory, name)
            if os.path.exists(os.path.join(path, "manifest.json")) and load_manifest(path)["kind"] == "document":
                return path
    raise ExportError(f"{directory}: no document records (kind {kind!r}); export reads a job's documents/ dataset")


def dataset_tokenizer(manifest: dict[str, Any], path: str | None, directory: str) -> SentencePieceTokenizer:
    """The tokenizer the dataset was made with: `path` if given, else the one the manifest records.

    Raises:
      ExportError: if none is found, or its SHA-256 differs from the manifest's.
    """
    recorded = manifest.get("tokenizer") or {}
    candidate = path or recorded.get("path")
    if not candidate:
        raise ExportError(f"{directory}: the manifest records no tokenizer path; pass --tokenizer", "tokenizer")
    if not os.path.exists(candidate):
        raise ExportError(f"{directory}: tokenizer {candidate} not found; pass --tokenizer", "tokenizer")
    tok = SentencePieceTokenizer.from_file(candidate)
    sha = tok.fingerprint()["sha256"]
    if recorded.get("sha256") and recorded["sha256"] != sha:
        raise ExportError(
            f"{directory}: tokenizer {candidate} has SHA-256 {sha[:12]}…, the dataset was made with "
            f"{recorded['sha256'][:12]}…; its text would decode wrongly",
            "tokenizer",
        )
    return tok


def special_token_texts(tok: SentencePieceTokenizer) -> dict[str, int]:
    """The texts a Hugging Face LlamaTokenizer built from `tok` splits out of raw text as special ids.

    Its special tokens are the model's pieces for <unk>, BOS and EOS (and pad, if the model has one):
    for LLaMA-2 {"<unk>": 0, "<s>": 1, "</s>": 2}.
    """
    ids = [tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id]
    return {tok.id_to_piece(i): i for i in ids if i >= 0}


def lwm_loader_encode(tok: SentencePieceTokenizer, text: str) -> list[int]:
    """What LWM's loader (`tokenizer.encode(text)`, add_bos_token=False, add_eos_token=False) makes of `text`.

    Hugging Face's slow and fast LlamaTokenizer first cut the text at every occurrence of a special
    token's text (leftmost, longest first) and give each its special id; the pieces between go through
    SentencePiece; no BOS or EOS is added. Example: "a </s> b" -> encode("a ") + [2] + encode(" b").
    """
    specials = special_token_texts(tok)
    pattern = re.compile("|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)))
    ids: list[int] = []
    pos = 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            ids += tok.encode(text[pos : m.start()])
        ids.append(specials[m.group()])
        pos = m.end()
    if pos < len(text) or not text:
        ids += tok.encode(text[pos:])
    return ids


class _Converter:
    """Turns one document record into one LWM line (a dict), or raises ExportError."""

    def __init__(self, tok: SentencePieceTokenizer, options: ExportOptions):
        self.tok = tok
        self.options = options
        start, end = vision_tags(tok)
        self.start, self.end = start.tolist(), end.tolist()
        self.specials = {tok.bos_id: "<|bos|>", tok.eos_id: "<|eos|>"}
        self.special_texts = {i: t for t, i in special_token_texts(tok).items()}
        self.retokenized = 0
        self.binarized = 0
        self.loss_differs = 0  # tokens whose LWM loss (0/1) is not the record's (weight > 0)
        self.records_differing = 0

    def _key(self, base: str, n: int) -> str:
        return base if n == 1 else f"{base}_{n}"

    def _text_parts(self, ids: np.ndarray, loss: np.ndarray) -> list[tuple[str | None, list[int], bool]]:
        """Splits text at special ids and loss changes: (special field or None, ids, loss)."""
        parts: list[tuple[str | None, list[int], bool]] = []
        for t, w in zip(ids.tolist(), loss.tolist(), strict=True):
            special = self.specials.get(t)
            if special is not None:
                parts.append((special, [t], w))
            elif parts and parts[-1][0] is None and parts[-1][2] == w:
                parts[-1][1].append(t)
            else:
                parts.append((None, [t], w))
        return parts

    def __call__(self, rec: dict[str, Any]) -> dict[str, Any]:
        tokens, vm = rec["tokens"], rec["vision_mask"]
        weights = rec["loss_weights"]
        loss = weights > 0
        n = tokens.shape[0]
        bos, eos = self.tok.bos_id, self.tok.eos_id
        if n < 2 or tokens[0] != bos or vm[0]:
            raise ExportError("does not start with BOS, which LWM always prepends", "no_leading_bos")
        if tokens[-1] != eos or vm[-1]:
            raise ExportError("does not end with EOS, which LWM always appends", "no_trailing_eos")
        differs = int(loss[0]) + int(not loss[-1])  # LWM: BOS loss 0, EOS loss 1
        line: dict[str, Any] = {}
        fields: list[str] = []
        counts = {"text": 0, "vision": 0, "retokenized": 0}
        cursor = 1

        def add_text(lo: int, hi: int) -> None:
            for special, ids, w in self._text_parts(tokens[lo:hi], loss[lo:hi]):
                if special is None:
                    counts["text"] += 1
                    key = self._key(self.options.text_key, counts["text"])
                    line[key] = self.tok.decode(ids)
                    lwm_ids = lwm_loader_encode(self.tok, line[key])
                    parsed = [t for t in lwm_ids if t in self.special_texts]
                    if parsed:  # no escape re-tokenizes to the record's ids (module docstring)
                        raise ExportError(
                            f"text part {counts['text']} holds {self.special_texts[parsed[0]]!r}, which LWM's "
                            f"tokenizer reads as id {parsed[0]}",
                            "special_token_text",
                        )
                    counts["retokenized"] += lwm_ids != ids
                else:
                    key = special
                fields.append(key if w else f"[{key}]")

        for s, e in vision_runs(vm):
            ts, te = s - len(self.start), e + len(self.end)
            if ts < cursor or te > n - 1 or tokens[ts:s].tolist() != self.start or tokens[e:te].tolist() != self.end:
                raise ExportError(
                    f"vision tokens [{s}, {e}) are not enclosed in the text tokens of <vision> ... </vision>",
                    "vision_tags",
                )
            trained = bool(loss[s])
            if (loss[s:e] != trained).any():
                raise ExportError(
                    f"vision tokens [{s}, {e}) mix trained and untrained tokens; LWM gives a field one loss",
                    "vision_loss_mixed",
                )
            differs += int(np.count_nonzero(loss[ts:s] != trained) + np.count_nonzero(loss[e:te] != trained))
            try:
                codes = run_frames(tokens, s, e)  # [F, 16, 16]
            except VisionFieldError as err:
                raise ExportError(str(err), "vision_frames") from err
            add_text(cursor, ts)
            counts["vision"] += 1
            key = self._key(self.options.vision_key, counts["vision"])
            line[key] = codes.reshape(-1).tolist()  # LWM adds <eof>/<eov> itself
            fields.append(key if trained else f"[{key}]")
            cursor = te
        add_text(cursor, n - 1)
        if differs and self.options.exact_loss:
            raise ExportError(
                f"{differs} tokens (tags, BOS or EOS) have a loss LWM's fields spec cannot express",
                "loss_not_expressible",
            )
        # Counted only for records that are written.
        self.loss_differs += differs
        self.records_differing += bool(differs)
        self.retokenized += counts["retokenized"]
        self.binarized += int(np.count_nonzero(loss & (weights != 1)))
        line["fields"] = ",".join(fields)
        line["lwmkit_doc_id"] = rec["doc_id"]
        line["lwmkit_source"] = f"{rec['source_file']}:{rec['source_line']}"
        return line


def export_lwm_jsonl(
    directory: str,
    output: str,
    tokenizer: str | None = None,
    options: ExportOptions = ExportOptions(),
    log: Callable[[str], None] = lambda message: None,
    progress: bool = False,
) -> dict[str, Any]:
    """Writes every document record of `directory` as one LWM `json_vision` line, atomically.

    Args:
      directory: a job directory or a document dataset directory.
      output: local path of the .jsonl file (written under a temporary name, then renamed).
      tokenizer: the SentencePiece model to decode text with (default: the manifest's).
      options: key names and strictness.
      log: receives progress lines.
      progress: show a bar of records written on stderr when it is a terminal (`progress_bar`).

    Returns:
      A summary: output, records, written, skipped_by_reason, failures (one dict per skipped record:
      stage "export", record, doc_id, source, reason, detail), text_parts_retokenized_differently
      (under `lwm_loader_encode`),
      loss_weights_binarized (weights > 0 other than 1), loss_tokens_differing and
      records_with_loss_differences (see the module docstring), tokenizer_sha256.

    Raises:
      ExportError: naming the record and reason (strict mode), or if the dataset or tokenizer is unusable.
    """
    if "://" in output:
        raise ExportError(f"--output {output}: export writes a local file")
    docs = documents_dir(directory)
    src = ShardDataSource(docs)
    tok = dataset_tokenizer(src.manifest, tokenizer, docs)
    convert = _Converter(tok, options)
    skipped: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    written = 0
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{output}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f, progress_bar("exporting records", len(src), progress) as advance:
            for i in range(len(src)):
                advance()
                rec = src[i]
                try:
                    line = convert(rec)
                except ExportError as e:
                    source = f"{rec['source_file']}:{rec['source_line']}"
                    where = f"{docs}: record {i} (doc {rec['doc_id']}, {source})"
                    if options.strict:
                        raise ExportError(f"{where}: {e.reason}: {e} ({_SKIP_HINT})", e.reason) from e
                    skipped[e.reason] = skipped.get(e.reason, 0) + 1
                    failures.append({"stage": "export", "record": i, "doc_id": int(rec["doc_id"]),
                                     "source": source, "reason": e.reason, "detail": str(e)})
                    continue
                f.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
                written += 1
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    log(f"wrote {written} of {len(src)} records to {output}")
    return {
        "output": output,
        "records": len(src),
        "written": written,
        "skipped_by_reason": dict(sorted(skipped.items())),
        "failures": failures,
        "text_parts_retokenized_differently": convert.retokenized,
        "loss_weights_binarized": convert.binarized,
        "loss_tokens_differing": convert.loss_differs,
        "records_with_loss_differences": convert.records_differing,
        "tokenizer_sha256": tok.fingerprint()["sha256"],
    }


def describe(summary: dict[str, Any]) -> str:
    """One line for the command line: what was written, skipped and not reproduced exactly."""
    skipped = ", ".join(f"{k} x{v}" for k, v in summary["skipped_by_reason"].items()) or "none skipped"
    notes = [f"wrote {summary['written']} of {summary['records']} records to {summary['output']} ({skipped})"]
    if summary.get("failures"):
        first = summary["failures"][0]
        notes.append(f"first skipped: record {first['record']} ({first['source']}): {first['reason']}: {first['detail']}")
    if summary["loss_tokens_differing"]:
        notes.append(
            f"{summary['loss_tokens_differing']} tokens in {summary['records_with_loss_differences']} records get "
            "LWM's field loss instead of theirs (tags, BOS/EOS)"
        )
    if summary["loss_weights_binarized"]:
        notes.append(f"{summary['loss_weights_binarized']} fractional loss weights became 1")
    if summary["text_parts_retokenized_differently"]:
        notes.append(f"{summary['text_parts_retokenized_differently']} text parts re-tokenize to other ids")
    return "; ".join(notes)


def run_export(
    format: str, directory: str, output: str, tokenizer: str | None = None, strict: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Exports `directory` in the named format (see `FORMATS`); `strict=False` skips and counts bad records;
    `progress` shows a bar on a terminal.

    Raises:
      ValueError: for an unknown format, listing the valid ones.
    """
    if format == "lwm-jsonl":
        return export_lwm_jsonl(directory, output, tokenizer, ExportOptions(strict=strict), progress=progress)
    raise ValueError(f"unknown export format {format!r}; valid: {', '.join(FORMATS)}")
