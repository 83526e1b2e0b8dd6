"""Beam 2.77's Dask runner loses what a DoFn emits from `finish_bundle` (issue 24's root cause).

`apache_beam/runners/dask/transform_evaluator.py`, `apply_dofn_to_bundle` (one Dask partition is
one bundle) runs setup, start_bundle and process over the partition, then takes its result list
(`results = [v.value for v in tagged_receivers.values]`) and only then calls `invoke_finish_bundle`
and `invoke_teardown`: finish_bundle still runs (its side effects, e.g. files, happen), but the
elements it emits go to the receiver after the list was taken and never reach the next transform.
A buffering DoFn that flushes in finish_bundle (lwmkit's work-store spill) therefore writes its
files and passes on nothing. The same pipeline on the DirectRunner passes every element on.

Run: python bench/dask_finish_bundle.py   (needs `pip install ".[dask]"`; about 20 s)
Prints, per runner, how many of 10 elements each way of emitting passed on:
    DirectRunner: from finish_bundle 10, from process 10
    DaskRunner: from process 10          (no count at all for from finish_bundle)
"""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue


class FromProcess(beam.DoFn):
    def process(self, x):
        yield x


class FromFinishBundle(beam.DoFn):
    """Buffers a bundle's elements and emits them from finish_bundle (as a batching writer does)."""

    def start_bundle(self):
        self.buffer = []

    def process(self, x):
        self.buffer.append(x)

    def finish_bundle(self):
        for x in self.buffer:
            yield WindowedValue(x, MIN_TIMESTAMP, [GlobalWindow()])


def count(runner_args: list[str], label: str) -> None:
    """Both ways of emitting, counted per way; one last step prints (on Dask, in a worker)."""

    def show(counts):
        print(label + ": " + ", ".join(f"{k} {n}" for k, n in sorted(counts)), flush=True)

    with beam.Pipeline(options=PipelineOptions(runner_args)) as p:
        xs = p | beam.Create(list(range(10)))
        ways = [xs | name >> beam.ParDo(fn) | f"tag {name}" >> beam.Map(lambda x, k=name: (k, x))
                for name, fn in (("from process", FromProcess()), ("from finish_bundle", FromFinishBundle()))]
        # One sink: the Dask runner computes only the bag of the last transform applied.
        (ways | beam.Flatten() | beam.combiners.Count.PerKey() | beam.combiners.ToList() | beam.Map(show))


def main() -> None:
    logging.getLogger("distributed").setLevel(logging.ERROR)
    count(["--runner=DirectRunner", "--direct_running_mode=in_memory"], "DirectRunner")
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        count(["--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
               f"--dask_client_address={cluster.scheduler_address}"], "DaskRunner")


if __name__ == "__main__":
    main()
