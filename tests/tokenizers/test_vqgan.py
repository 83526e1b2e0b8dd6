"""The Flax VQGAN: presets, the module tree, encode/decode, batching, dtypes, pickling, fingerprint."""

from __future__ import annotations

import dataclasses
import os
import pickle

import numpy as np
import pytest
from lwmkit.tokenizers import vqgan_weights
from lwmkit.tokenizers.vqgan import VQGAN_PRESETS, ImageTokenizer, VQGANConfig

IMAGES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "images")


def smooth_images(n: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, 256, 256, 3]: gradients, blobs and noise, so codes vary over the image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0.5, 8.0, 3)
        chans = [np.sin(a * xx + b * yy + c * k) for k in range(3)]
        img = 127.5 + 100 * np.stack(chans, -1) + rng.normal(0, 12, (256, 256, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def tiny() -> ImageTokenizer:
    return ImageTokenizer.random("tiny", seed=0, batch_size=4)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return smooth_images(5)


@pytest.fixture(scope="module")
def tiny_codes(tiny, images) -> np.ndarray:
    return tiny.encode(images)


def test_presets_map_256_to_16_and_lwm_is_the_amused_network():
    for name, cfg in VQGAN_PRESETS.items():
        assert (cfg.resolution, cfg.codes_side, len(cfg.channel_mult) - 1) == (256, 16, 4), name
    lwm = VQGAN_PRESETS["lwm"]
    assert lwm.block_channels == (128, 256, 256, 512, 768)
    assert (lwm.num_res_blocks, lwm.z_channels, lwm.embed_dim) == (2, 64, 64)
    assert (lwm.num_embeddings, lwm.norm_groups) == (8192, 32)
    # 146,244,675 parameters: the count of diffusers' VQModel in aMUSEd's configuration (LWM's pickle is ~585 MB).
    assert sum(int(np.prod(s)) for s in vqgan_weights.expected_shapes(lwm).values()) == 146_244_675


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"norm_groups": 12}, "norm_groups"),
        ({"resolution": 250}, "resolution"),
        ({"channel_mult": ()}, "channel_mult"),
        ({"num_embeddings": 1}, "num_embeddings"),
        ({"hidden_channels": 0}, "hidden_channels"),
        ({"codebook_init_std": 0.0}, "codebook_init_std"),
    ],
)
def test_config_rejects_bad_fields_naming_them(change, field):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(VQGAN_PRESETS["tiny"], **change)


def test_config_dict_round_trip_and_unknown_names():
    cfg = VQGAN_PRESETS["lwm"]
    assert VQGANConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown VQGANConfig fields"):
        VQGANConfig.from_dict({**cfg.to_dict(), "attn_resolutions": []})
    with pytest.raises(ValueError, match=r"valid: \['lwm', 'tiny'\]"):
        ImageTokenizer.random("huge")


@pytest.mark.parametrize("preset", ["tiny", "lwm"])
def test_flax_module_tree_is_the_weights_layout(preset):
    # The converters write expected_shapes(); the Flax modules must build exactly that tree.
    import jax
    import jax.numpy as jnp
    from flax import traverse_util
    from lwmkit.tokenizers.vqgan_model import VQGANModel

    cfg = VQGAN_PRESETS[preset]
    shapes = jax.eval_shape(VQGANModel(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 256, 256, 3)))
    flat = traverse_util.flatten_dict(shapes["params"], sep="/")
    assert {k: tuple(v.shape) for k, v in flat.items()} == vqgan_weights.expected_shapes(cfg)


def test_encode_gives_int32_codes_in_range_that_vary(tiny, images, tiny_codes):
    assert tiny_codes.shape == (5, 16, 16) and tiny_codes.dtype == np.int32
    assert tiny_codes.min() >= 0 and tiny_codes.max() < 8192
    assert len(np.unique(tiny_codes)) >= 100  # the random codebook is scaled so that codes spread


def test_codes_are_the_nearest_codebook_vectors(tiny, images, tiny_codes):
    # Recompute z = quant_conv(encoder(x)) and check the argmin in float64, away from float ties.
    import jax
    from lwmkit.tokenizers.vqgan_model import VQGANModel

    model = VQGANModel(tiny.config)
    x = images.astype(np.float32) / 127.5 - 1.0
    z = jax.jit(lambda p, x: model.apply({"params": p}, x, method=lambda m, x: m.quant_conv(m.encoder(x))))(
        tiny.params, x
    )
    z = np.asarray(z, np.float64).reshape(-1, tiny.config.embed_dim)  # [N*256, D]
    e = tiny.params["quantize"]["embeddings"].astype(np.float64)  # [8192, D]
    d = (z * z).sum(1)[:, None] + (e * e).sum(1)[None] - 2 * z @ e.T
    top2 = np.sort(d, axis=1)[:, :2]
    clear = top2[:, 1] - top2[:, 0] > 1e-4
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(tiny_codes.reshape(-1)[clear], d.argmin(1)[clear])


def test_any_batch_size_gives_the_same_codes(tiny, images, tiny_codes):
    # 5 images at batch 4 (4 + 1 padded) == at batch 2 (2 + 2 + 1 padded): padding never leaks in.
    two = ImageTokenizer(tiny.config, tiny.flat_params(), preset="tiny", source="test", batch_size=2)
    np.testing.assert_array_equal(two.encode(images), tiny_codes)
    np.testing.assert_array_equal(tiny.encode(images[3:4]), tiny_codes[3:4])
    assert tiny.encode(images[:0]).shape == (0, 16, 16)


