"""The pack job (`lwm-pack pack`): packs an existing output's documents again, on a schedule of sequence lengths.

    job.py   StagesOptions, parse_schedule, run_stages
"""
