"""The long-context QA job (`lwm-pack qa`): books to model-generated (or extractive) QA examples.

    options.py      QAOptions and the job record they make, without Beam (the quick no-op answer, complete_qa)
    job.py          build_pipeline, prepare_qa, run_qa (reads books with the books job's stages)
    stages.py       chunking, generation batches, assembling contexts
    chunks.py       splitting a book into chunks
    generators.py   the QA generator interface and the chat-model generator
    extractive.py   the extractive generator (no model)
    client.py       the OpenAI-compatible HTTP client
    calls.py        batched generator calls
    cache.py        the generation cache
    assembly.py     long contexts and chat turns from chunks and QA pairs
"""
