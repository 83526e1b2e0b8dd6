"""The engine every lwm-pack job runs on: no job's knowledge, only the machinery they share.

    stages.py          the one stage adapter: a per-record function as a counted Beam stage whose
                       drops go to the failures output
    lifecycle.py       a job's life: launch, the complete-output check, the work store's life,
                       the no-documents check
    runner.py          Beam pipeline options (a DirectRunner that never needs the network)
    resume.py          resuming from the work store, and --retry-failures
    work_store.py      tokenized documents kept on disk between stages: the unit of resume
    outputs.py         atomic writes and reads on local disk or any Beam filesystem
    normalize.py       text normalization before hashing and tokenization
    inference.py       `JaxModelHandler`, Beam RunInference for JAX/Flax models
    dataflow.py        the offline Dataflow dry run (`--dry_run=True`)
    dataflow_graph.py  the DataflowRunner's graph of a built pipeline, checked

It may import nothing else of `pipelines/` (see the dependency rule in `pipelines/__init__.py`).
"""
