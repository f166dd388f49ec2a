"""The other inverters' stages (inversion.pipeline.inverters): their plan shares §5.1's classifier and
PixelCNN++, bad settings fail at load, and each family trains and is evaluated end to end on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inversion import data, pipeline
from inversion.pipeline import inverters
from inversion.pipeline.cache import Cache, iter_refs, ref
from inversion.pipeline.layers import layers_plan
from inversion.pipeline.schema import ConfigError


@pytest.fixture(scope="module")
def smoke():
    return pipeline.load_params("smoke")


def test_the_plan_shares_the_classifier_and_pixelcnn_of_section_5_1(smoke):
    plan = inverters.inverters_plan(smoke, "mnist")
    base = layers_plan(smoke, "mnist")
    assert plan["classifier"].key == base["classifier"].key
    assert plan["pixelcnn"]["fc3"]["nce"].key == base["layers"]["fc3"]["nce"].key
    for family in inverters.FAMILIES:
        for layer in smoke.section("layers").layers:  # the section names none: §5.1's
            m, e = plan["families"][family][layer]["model"], plan["families"][family][layer]["evaluation"]
            assert m.stage.name == f"{family}_inversion" and m.config["layer"] == layer
            assert e.deps["model"] is m and e.config["family"] == family
    refs = list(iter_refs(plan))
    assert len({r.dirname for r in refs}) == len(refs)


@pytest.mark.parametrize("override, message", [
    ({"inverters": {"families": ["flow", "diffusion"]}}, "unknown family 'diffusion'"),
    ({"inverters": {"layers": ["fc1"]}}, "are not §5.1 layers"),
    ({"inverters": {"layers": ["fc3"]}, "layers": {"layers": ["conv1", "logits"]}}, "are not §5.1 layers"),
    ({"inverters": {"datasets": ["fashion_mnist"]}, "layers": {"datasets": ["mnist"]}}, "must also be a §5.1 dataset"),
    ({"inverters": {"flow": {"n_scales": 0}}}, "n_scales"),
    ({"inverters": {"vae": {"latnet_dim": 3}}}, "did you mean 'latent_dim'"),
    ({"inverters": {"evaluation": {"iwae_k": 0}}}, "iwae_k must be >= 1"),
])
def test_bad_settings_fail_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        pipeline.load_params("smoke", override)


def test_every_family_trains_and_is_evaluated(tmp_path, smoke):
    """FC3 of the smoke classifier: each family's model trains, its evaluation gives a finite bound (none for
    the GAN), samples of the right shape and the Table 1 quantities."""
    torch.set_num_threads(1)
    cache = Cache(smoke, root=tmp_path, log=lambda m: None)
    plan = inverters.inverters_plan(smoke, "mnist")
    n, k = smoke.section("inverters").evaluation.n_images, smoke.section("inverters").evaluation.n_samples
    for family in inverters.FAMILIES:
        ev = cache.result(plan["families"][family]["fc3"]["evaluation"])
        m = ev.metrics
        assert m["family"] == family and m["layer"] == "fc3"
        assert ("bound_nats" in m) == (family != "gan")
        if family != "gan":
            assert -784 * 8 < m["bound_nats"] < 0 and m["bits_per_dim"] > 0
        if family == "vae":
            assert m["iwae_nats"] >= m["bound_nats"] - 3 * m["bound_stderr"]
        samples = ev.arrays("samples.npz")["samples"]
        assert samples.shape == (n, k, 1, 28, 28) and samples.dtype.name == "uint8"
        assert 0 <= m["class_agreement"] <= 1 and m["im_s"] > 0 and m["diversity"] >= 0
        if family == "flow":  # the swap grid: an image's residual decoded with its own h gives the image back
            swap = ev.arrays("swap.npz")
            mm = min(n, inverters.SWAP_IMAGES)
            assert swap["images"].shape == (mm, mm, 1, 28, 28)
            x_test, _ = data.load("mnist", "test")
            for i in range(mm):
                assert np.array_equal(swap["images"][i, i], x_test[i].numpy())
    with pytest.raises(ValueError, match="was given a flow_inversion result"):
        bad = ref(inverters.EVALUATE, {"family": "vae", "n_test": 4, "n_images": 1, "n_samples": 1},
                  classifier=plan["classifier"], model=plan["families"]["flow"]["fc3"]["model"])
        cache.result(bad)
    svae = cache.result(plan["supervised_vae"]).metrics
    assert 0 <= svae["test_accuracy"] <= 1 and svae["elbo_nats"] < 0


def test_without_its_own_layers_the_section_follows_section_5_1():
    P = pipeline.load_params("smoke", {"layers": {"layers": ["conv1", "logits"]}})
    plan = inverters.inverters_plan(P, "mnist")
    assert list(plan["pixelcnn"]) == ["conv1", "logits"]
    assert all(list(per_layer) == ["conv1", "logits"] for per_layer in plan["families"].values())


def test_replicate_seeds_add_models_that_differ_only_in_their_seed():
    P = pipeline.load_params("smoke", {"inverters": {"per_layer": {"fc3": {"replicate_seeds": [1, 2]}}}})
    plan = inverters.inverters_plan(P, "mnist")
    assert list(plan["replicates"]) == ["fc3"]  # only where the layer asks for them
    reps = plan["replicates"]["fc3"]
    assert set(reps) == {"pixelcnn", "flow", "vae"}  # the GAN has no bound to spread
    main_inv = plan["pixelcnn"]["fc3"]["inversion"]
    for seed, nce in reps["pixelcnn"].items():
        inv = nce.deps["inversion"]
        assert {k: v for k, v in inv.config.items() if k != "seed"} == \
            {k: v for k, v in main_inv.config.items() if k != "seed"} and inv.config["seed"] == seed
    for family in ("flow", "vae"):
        main = plan["families"][family]["fc3"]["model"]
        for seed, ev in reps[family].items():
            m = ev.deps["model"]
            assert m.config == {**main.config, "seed": seed} and ev.config == plan["families"][family]["fc3"]["evaluation"].config
    refs = list(iter_refs(plan))
    assert len({r.dirname for r in refs}) == len(refs)


@pytest.mark.parametrize("override, message", [
    ({"inverters": {"replicate_seeds": [1, 1]}}, "repeats a seed"),
    ({"inverters": {"replicate_seeds": [0]}}, "seed 0 is the main model"),
])
def test_bad_replicate_seeds(override, message):
    with pytest.raises(ConfigError, match=message):
        inverters.inverters_plan(pipeline.load_params("smoke", override), "mnist")