def test_decode_returns_uint8_images_and_is_deterministic(tiny, tiny_codes):
    out = tiny.decode(tiny_codes[:2])
    assert out.shape == (2, 256, 256, 3) and out.dtype == np.uint8
    assert out.std() > 1.0  # not a constant image
    np.testing.assert_array_equal(tiny.decode(tiny_codes[:2].astype(np.int64)), out)
    np.testing.assert_array_equal(tiny.decode(tiny_codes[:1]), out[:1])


def test_bad_inputs_are_refused_with_their_shape_or_value(tiny):
    with pytest.raises(ValueError, match="uint8 images"):
        tiny.encode(np.zeros((1, 256, 256, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(1, 128, 128, 3\)"):
        tiny.encode(np.zeros((1, 128, 128, 3), np.uint8))
    with pytest.raises(ValueError, match="code 8192 at"):
        tiny.decode(np.full((1, 16, 16), 8192))
    with pytest.raises(ValueError, match="integer codes"):
        tiny.decode(np.zeros((1, 16, 16), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        ImageTokenizer.random("tiny", dtype="float16")
    with pytest.raises(ValueError, match="batch_size"):
        ImageTokenizer.random("tiny", batch_size=0)


def test_encode_fn_is_the_pure_form_of_encode(tiny, images, tiny_codes):
    apply, params = tiny.encode_fn()
    assert all(isinstance(v, np.ndarray) for v in vqgan_weights.flatten_tree(params, "params").values())
    x = images.astype(np.float32) / 127.5 - 1.0
    np.testing.assert_array_equal(np.asarray(apply(params, x)), tiny_codes)


def test_bfloat16_compute_mostly_agrees_with_float32(tiny, images, tiny_codes):
    bf16 = ImageTokenizer(tiny.config, tiny.flat_params(), preset="tiny", source="test", batch_size=4, dtype="bfloat16")
    codes = bf16.encode(images)
    assert codes.dtype == np.int32 and codes.shape == tiny_codes.shape
    # bf16 keeps 8 mantissa bits: near-ties flip, most codes do not.
    assert (codes == tiny_codes).mean() > 0.5
    assert bf16.fingerprint()["compute_dtype"] == "bfloat16"
    assert bf16.fingerprint()["sha256"] == tiny.fingerprint()["sha256"]  # same weights


def test_pickles_without_jax_state_and_rebuilds_it(tiny, images, tiny_codes):
    import pickletools

    tiny.encode(images[:1])  # jitted functions and device params now exist
    data = pickle.dumps(tiny)
    ops = list(pickletools.genops(data))
    modules = {arg.split()[0] for op, arg, _ in ops if op.name in ("GLOBAL", "STACK_GLOBAL") and arg}
    strings = [arg for op, arg, _ in ops if op.name in ("SHORT_BINUNICODE", "BINUNICODE")]
    referenced = {s for s in strings if "." in s and s.split(".")[0] in ("jax", "jaxlib", "flax", "numpy", "lwmkit")}
    assert {m.split(".")[0] for m in modules | referenced} <= {"numpy", "lwmkit"}, modules | referenced
    params_bytes = sum(a.nbytes for a in tiny.flat_params().values())
    assert len(data) < params_bytes + 100_000
    back = pickle.loads(data)
    np.testing.assert_array_equal(back.encode(images), tiny_codes)


def test_random_init_is_reproducible_from_its_fingerprint(tiny):
    fp = tiny.fingerprint()
    assert {"sha256", "preset", "source", "random_init"} <= set(fp)
    assert (fp["preset"], fp["random_init"], fp["seed"], fp["source"]) == ("tiny", True, 0, "random_init")
    rebuilt = ImageTokenizer.random(fp["preset"], fp["seed"])
    assert rebuilt.fingerprint()["sha256"] == fp["sha256"]
    assert ImageTokenizer.random("tiny", 1).fingerprint()["sha256"] != fp["sha256"]


@pytest.mark.realdata
def test_random_tiny_spreads_real_images_over_many_codes(tiny):
    if not os.path.isdir(IMAGES):
        pytest.skip(f"real sample images not found at {IMAGES}")
    from lwmkit.tokenizers.vision import load_image

    paths = sorted(p for p in os.listdir(IMAGES) if p.endswith(".png"))
    imgs = np.stack([load_image(open(os.path.join(IMAGES, p), "rb").read(), name=p) for p in paths])
    codes = tiny.encode(imgs)
    per_image = [len(np.unique(c)) for c in codes]
    assert len(np.unique(codes)) >= 300 and min(per_image) >= 20, per_image


def test_an_xla_that_rejects_the_cpu_options_falls_back_to_the_default_compile(tiny, images, tiny_codes, monkeypatch):
    from lwmkit.tokenizers import vqgan

    monkeypatch.setattr(vqgan, "CPU_COMPILER_OPTIONS", {"xla_cpu_experimental_ynn_fusion_type": "NO_SUCH_FUSION"})
    fresh = pickle.loads(pickle.dumps(tiny))  # no compiled functions yet
    np.testing.assert_array_equal(fresh.encode(images[:4]), tiny_codes[:4])
