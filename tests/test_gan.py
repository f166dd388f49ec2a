"""inversion.models.gan: the feedforward GAN inverter G(h, z) (after Teterwak et al. 2021), its projection
discriminator with spectral norm, and its resumable two-optimiser loop ``train_gan``.

Everything runs on 1x16x16 images of one or two Gaussian blobs and a tiny untrained Classifier (CONV1
[4, 6, 6], CONV2 [8, 1, 1], FC3 [16], LOGITS [10]): its layers are deterministic functions of the image, which
is all an inverter needs, and a step costs milliseconds on one thread.
"""

import inspect
import math
import re

import pytest
import torch

from inversion.models.classifier import Classifier, compute_features
from inversion.models.gan import (NORMS, Discriminator, GANConfig, Generator, evaluate_inversion, load_generator,
                                  spectral_norms, train_gan)

SHAPE = (1, 16, 16)
TINY = dict(z_dim=4, n_filters=8, embed_dim=16)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions run fastest on one thread, and the test machine's two cores are shared."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def blobs(n: int, seed: int = 0) -> torch.Tensor:
    """uint8 [n, 1, 16, 16]: two Gaussian blobs of random centre, width and brightness per image."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    centre = torch.rand(n, 2, 2, generator=g) * 10 + 3
    width = torch.rand(n, 2, generator=g) * 2 + 1.5
    ink = torch.rand(n, 2, generator=g) * 0.5 + 0.5
    img = sum(ink[:, k, None, None] * torch.exp(-((yy - centre[:, k, 0, None, None]) ** 2
                                                  + (xx - centre[:, k, 1, None, None]) ** 2)
                                                 / (2 * width[:, k, None, None] ** 2)) for k in range(2))
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)[:, None]


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return Classifier(SHAPE, n_filters=(4, 8), fc_units=16, dropout=0.0).eval()


@pytest.fixture(scope="module")
def data(classifier):
    x = blobs(128)
    return x, {layer: compute_features(classifier, x, layer) for layer in ("conv1", "conv2", "fc3", "logits")}


def make(context_shape, seed=0, **arch):
    torch.manual_seed(seed)
    arch = {**TINY, **arch}
    return (Generator(context_shape, SHAPE, **arch),
            Discriminator(context_shape, SHAPE, n_filters=arch["n_filters"]))


def config(**kw):
    return GANConfig(**{**TINY, "batch_size": 16, "lr_g": 2e-3, "lr_d": 2e-3, **kw})


@pytest.fixture(scope="module")
def trained(classifier, data, tmp_path_factory):
    """60 generator updates inverting FC3, with all three losses."""
    x, h = data
    G, D = make((16,))
    workdir = tmp_path_factory.mktemp("gan_fc3")
    flags = [p.requires_grad for p in classifier.parameters()]
    classifier.train()  # train_gan runs it in eval mode, then leaves it as it found it
    result = train_gan(G, D, classifier, "fc3", x, h["fc3"], workdir, config(steps=60), progress=False)
    assert [p.requires_grad for p in classifier.parameters()] == flags and classifier.training
    classifier.eval()
    return G, D, result, workdir


@pytest.mark.parametrize("context_shape", [(16,), (10,), (4, 6, 6), (8, 1, 1)], ids=str)
@pytest.mark.parametrize("norm", NORMS)
def test_output_shapes_and_samples(context_shape, norm):
    G, D = make(context_shape, norm=norm)
    h = torch.randn(3, *context_shape) * 5
    z = G.draw_z(3, torch.Generator().manual_seed(0))
    G.eval()
    y = G(h, z)
    assert y.shape == (3, *SHAPE) and y.dtype == torch.float32 and (y >= 0).all() and (y <= 1).all()
    s = G.sample(h, z=z, batch_size=2)
    assert s.dtype == torch.uint8 and torch.equal(s, (y * 255).round().to(torch.uint8))
    many = G.sample(h, 4, generator=torch.Generator().manual_seed(1))
    assert many.shape == (12, *SHAPE)
    again = G.sample(h.repeat_interleave(4, 0), z=G.draw_z(12, torch.Generator().manual_seed(1)))
    assert torch.equal(many, again)  # row i * n_per_h + j is the j-th sample of h[i]
    assert D(s, h).shape == (3,)


def test_short_run_losses_finite_and_feature_distance_falls(trained):
    _, _, result, _ = trained
    assert result.step == 60 and len(result.history) == 60
    for row in result.history:
        for key in ("d_loss", "d_real", "d_fake", "g_loss", "pixel", "feature", "adversarial"):
            assert math.isfinite(row[key]), (row["step"], key)
    feature = [row["feature"] for row in result.history]
    first, last = sum(feature[:10]) / 10, sum(feature[-10:]) / 10
    print(f"\nfeature loss: first 10 steps {first:.4f}, last 10 {last:.4f} ({result.seconds:.1f}s)")
    assert last < 0.8 * first


def test_conditioning_matters(trained, classifier, data):
    """G(true h) lands nearer h in FC3 than G(another image's h) does."""
    G, _, _, _ = trained
    x, h = data
    h = h["fc3"][:64]
    shuffled = h[torch.randperm(64, generator=torch.Generator().manual_seed(0))]
    noise = torch.Generator().manual_seed(0)
    l1 = lambda context: (compute_features(classifier, G.sample(context, generator=noise), "fc3") - h  # noqa: E731
                          ).abs().flatten(1).mean(1).mean().item()
    true, other = l1(h), l1(shuffled)
    print(f"\nFC3 L1 to h: G(h) {true:.4g}, G(shuffled h) {other:.4g}")
    assert true < 0.75 * other


def test_spectral_norm_bounds_the_discriminator(trained):
    _, D, _, _ = trained
    sigmas = spectral_norms(D)
    assert len(sigmas) == 8  # five convs of phi, psi, two layers of the embedding: every layer
    assert all(0.95 < s < 1.05 for s in sigmas.values()), sigmas
    raw = [torch.linalg.matrix_norm(m.parametrizations.weight.original.detach().flatten(1), ord=2).item()
           for m in D.modules() if hasattr(m, "parametrizations")]
    assert max(abs(s - 1) for s in raw) > 0.1  # the raw weights are not themselves normalised
    assert spectral_norms(make((16,))[1]).keys() == sigmas.keys()


@pytest.mark.parametrize("layer", ["conv1", "conv2", "logits"])
def test_other_layers_train(layer, classifier, data, tmp_path):
    x, h = data
    G, D = make(h[layer].shape[1:])
    result = train_gan(G, D, classifier, layer, x, h[layer], tmp_path, config(steps=8), progress=False)
    assert all(math.isfinite(row["g_loss"]) and math.isfinite(row["d_loss"]) for row in result.history)


def test_extra_feature_layers_and_no_discriminator(classifier, data, tmp_path):
    x, h = data
    G, D = make((16,))
    before = {k: v.clone() for k, v in D.state_dict().items() if not k.startswith("h_")}
    cfg = config(steps=5, feature_layers=["conv1", "logits"], adversarial_weight=0.0)
    result = train_gan(G, D, classifier, "fc3", x, h["fc3"], tmp_path, cfg, progress=False)
    assert all(math.isfinite(row["feature"]) and math.isnan(row["d_loss"]) for row in result.history)
    after = D.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # no discriminator was trained


def test_resumed_training_matches_uninterrupted(classifier, data, tmp_path):
    x, h = data
    cfg = lambda steps: config(steps=steps, norm="batch", d_steps=2)  # noqa: E731  (BN running stats, 2 D steps)

    def run(workdir, steps, seed):
        G, D = make((16,), seed=seed, norm="batch")
        result = train_gan(G, D, classifier, "fc3", x, h["fc3"], workdir, cfg(steps), checkpoint_every=3,
                           progress=False)
        return G, D, result

    run(tmp_path / "a", 5, seed=0)
    G1, D1, r1 = run(tmp_path / "a", 10, seed=99)  # fresh random weights, overwritten by the checkpoint
    G2, D2, r2 = run(tmp_path / "b", 10, seed=0)
    assert r1.resumed_from == 5 and r2.resumed_from == 0
    for a, b in ((G1, G2), (D1, D2)):
        for k, v in b.state_dict().items():
            assert torch.equal(a.state_dict()[k], v), k
    assert r1.history == r2.history
    rebuilt = load_generator(tmp_path / "a")
    G1.eval()
    z = rebuilt.draw_z(4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(rebuilt(h["fc3"][:4], z), G1(h["fc3"][:4], z), rtol=0, atol=0)
    with pytest.raises(ValueError, match="different run"):
        G, D = make((16,), norm="batch")
        train_gan(G, D, classifier, "fc3", x, h["fc3"], tmp_path / "a", config(steps=12, norm="batch", lr_g=1e-3),
                  progress=False)


def test_extreme_images_give_finite_numbers(classifier, tmp_path):
    """All-black and all-white images: constant contexts (zero spread), saturated inputs; nothing turns NaN."""
    x = torch.cat([torch.zeros(8, *SHAPE, dtype=torch.uint8), torch.full((8, *SHAPE), 255, dtype=torch.uint8)])
    for layer in ("fc3", "conv1"):
        h = compute_features(classifier, x, layer)
        G, D = make(h.shape[1:])
        G.eval()
        z = G.draw_z(16, torch.Generator().manual_seed(0))
        assert torch.isfinite(G(h, z)).all() and torch.isfinite(D(x, h)).all()
        result = train_gan(G, D, classifier, layer, x, h, tmp_path / layer, config(steps=3, batch_size=8),
                           progress=False)
        assert all(math.isfinite(v) for row in result.history for v in row.values())
        G.eval()
        assert torch.isfinite(G(h, z)).all() and torch.isfinite(D(x, h)).all()
        assert torch.isfinite(D(x.float() / 255, h)).all()


def test_non_finite_loss_names_the_step(classifier, data, tmp_path):
    x, h = data
    G, D = make((16,))
    with torch.no_grad():
        G.block1.conv1.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="at step 0"):
        train_gan(G, D, classifier, "fc3", x, h["fc3"], tmp_path, config(steps=3), progress=False)


def test_evaluate_inversion(trained, classifier, data):
    G, _, _, _ = trained
    x, h = data
    out = evaluate_inversion(G, classifier, "fc3", x[:32], h["fc3"][:32], n_per_h=3)
    assert set(out) == {"im_s", "im_nn", "class_agreement", "diversity", "pixel_l1"}
    assert 0 <= out["im_nn"] <= out["im_s"] and 0 <= out["class_agreement"] <= 1
    assert out["diversity"] > 0 and out["pixel_l1"] > 0  # z matters, and samples are not copies
    assert math.isnan(evaluate_inversion(G, classifier, "fc3", x[:4], h["fc3"][:4], n_per_h=1)["diversity"])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda G, D, c, x, h, w: G(torch.randn(2, 8), torch.randn(2, 4)), r"shape \[N, 16\]"),
        (lambda G, D, c, x, h, w: G(torch.randn(16), torch.randn(1, 4)), r"shape \[N, 16\]"),
        (lambda G, D, c, x, h, w: G(torch.zeros(2, 16, dtype=torch.int64), torch.randn(2, 4)), "floating-point"),
        (lambda G, D, c, x, h, w: G(torch.full((2, 16), float("nan")), torch.randn(2, 4)), "NaN or inf"),
        (lambda G, D, c, x, h, w: G(torch.randn(2, 16), torch.randn(2, 5)), r"z must have shape \[2, 4\]"),
        (lambda G, D, c, x, h, w: G(torch.randn(2, 16), torch.full((2, 4), float("inf"))), "z contains NaN"),
        (lambda G, D, c, x, h, w: G.sample(torch.randn(2, 16), 0), "n_per_h"),
        (lambda G, D, c, x, h, w: G.sample(torch.randn(2, 16), 2, z=torch.randn(2, 4)), r"z must have shape \[4, 4\]"),
        (lambda G, D, c, x, h, w: D(torch.zeros(2, 1, 12, 12, dtype=torch.uint8), torch.randn(2, 16)),
         r"shape \[N, 1, 16, 16\]"),
        (lambda G, D, c, x, h, w: D(torch.full((2, *SHAPE), 255.0), torch.randn(2, 16)), r"scaled to \[0, 1\]"),
        (lambda G, D, c, x, h, w: D(torch.zeros(2, *SHAPE, dtype=torch.int32), torch.randn(2, 16)), "uint8"),
        (lambda G, D, c, x, h, w: D(torch.zeros(3, *SHAPE, dtype=torch.uint8), torch.randn(2, 16)),
         "2 contexts but 3 images"),
        (lambda G, D, c, x, h, w: Generator((4, 4), SHAPE), "context_shape"),
        (lambda G, D, c, x, h, w: Generator((8,), (16, 16)), "image_shape"),
        (lambda G, D, c, x, h, w: Generator((8,), (1, 6, 16)), "at least 8x8"),
        (lambda G, D, c, x, h, w: Generator((8,), SHAPE, norm="layer"), "norm must be one of"),
        (lambda G, D, c, x, h, w: train_gan(G, D, c, "fc3", x[:5], h["fc3"], w, config(steps=1)),
         "equally many"),
        (lambda G, D, c, x, h, w: train_gan(G, D, c, "fc9", x, h["fc3"], w, config(steps=1)),
         "unknown layer 'fc9'"),
        (lambda G, D, c, x, h, w: train_gan(G, D, c, "logits", x, h["fc3"], w, config(steps=1)),
         r"layer 'logits' has shape \(10,\)"),
        (lambda G, D, c, x, h, w: train_gan(G, D, c, "fc3", x, h["fc3"], w,
                                         config(steps=1, feature_layers=("conv7",))), "unknown layer 'conv7'"),
        (lambda G, D, c, x, h, w: train_gan(G, Discriminator((10,), SHAPE, 4), c, "fc3", x, h["fc3"], w,
                                         config(steps=1)), "disagree"),
        (lambda G, D, c, x, h, w: train_gan(G, D, c, "fc3", x.float(), h["fc3"], w, config(steps=1)),
         r"scaled to \[0, 1\]"),
    ],
)
def test_bad_inputs(call, match, classifier, data, tmp_path):
    x, h = data
    G, D = make((16,))
    with pytest.raises(ValueError, match=match):
        call(G, D, classifier, x, h, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_config_rejects_bad_values_naming_the_field():
    bad = [("z_dim", 0), ("n_filters", 0), ("embed_dim", -1), ("norm", "layer"), ("pixel_loss", "l2"),
           ("pixel_weight", -1.0), ("feature_weight", float("nan")), ("adversarial_weight", float("inf")),
           ("feature_layers", ("conv1", "conv1")), ("feature_layers", "conv1"), ("steps", -1), ("steps", 2.5),
           ("batch_size", 0), ("batch_size", "64"), ("lr_g", 0), ("lr_d", -1e-4), ("betas", (0.0,)),
           ("betas", (0.0, 1.0)), ("d_steps", 0), ("n_filters", False), ("seed", None)]
    for name, value in bad:
        with pytest.raises(ValueError, match=rf"GANConfig\.{name} must be .*, got {re.escape(repr(value))}"):
            GANConfig(**{name: value})
    with pytest.raises(ValueError, match="all 0"):
        GANConfig(pixel_weight=0, feature_weight=0, adversarial_weight=0)
    c = GANConfig(steps=0, pixel_weight=0, adversarial_weight=0, lr_g=1, betas=[0.5, 0.99], feature_layers=["conv1"])
    assert c.betas == (0.5, 0.99) and c.feature_layers == ("conv1",)  # lists from YAML become tuples
    assert set(c.architecture()) == set(GANConfig.ARCHITECTURE) and not set(c.training()) & set(c.architecture())


def test_constructor_defaults_are_the_config_defaults():
    params = inspect.signature(Generator.__init__).parameters
    for name in GANConfig.ARCHITECTURE:
        assert params[name].default == getattr(GANConfig, name), name
    assert inspect.signature(Discriminator.__init__).parameters["n_filters"].default == GANConfig.n_filters
    G = Generator.from_config((8,), SHAPE, GANConfig(z_dim=3, n_filters=5, embed_dim=7, norm="instance"))
    assert (G.config["z_dim"], G.config["n_filters"], G.config["embed_dim"], G.config["norm"]) == (3, 5, 7, "instance")
    assert Discriminator.from_config((8,), SHAPE, GANConfig(n_filters=5)).config["n_filters"] == 5
