"""The image job's --retry-failures: only failed pairs are downloaded and encoded again, then merged."""

from __future__ import annotations

import json

import pytest
from lwmkit.pipelines.images.download import DownloadOptions
from lwmkit.pipelines.images.job import ImagesOptions, run_images

from .helpers import unset_proxies
from .image_inputs import rgb, serve, write_parquet
from .test_books import compare_outputs


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    unset_proxies(monkeypatch)


def _options(urls: str, out, tokenizer, **kw) -> ImagesOptions:
    return ImagesOptions(
        inputs=(urls,), output=str(out), tokenizer=tokenizer, vqgan_preset="tiny", seq_lens=(1024,),
        download=DownloadOptions(timeout_s=2.0, total_timeout_s=30.0, retries=0, allowed_hosts=("127.0.0.1",)),
        batch_size=4, shard_tokens=2048, **kw,
    )


def test_retry_failures_downloads_only_the_failed_pairs_and_merges_them(tmp_path, bpe_model):
    files = {"a.png": rgb(seed=1), "b.jpg": rgb(seed=2, fmt="JPEG"), "c.png": rgb(seed=3)}
    with serve({k: v for k, v in files.items() if k != "c.png"}) as server:
        urls = write_parquet(tmp_path / "urls.parquet", {
            "url": [server.url(f"/img/{n}") for n in ("a.png", "b.jpg", "c.png", "d.png")],
            "caption": ["first picture", "second picture", "third picture, not there yet", "never there"],
        })
        out = tmp_path / "out"
        first = run_images(_options(urls, out, bpe_model))
        assert first["failures"]["by_reason"] == {"download:http_404": 2}

        server.handler.files["c.png"] = files["c.png"]  # the outage is over for c.png only
        before = dict(server.hits)
        second = run_images(_options(urls, out, bpe_model, retry_failures=True))
        fetched = {k: v - before.get(k, 0) for k, v in server.hits.items() if v != before.get(k, 0)}
        assert fetched == {"/img/c.png": 1, "/img/d.png": 1}  # a.png and b.jpg came from the work store
        assert second["retry"] == {"rows": 2, "recovered": 1, "still_failing": 1}
        rows = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
        assert [(r["line"], r["reason"]) for r in rows] == [(4, "http_404")]
        assert second["documents"] == 3
        assert second["stages"]["read"] == first["stages"]["read"]
        assert second["stages"]["download"] == {"seen": 4, "kept": 3, "dropped": 1}

        # The same as one run that found c.png from the start.
        clean = run_images(_options(urls, tmp_path / "clean", bpe_model))
        assert clean["stages"] == second["stages"]
        compare_outputs(str(out), str(tmp_path / "clean"), ignore=("retry",))
