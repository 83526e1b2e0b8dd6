"""The video job's --retry-failures: only failed videos are downloaded, decoded and encoded again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from lwmkit.pipelines.videos.download import VideoDownloadOptions
from lwmkit.pipelines.videos.frames import DecodeOptions
from lwmkit.pipelines.videos.index import FrameSampling
from lwmkit.pipelines.videos.job import VideosOptions, run_videos

from .helpers import unset_proxies
from .test_books import compare_outputs
from .video_inputs import serve, write_clip


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    unset_proxies(monkeypatch)


def _options(urls: str, out: Path, tokenizer: str, **kw) -> VideosOptions:
    return VideosOptions(
        inputs=(urls,), output=str(out), tokenizer=tokenizer, vqgan_preset="tiny", seq_lens=(2048,),
        download=VideoDownloadOptions(timeout_s=2.0, retries=0, allowed_hosts=("127.0.0.1",)),
        decode=DecodeOptions(FrameSampling("count", num_frames=3), chunk_frames=2),
        batch_size=4, shard_tokens=4096, **kw,
    )


def test_retry_failures_fetches_and_encodes_only_the_failed_videos(tmp_path, bpe_model):
    import pyarrow as pa
    import pyarrow.parquet as pq

    clips = {n: Path(write_clip(tmp_path / n, n=k)).read_bytes() for n, k in (("a.mp4", 10), ("b.mp4", 12), ("c.mp4", 8))}
    with serve({k: v for k, v in clips.items() if k != "c.mp4"}) as server:
        urls = str(tmp_path / "urls.parquet")
        pq.write_table(pa.table({
            "url": [server.url(f"/v/{n}") for n in ("a.mp4", "b.mp4", "c.mp4", "none.mp4")],
            "caption": ["first clip", "second clip", "third clip, not there yet", "never there"],
        }), urls)
        out = tmp_path / "out"
        first = run_videos(_options(urls, out, bpe_model))
        assert first["documents"] == 2 and first["failures"]["total"] == 2

        server.handler.files["c.mp4"] = clips["c.mp4"]
        shutil.rmtree(out / "video-cache")  # reprocessing a.mp4 or b.mp4 would fetch them again
        before = dict(server.hits)
        second = run_videos(_options(urls, out, bpe_model, retry_failures=True))
        fetched = {k for k, v in server.hits.items() if v != before.get(k, 0)}
        assert fetched == {"/v/c.mp4", "/v/none.mp4"}
        assert second["retry"] == {"rows": 2, "recovered": 1, "still_failing": 1}
        rows = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
        assert [(r["stage"], r["line"]) for r in rows] == [("download", 4)]

        clean = run_videos(_options(urls, tmp_path / "clean", bpe_model))
        assert second["stages"] == clean["stages"]  # frames of the stored videos are counted too
        assert second["stages"]["frames"]["kept"] == 9
        shutil.rmtree(out / "video-cache")
        shutil.rmtree(tmp_path / "clean" / "video-cache")
        compare_outputs(str(out), str(tmp_path / "clean"), ignore=("retry",))
