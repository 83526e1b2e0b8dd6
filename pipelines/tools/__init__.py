"""Read-side tools and samples: what reads finished outputs, and what makes demo inputs.

    report.py, report_plots.py   lwm-pack report: an HTML page with plots of an output
    inspection.py                lwm-pack inspect: checks and describes an output
    export.py                    lwm-pack export: documents back to text, tables
    demo.py                      lwm-pack demo: a small end-to-end run on built-in samples
    sample_corpus.py             the built-in sample books
    sample_videos.py             the built-in sample videos
"""
