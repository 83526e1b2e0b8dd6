"""lwmkit's VQGAN against diffusers' VQModel (aMUSEd's network) with the same weights.

A seeded random diffusers VQModel is saved with `save_pretrained` (config.json + safetensors) and
loaded by `ImageTokenizer.from_weights`; on the real sample images both must give the same codes
(a mismatch is allowed only at a float tie: the two codes' float64 distances to diffusers' latent
within 1e-4 x |z|^2) and the same decoded pixels within float tolerance. diffusers' default
codebook, U(-1/8192, 1/8192), sends nearly every latent to a few codes, so the codebook is redrawn
like lwmkit's random one (normal, std 0.3) to exercise many codes.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the interop extra (torch, diffusers) is not installed")
diffusers = pytest.importorskip("diffusers", reason="the interop extra (torch, diffusers) is not installed")

from lwmkit.tokenizers import vqgan_weights as vw  # noqa: E402
from lwmkit.tokenizers.vqgan import VQGAN_PRESETS, ImageTokenizer  # noqa: E402

IMAGES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "images")
TIE = 1e-4  # relative gap between the two nearest codes below which either is a correct answer


def diffusers_model(preset: str, seed: int = 0, device: str | None = None):
    config = VQGAN_PRESETS[preset]
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = diffusers.VQModel(**vw.diffusers_config(config)).eval()
    if device != "meta":
        with torch.no_grad():
            model.quantize.embedding.weight.normal_(0.0, config.codebook_init_std)
    return model


@pytest.fixture(scope="module")
def real_images() -> np.ndarray:
    if not os.path.isdir(IMAGES):
        pytest.skip(f"real sample images not found at {IMAGES}")
    from lwmkit.tokenizers.vision import load_image

    paths = sorted(p for p in os.listdir(IMAGES) if p.endswith((".png", ".jpg")))
    return np.stack([load_image(open(os.path.join(IMAGES, p), "rb").read(), name=p) for p in paths])


@pytest.mark.parametrize("preset", ["tiny", "lwm"])
def test_layout_names_every_diffusers_tensor(preset):
    model = diffusers_model(preset, device="meta")  # shapes only, no memory
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {}
    for _, hf, kind, shape in vw.layout(VQGAN_PRESETS[preset]):
        if kind == "conv":
            want[f"{hf}.weight"], want[f"{hf}.bias"] = (shape[3], shape[2], shape[0], shape[1]), (shape[3],)
        elif kind == "norm":
            want[f"{hf}.weight"], want[f"{hf}.bias"] = shape, shape
        else:
            want[f"{hf}.weight"] = shape
    assert state == want


def compare(preset: str, images: np.ndarray, decode_count: int, tmp_path, uint8: bool = True) -> dict:
    """Encodes `images` with both, decodes the first `decode_count` (also to uint8); returns the figures."""
    torch.set_num_threads(2)
    model = diffusers_model(preset)
    model.save_pretrained(str(tmp_path))
    tok = ImageTokenizer.from_weights(str(tmp_path), preset=preset, batch_size=4)
    n = images.shape[0]

    ours = tok.encode(images)  # [N, 16, 16]
    x = torch.from_numpy((images.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2).copy())  # [N, 3, H, W]
    with torch.inference_mode():
        z = torch.cat([model.encode(x[i : i + 4]).latents for i in range(0, n, 4)])  # [N, D, 16, 16]
        theirs = model.quantize(z)[2][2].reshape(n, 16, 16).numpy()
    z = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).double().numpy()  # [N*256, D]
    e = tok.params["quantize"]["embeddings"].astype(np.float64)
    a, b = ours.reshape(-1), theirs.reshape(-1)
    mismatch = np.nonzero(a != b)[0]
    gaps = [abs(((z[i] - e[a[i]]) ** 2).sum() - ((z[i] - e[b[i]]) ** 2).sum()) / (z[i] @ z[i] + 1e-6) for i in mismatch]

    apply, params = tok.decode_fn()
    k = decode_count
    ours_px = np.asarray(apply(params, ours[:k]))  # [k, 256, 256, 3] in [-1, 1]
    with torch.inference_mode():
        codes = torch.from_numpy(ours[:k].reshape(-1).astype(np.int64))
        theirs_px = model.decode(codes, force_not_quantize=True, shape=(k, 16, 16, tok.config.embed_dim)).sample
    theirs_px = theirs_px.clamp(-1, 1).permute(0, 2, 3, 1).numpy()
    figures = {
        "agreement": float((a == b).mean()),
        "mismatches": len(mismatch),
        "max_tie_gap": max(gaps, default=0.0),
        "distinct_codes": len(np.unique(ours)),
        "min_distinct_per_image": min(len(np.unique(c)) for c in ours),
        "pixel_max_abs": float(np.abs(ours_px - theirs_px).max()),
        "pixel_std": float(theirs_px.std()),
    }
    if uint8:  # ImageTokenizer.decode: the same pixels, rounded to 0..255
        expected = np.round((theirs_px + 1) * 127.5)
        figures["uint8_max_abs"] = int(np.abs(tok.decode(ours[:k]).astype(int) - expected).max())
    return figures


def check(figures: dict, preset: str) -> None:
    print(f"\n{preset}: {figures}")
    assert figures["max_tie_gap"] <= TIE, figures  # any mismatch is a float tie
    assert figures["agreement"] >= 0.99, figures
    assert figures["distinct_codes"] >= 150 and figures["min_distinct_per_image"] >= 5, figures
    assert figures["pixel_std"] > 0.05  # the decoded images are not flat
    assert figures["pixel_max_abs"] < 1e-3, figures
    assert figures.get("uint8_max_abs", 0) <= 1, figures


@pytest.mark.realdata
def test_tiny_matches_diffusers_on_real_images(real_images, tmp_path):
    check(compare("tiny", real_images, decode_count=2, tmp_path=tmp_path), "tiny")


@pytest.mark.realdata
@pytest.mark.slow
def test_lwm_matches_diffusers_on_real_images(real_images, tmp_path):
    # The real network: ~2 CPU-s per image to encode in each library, more to decode; all 12 images
    # are encoded, one is decoded (float only: the uint8 path is the tiny test's).
    start = time.perf_counter()
    check(compare("lwm", real_images, decode_count=1, tmp_path=tmp_path, uint8=False), "lwm")
    print(f"lwm comparison took {time.perf_counter() - start:.0f} s")
