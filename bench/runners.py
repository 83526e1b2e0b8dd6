"""Benchmark: the books job on the same corpus under four Beam runners, side by side (issue 24).

Rows, each `lwm-pack books` as a fresh subprocess on the same inputs and options:
  direct in_memory         the DirectRunner in one process (lwm-pack's default)
  direct multi_processing  the DirectRunner with 2 worker processes
  dask (2 workers)         Beam's Dask runner on a 2-worker `distributed.LocalCluster` the job starts
  portable (2 workers)     PortableRunner against Beam's local job service, SDK workers in an external
                           worker pool (`--environment_type=EXTERNAL`, 2 workers): how Flink and Spark
                           clusters run Python; the service and pool are started here, once, before
                           the row, and their CPU during the row is counted
Columns: wall seconds; CPU-seconds of every process the row used (the job and every worker it reaped,
from getrusage; for the portable row also the job service and the worker pool with their SDK
workers, from psutil), per million document tokens; peak RSS of the launching process and of the
largest other process of the row (sampled every 0.1 s with psutil); documents and tokens in the job
manifest, and whether the shards equal the in_memory row's byte for byte.

Run (the command recorded in docs/benchmarks.md):
    python bench/runners.py --books 200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

LWM_PACK = os.path.join(os.path.dirname(sys.executable), "lwm-pack")


class Sampler:
    """Peak RSS of every process under `roots` (sampled every 0.1 s while the row runs)."""

    def __init__(self, roots: list[psutil.Process]):
        self.roots = roots
        self.peak: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.1)

    def sample(self) -> None:
        for root in self.roots:
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for p in procs:
                try:
                    self.peak[p.pid] = max(self.peak.get(p.pid, 0.0), p.memory_info().rss / 2**20)
                except psutil.NoSuchProcess:
                    pass

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def tree_cpu(root: psutil.Process) -> float:
    """CPU-seconds of a long-lived process, its live descendants and the children it reaped."""
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def reaped_cpu() -> float:
    """CPU-seconds of this process's reaped children (and what they reaped)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def start_portable(cwd: str) -> tuple[list[subprocess.Popen], list[str]]:
    """Beam's local job service and an external worker pool on 127.0.0.1; (processes, runner args)."""
    job, pool = _free_port(), _free_port()
    env = {**os.environ, "PYTHONSAFEPATH": "1",
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-m", module, arg], cwd=cwd, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for module, arg in (("apache_beam.runners.worker.worker_pool_main", f"--service_port={pool}"),
                                 ("apache_beam.runners.portability.local_job_service_main", f"--port={job}"))]
    _wait(pool)
    _wait(job)
    return procs, ["--runner", "PortableRunner", f"--job_endpoint=localhost:{job}", "--environment_type=EXTERNAL",
                   f"--environment_config=localhost:{pool}", "--sdk_worker_parallelism=2"]


def shard_digest(out: str) -> str:
    """SHA-256 over every shard file of the output, in path order."""
    h = hashlib.sha256()
    for path in sorted(Path(out).rglob("*.array_record-*")):
        if ".work" not in path.parts:
            h.update(path.relative_to(out).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def run_row(name: str, command: list[str], out: str, cwd: str, services: list[psutil.Process]) -> dict:
    """One `lwm-pack` run: wall, CPU of it and its workers (+ the services'), peak RSS, manifest counts."""
    services_before = sum(tree_cpu(p) for p in services)
    reaped_before = reaped_cpu()
    start = time.perf_counter()
    child = subprocess.Popen([LWM_PACK, *command, "--output", out, "--quiet"], cwd=cwd,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    launcher = psutil.Process(child.pid)
    with Sampler([launcher, *services]) as sampler:
        stdout, stderr = child.communicate()
    wall = time.perf_counter() - start
    service_pids = {p.pid for p in services}
    row = {"name": name, "rc": child.returncode, "wall": wall, "stderr": stderr[-800:], "stdout": stdout.strip(),
           "cpu": reaped_cpu() - reaped_before + sum(tree_cpu(p) for p in services) - services_before,
           "rss_main": sampler.peak.get(launcher.pid, 0.0),
           "rss_worker": max((v for p, v in sampler.peak.items() if p != launcher.pid and p not in service_pids),
                             default=0.0)}
    manifest = os.path.join(out, "manifest.json")
    if child.returncode == 0 and os.path.exists(manifest):
        row["documents"] = json.loads(Path(manifest).read_text()).get("documents")
        docs = json.loads(Path(out, "documents", "manifest.json").read_text())
        row["tokens"] = docs["tokens"]["total"]
        row["digest"] = shard_digest(out)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--books", type=int, default=200, help="sample books in the corpus")
    parser.add_argument("--work", help="working folder (default: a temporary one)")
    parser.add_argument("--rows", default="in_memory,multi_processing,dask,portable")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="lwm-runners-")
    from lwmkit.pipelines.tools.sample_corpus import write_sample_corpus

    books = write_sample_corpus(os.path.join(work, "raw"), books=args.books, seed=0)
    model = os.path.join(work, "tokenizer.model")
    inputs = [a for p in books for a in ("--input", p)]
    subprocess.run([LWM_PACK, "train-tokenizer", *inputs, "--vocab-size", "1000", "--output", model],
                   check=True, capture_output=True)
    command = ["books", *inputs, "--tokenizer", model, "--seq-len", "4096"]
    runners = {
        "in_memory": (["--direct-running-mode", "in_memory"], None),
        "multi_processing": (["--direct-running-mode", "multi_processing", "--direct-num-workers", "2"], None),
        "dask": (["--runner", "DaskRunner", "--direct-num-workers", "2"], None),
        "portable": (None, "portable"),
    }
    rows = []
    for name in args.rows.split(","):
        flags, special = runners[name]
        procs: list[subprocess.Popen] = []
        if special == "portable":
            procs, flags = start_portable(work)
        try:
            rows.append(run_row(name, [*command, *flags], os.path.join(work, f"out-{name}"), work,
                                [psutil.Process(p.pid) for p in procs]))
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=30)
    base = next((r for r in rows if r["name"] == "in_memory" and "digest" in r), None)
    print(f"books job on {args.books} sample books, seq_len 4096 ({os.cpu_count()} CPUs, python "
          f"{sys.version.split()[0]}); work folder {work}")
    print("| runner | wall s | CPU s | CPU s / M tokens | peak RSS main MiB | peak RSS worker MiB | documents | tokens | shards = in_memory |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if r["rc"] != 0 or "tokens" not in r:
            print(f"| {r['name']} | {r['wall']:.1f} | {r['cpu']:.1f} | - | {r['rss_main']:.0f} | {r['rss_worker']:.0f} "
                  f"| failed (exit {r['rc']}) | | |")
            print(f"  {r['name']} stderr tail: {r['stderr'][-300:]!r}", file=sys.stderr)
            continue
        same = "yes" if base and r["digest"] == base["digest"] else "NO"
        per_m = r["cpu"] / (r["tokens"] / 1e6) if r["tokens"] else float("nan")
        print(f"| {r['name']} | {r['wall']:.1f} | {r['cpu']:.1f} | {per_m:.2f} | {r['rss_main']:.0f} "
              f"| {r['rss_worker']:.0f} | {r['documents']} | {r['tokens']:,} | {same} |")


if __name__ == "__main__":
    main()
