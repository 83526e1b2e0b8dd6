"""Needle cases as lwmkit document records, so the same cases can train a model or feed the loader.

Each case becomes one document record in LWM's chat layout: the prompt with loss 0, then the
reference answer and EOS with loss 1. The whole record is one atomic span, so packing never cuts a
case in two (a case longer than the packed length is dropped by packing, not truncated). The
directory is a regular lwmkit dataset (shards, manifest.json, TFDS metadata) that
`lwmkit.packing.source.ShardDataSource` and `lwm-pack inspect` read.

Example, a text case with prompt "...ASSISTANT: " and expected ["5331051"]:
    tokens       [BOS] ids(prompt)              ids("5331051") [EOS]
    loss_weights  0    0 ... 0                  1 ... 1         1
    vision_mask   False everywhere (a video case: True on its frames)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
from lwmkit.eval.cases import case_prompt
from lwmkit.packing.records import (
    DOCUMENT_FORMAT,
    FORMAT_VERSION,
    document_id,
    encode_document,
    tfds_features_json,
)
from lwmkit.packing.shards import (
    WRITER_OPTIONS,
    dataset_info_json,
    shard_name,
    write_json_atomic,
    write_shard,
)

DATASET_NAME = "needle_cases"


def reference_answer(case: dict[str, Any]) -> str:
    """The answer a perfect model gives: the option letter, or the expected strings joined by ", "."""
    return case["expected"][0] if case["scoring"] == "choice" else ", ".join(case["expected"])


def case_tokens(case: dict[str, Any], tokenizer: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens int32, vision_mask bool, loss_weights float32) of one case as a training document."""
    if case.get("modality", "text") == "video":
        from lwmkit.eval.video_needle import video_prompt

        p = video_prompt(case)
        prompt_ids, prompt_mask = np.asarray(p.tokens, np.int32), np.asarray(p.vision_mask, bool)
    else:
        ids = tokenizer.encode_batch([case_prompt(case, tokenizer)])[0]
        prompt_ids = np.asarray([tokenizer.bos_id, *ids], np.int32)
        prompt_mask = np.zeros(len(prompt_ids), bool)
    answer = np.asarray([*tokenizer.encode_batch([reference_answer(case)])[0], tokenizer.eos_id], np.int32)
    tokens = np.concatenate([prompt_ids, answer])
    mask = np.concatenate([prompt_mask, np.zeros(len(answer), bool)])
    weights = np.concatenate([np.zeros(len(prompt_ids), np.float32), np.ones(len(answer), np.float32)])
    return tokens, mask, weights


def write_case_records(
    cases: Iterable[dict[str, Any]],
    directory: str,
    tokenizer: Any,
    *,
    source_file: str = "lwm-needle",
) -> dict[str, Any]:
    """Writes cases as one shard of document records plus manifest.json and TFDS metadata.

    Args:
      cases: needle cases (text or video).
      directory: the dataset directory to create (its manifest is written last).
      tokenizer: the text tokenizer (encodes prompts and answers; its fingerprint goes in the manifest).
      source_file: recorded as each record's `source_file`; `source_line` is the case's 1-based index.

    Returns:
      The manifest.
    """
    os.makedirs(directory, exist_ok=True)
    totals = {"total": 0, "text": 0, "vision": 0}
    tasks: dict[str, int] = {}

    def records():
        for i, case in enumerate(cases, start=1):
            tokens, mask, weights = case_tokens(case, tokenizer)
            totals["total"] += len(tokens)
            totals["vision"] += int(mask.sum())
            tasks[case["task"]] = tasks.get(case["task"], 0) + 1
            yield encode_document(
                doc_id=document_id(f"{case['id']}|{case.get('prompt_sha256', '')}"),
                source_file=source_file,
                source_line=i,
                tokens=tokens,
                vision_mask=mask,
                loss_weights=weights,
                atomic_spans=[(0, len(tokens))],
            )

    name = shard_name(DATASET_NAME, 0, 1)
    info = write_shard(os.path.join(directory, name), records())
    totals["text"] = totals["total"] - totals["vision"]
    fingerprint = tokenizer.fingerprint() if hasattr(tokenizer, "fingerprint") else {}
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset_name": DATASET_NAME,
        "kind": "document",
        "record_format": DOCUMENT_FORMAT,
        "seq_len": None,
        "records": info.records,
        "documents": info.records,
        "shards": [info.to_json()],
        "shard_writer_options": WRITER_OPTIONS,
        "tokens": totals,
        "tokenizer": {"sha256": fingerprint.get("sha256"), "vocab_size": fingerprint.get("vocab_size")},
        "source": "lwm-needle",
        "tasks": dict(sorted(tasks.items())),
    }
    write_json_atomic(os.path.join(directory, "features.json"), tfds_features_json("document"))
    write_json_atomic(
        os.path.join(directory, "dataset_info.json"),
        dataset_info_json(DATASET_NAME, [info], "lwm-needle cases as lwmkit document records"),
    )
    write_json_atomic(os.path.join(directory, "manifest.json"), manifest)
    return manifest
