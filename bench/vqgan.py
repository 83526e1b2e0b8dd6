"""Benchmark: lwmkit's Flax VQGAN encoder against diffusers' `VQModel.encode` + quantize.

Side by side in one run, same weights (a seeded random diffusers VQModel in aMUSEd's
configuration, converted with lwmkit's loader), same images (the real samples in
../shared/data/images, preprocessed once by `tokenizers.vision.load_image`), float32, CPU:
  - lwmkit `ImageTokenizer.encode` (jitted at a fixed batch of --batch, the last batch padded),
    as shipped (XLA:CPU with `vqgan.CPU_COMPILER_OPTIONS`: convolutions through YNNPACK) and
    with XLA's default compile;
  - diffusers `VQModel.encode` then `quantize` (torch.inference_mode, torch threads = --threads);
  - the pipeline rows added by `pipeline_rows` (none yet: the Beam image job adds its own).
Reports images/s (wall) and CPU-seconds per image (process CPU time: every thread of both
libraries), after one warm-up pass whose CPU-seconds (the jit compile, torch's first-call setup)
are shown apart; and how many codes each row agrees with the diffusers codes on.

Run (the command recorded in docs/benchmarks.md):
    python bench/vqgan.py --images ../shared/data/images --batch 4 --preset lwm
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

IMAGES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "images")


@dataclass
class Row:
    name: str
    images: int  # per pass
    wall: float  # seconds per pass
    cpu: float  # CPU-seconds per pass
    first_cpu: float  # CPU-seconds of the warm-up pass
    agree: float | None  # fraction of codes equal to diffusers'


def load_images(folder: str) -> np.ndarray:
    """uint8 [N, 256, 256, 3] through `tokenizers.vision.load_image` (LWM's preprocessing)."""
    from lwmkit.tokenizers.vision import load_image

    paths = sorted(glob.glob(os.path.join(folder, "*.png")) + glob.glob(os.path.join(folder, "*.jpg")))
    if not paths:
        sys.exit(f"no .png/.jpg images in {folder}")
    out = []
    for path in paths:
        with open(path, "rb") as f:
            out.append(load_image(f.read(), name=path))
    return np.stack(out)


def measure(fn: Callable[[], np.ndarray], n_images: int, passes: int) -> tuple[np.ndarray, float, float, float]:
    """Runs fn once to warm up, then `passes` times; returns (codes, wall/pass, cpu/pass, warm-up cpu)."""
    c0 = time.process_time()
    codes = fn()
    first = time.process_time() - c0
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(passes):
        codes = fn()
    return codes, (time.perf_counter() - w0) / passes, (time.process_time() - c0) / passes, first


def diffusers_model(preset: str, seed: int):
    """A seeded random diffusers VQModel of the preset's shape; its codebook scaled like lwmkit's random one."""
    import torch
    from diffusers import VQModel
    from lwmkit.tokenizers.vqgan import VQGAN_PRESETS
    from lwmkit.tokenizers.vqgan_weights import diffusers_config

    config = VQGAN_PRESETS[preset]
    torch.manual_seed(seed)
    model = VQModel(**diffusers_config(config)).eval()
    with torch.no_grad():  # diffusers' U(-1/n, 1/n) codebook would send almost every pixel to a few codes
        model.quantize.embedding.weight.normal_(0.0, config.codebook_init_std)
    return model


def _run_job(folder: str, weights: str, out: str, args: argparse.Namespace, tokenizer: str) -> tuple[float, float, int]:
    """(wall s, CPU s, documents) of `lwm-pack images` over a folder, in this process (in_memory runner)."""
    from lwmkit.pipelines.images.job import ImagesOptions, run_images

    w0, c0 = time.perf_counter(), time.process_time()
    manifest = run_images(ImagesOptions(
        inputs=(folder,), output=out, tokenizer=tokenizer, vqgan=weights, vqgan_preset=args.preset,
        seq_lens=(8192,), batch_size=args.batch, direct_running_mode="in_memory", progress=False, force=True,
    ))
    return time.perf_counter() - w0, time.process_time() - c0, manifest["documents"]


def pipeline_rows(args: argparse.Namespace, tok, work: str) -> list[Row]:
    """The whole image-text job (read, decode, preprocess, VQGAN via RunInference, examples, packing,
    shards) over `--copies` copies of the images, with the same weights; and the same job over one
    image, whose cost (Beam and JAX start-up, compilation) is subtracted in the "after start-up" row.
    """
    import shutil

    from lwmkit.tokenizers.text import train_bpe

    weights = os.path.join(work, "vqgan.safetensors")
    tok.save(weights)
    captions = {}
    with open(os.path.join(args.images, "captions.jsonl"), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            captions[row["file"]] = row["caption"]
    model = os.path.join(work, "text.model")
    with open(model, "wb") as f:
        f.write(train_bpe([c for c in captions.values()] * 50, 400))
    folders = {}
    for name, copies in (("one", 0), ("all", args.copies)):
        folder = os.path.join(work, name)
        os.makedirs(folder)
        rows = []
        files = sorted(captions)[:1] if copies == 0 else sorted(captions)
        for c in range(max(copies, 1)):
            for file in files:
                target = f"{c:02d}-{file}"
                shutil.copy(os.path.join(args.images, file), os.path.join(folder, target))
                rows.append({"file": target, "caption": f"{captions[file]} (copy {c})"})
        with open(os.path.join(folder, "captions.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        folders[name] = folder
    w1, c1, n1 = _run_job(folders["one"], weights, os.path.join(work, "out-one"), args, model)
    wall, cpu, n = _run_job(folders["all"], weights, os.path.join(work, "out-all"), args, model)
    return [
        Row(f"lwm-pack images job, {n} images (whole run, with start-up)", n, wall, cpu, c1, None),
        Row(f"lwm-pack images job, after start-up ({n} minus 1 image)", n - n1, wall - w1, cpu - c1, c1, None),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=IMAGES, help="folder of .png/.jpg images")
    parser.add_argument("--batch", type=int, default=4, help="encoder batch size (both rows)")
    parser.add_argument("--preset", default="lwm", help="VQGAN preset: lwm or tiny")
    parser.add_argument("--passes", type=int, default=2, help="timed passes over the images, after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-default-compile", action="store_true", help="skip the row without CPU_COMPILER_OPTIONS")
    parser.add_argument("--copies", type=int, default=4, help="copies of the images the pipeline rows run over")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the pipeline rows")
    args = parser.parse_args()

    import torch
    from lwmkit.tokenizers import vqgan
    from lwmkit.tokenizers.vqgan import ImageTokenizer

    torch.set_num_threads(args.threads)
    images = load_images(args.images)
    n = images.shape[0]
    model = diffusers_model(args.preset, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)  # config.json + diffusion_pytorch_model.safetensors
        tok = ImageTokenizer.from_weights(tmp, args.preset, batch_size=args.batch)

    x = torch.from_numpy((images.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2).copy())  # [N, 3, H, W]

    def diffusers_encode() -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, n, args.batch):
                h = model.encode(x[start : start + args.batch]).latents
                out.append(model.quantize(h)[2][2].reshape(h.shape[0], h.shape[2], h.shape[3]).numpy())
        return np.concatenate(out)

    ref, wall, cpu, first = measure(diffusers_encode, n, args.passes)
    rows = [Row(f"diffusers VQModel.encode + quantize (torch {args.threads} threads)", n, wall, cpu, first, 1.0)]
    codes, wall, cpu, first = measure(lambda: tok.encode(images), n, args.passes)
    name = "lwmkit ImageTokenizer.encode (jit; XLA:CPU convs via YNNPACK)"
    rows.insert(0, Row(name, n, wall, cpu, first, float((codes == ref).mean())))
    if not args.no_default_compile:
        plain = pickle.loads(pickle.dumps(tok))  # a fresh copy: its jitted functions are built anew
        saved, vqgan.CPU_COMPILER_OPTIONS = vqgan.CPU_COMPILER_OPTIONS, {}
        try:
            codes, wall, cpu, first = measure(lambda: plain.encode(images), n, args.passes)
        finally:
            vqgan.CPU_COMPILER_OPTIONS = saved
        name = "lwmkit ImageTokenizer.encode (jit; XLA's default compile)"
        rows.insert(1, Row(name, n, wall, cpu, first, float((codes == ref).mean())))
    if not args.no_pipeline:
        with tempfile.TemporaryDirectory() as work:
            rows += pipeline_rows(args, tok, work)

    print(
        f"{os.cpu_count()} CPUs; preset {args.preset}; {n} images of 256x256 from {args.images}; batch {args.batch}; "
        f"float32; {args.passes} timed passes after one warm-up"
    )
    print()
    w = 64
    print(f"| {'encoder':{w}} | images/s (wall) | CPU-s per image | warm-up CPU-s | codes = diffusers |")
    print(f"|{'-' * (w + 2)}|{'-' * 17}|{'-' * 17}|{'-' * 15}|{'-' * 19}|")
    for r in rows:
        agree = "-" if r.agree is None else f"{r.agree:.2%}"
        speed, cpu = r.images / r.wall, r.cpu / r.images
        print(f"| {r.name:{w}} | {speed:>15.3f} | {cpu:>15.3f} | {r.first_cpu:>13.1f} | {agree:>17} |")

if __name__ == "__main__":
    main()
