"""The pack job (`lwm-pack pack`): packs an existing output's documents again, on a schedule of sequence lengths.

    options.py   StagesOptions, parse_schedule and the job record they make, without Beam (the quick
                 no-op answer, complete_stages)
    job.py       reading document shards, run_stages
"""
