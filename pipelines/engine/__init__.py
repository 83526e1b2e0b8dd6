"""The engine every lwm-pack job runs on: no job's knowledge, only the machinery they share.

    stages.py          the one stage adapter: a per-record function as a counted Beam stage whose
                       drops go to the failures output
    lifecycle.py       a job's life: launch, the complete-output check, the work store's life,
                       the no-documents check
    runner.py          Beam pipeline options (`RunOptions`, `ResumeOptions`; a DirectRunner that
                       never needs the network, Dask and portable runners)
    job_options.py     the packing fields' checks, options' range checks (`check_ranges`) and the
                       options a manifest records
    inputs.py          matching a job's inputs (with Beam, or locally without it) and reading
                       its tokenizer
    jsonl.py           JSON-lines inputs read line by line (no line costs its neighbours)
    resume.py          resuming from the work store, and --retry-failures
    work_store.py      tokenized documents kept on disk between stages: the unit of resume
    outputs.py         atomic writes and reads on local disk or any Beam filesystem
    output_lock.py     one job per output folder (owner, start time, heartbeat)
    progress.py        live stage counts: workers report to a folder, the launcher shows the sums
    drops.py           what a stage says about a record it drops (`DropRecord`, `Dropped`, the
                       failure row) and exact dedup (`KeepFirst`), without Beam
    normalize.py       text normalization before hashing and tokenization
    vqgan.py           the VQGAN step the image and video jobs share, their job record and
                       quick no-op answer (`complete_vqgan_job`)
    inference.py       `JaxModelHandler`, Beam RunInference for JAX/Flax models
    web/               downloads from the web: the URL, address and redirect guard both
                       downloaders use (`url_guard.py`) and the pinned HTTP(S) client (`http_fetch.py`)
    dataflow/          the offline Dataflow dry run (`dry_run.py`, `--dry_run=True`) and the
                       DataflowRunner graph it checks (`graph.py`)

It may import nothing else of `pipelines/` (see the dependency rule in `pipelines/__init__.py`).
"""
