"""inversion.models.decoders: the MSE up-sampling decoder baseline x_hat = f(h) (eq. 3, Dosovitskiy & Brox 2016)."""

import inspect
import re

import pytest
import torch

from inversion import data
from inversion.models.classifier import Classifier, compute_features
from inversion.models.decoders import DecoderConfig, MSEDecoder, evaluate_mse, load_decoder, train_decoder

SHAPES = [
    ((256,), (1, 28, 28)),  # MNIST FC3
    ((10,), (3, 32, 32)),  # CIFAR LOGITS
    ((256,), (1, 40, 40)),  # affNIST FC3
    ((7,), (1, 30, 30)),  # a size not divisible by 4
    ((32, 12, 12), (1, 28, 28)),  # MNIST CONV1
    ((32, 4, 4), (1, 28, 28)),  # MNIST CONV2
    ((128, 5, 5), (3, 32, 32)),  # CIFAR CONV2
    ((32, 7, 7), (1, 40, 40)),  # affNIST CONV2
]


@pytest.mark.parametrize("context_shape, image_shape", SHAPES, ids=[f"{c}->{i}" for c, i in SHAPES])
def test_output_shapes(context_shape, image_shape):
    torch.manual_seed(0)
    decoder = MSEDecoder(context_shape, image_shape, n_filters=8)
    h = torch.randn(3, *context_shape) * 5
    y = decoder(h)
    assert y.shape == (3, *image_shape) and y.dtype == torch.float32
    assert (y >= 0).all() and (y <= 1).all()
    x = decoder.reconstruct(h, batch_size=2)
    assert x.shape == (3, *image_shape) and x.dtype == torch.uint8
    torch.testing.assert_close(x, (y * 255).round().to(torch.uint8), rtol=0, atol=1)
    images = torch.randint(0, 256, (3, *image_shape), dtype=torch.uint8)
    loss = decoder.mse(h, images)
    assert loss.ndim == 0
    torch.testing.assert_close(loss, ((y - images.float() / 255) ** 2).mean())


def test_init_from_data_predicts_the_mean_pixel():
    images = torch.randint(0, 100, (16, 3, 8, 8), dtype=torch.uint8)
    h = torch.randn(16, 5) * 10 + 3
    decoder = MSEDecoder((5,), (3, 8, 8), n_filters=4)
    decoder.init_from_data(h, images)
    torch.testing.assert_close(decoder.h_mean, h.mean(0))
    torch.testing.assert_close(decoder.h_std, h.std(0))
    mean_pixel = images.float().mean((0, 2, 3)) / 255
    torch.testing.assert_close(torch.sigmoid(decoder.out.bias), mean_pixel)
    spatial = MSEDecoder((2, 3, 3), (1, 8, 8), n_filters=4)
    maps = torch.randn(16, 2, 3, 3)
    maps[:, 1] = 0  # a dead channel must not divide by zero
    spatial.init_from_data(maps, images[:, :1])
    torch.testing.assert_close(spatial.h_mean.flatten(), maps.mean((0, 2, 3)))
    assert spatial.h_std.flatten()[1] == 1 and torch.isfinite(spatial(maps)).all()


@pytest.fixture(scope="module")
def mnist_small():
    images, _ = data.load("mnist", "train")
    return images[:320]


def test_training_beats_the_mean_image(mnist_small, tmp_path):
    train_x, valid_x = mnist_small[:256], mnist_small[256:]
    pixels = train_x.float() / 255
    mean_image_mse = ((pixels - pixels.mean(0)) ** 2).mean().item()

    # Vector h: a fixed random 32-d projection of the image.
    proj = torch.randn(784, 32, generator=torch.Generator().manual_seed(0)) / 28
    vec = lambda x: (x.float() / 255).flatten(1) @ proj
    # Spatial h: CONV1 of an untrained MNIST classifier, [32, 12, 12].
    torch.manual_seed(0)
    classifier = Classifier((1, 28, 28))
    conv1 = lambda x: compute_features(classifier, x, "conv1")
    for name, encode in (("vector", vec), ("spatial", conv1)):
        torch.manual_seed(0)
        h, hv = encode(train_x), encode(valid_x)
        decoder = MSEDecoder(h.shape[1:], (1, 28, 28), n_filters=16)
        config = DecoderConfig(steps=150, batch_size=32, lr=2e-3, eval_every=50, patience=0)
        result = train_decoder(decoder, h, train_x, tmp_path / name, config, valid=(hv, valid_x), progress=False)
        final = evaluate_mse(decoder, h, train_x)
        print(f"\n{name}: train MSE {final:.4f} vs mean image {mean_image_mse:.4f} ({result.seconds:.1f}s)")
        assert final < 0.5 * mean_image_mse, name
        assert -result.best_score == pytest.approx(evaluate_mse(decoder, hv, valid_x), rel=1e-5)
        rebuilt = load_decoder(tmp_path / name)  # config + weights + context statistics
        torch.testing.assert_close(rebuilt(hv), decoder(hv))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: d(torch.randn(2, 16)), r"shape \[N, 8\]"),
        (lambda d: d(torch.randn(8)), r"shape \[N, 8\]"),
        (lambda d: d(torch.zeros(2, 8, dtype=torch.int64)), "floating-point"),
        (lambda d: d.mse(torch.randn(2, 8), torch.zeros(2, 1, 16, 16, dtype=torch.uint8)), r"\[N, 1, 12, 12\]"),
        (lambda d: d.mse(torch.randn(2, 8), torch.full((2, 1, 12, 12), 255.0)), r"scaled to \[0, 1\]"),
        (lambda d: d.mse(torch.randn(3, 8), torch.zeros(2, 1, 12, 12, dtype=torch.uint8)), "3 contexts but 2 images"),
        (lambda d: MSEDecoder((4, 4), (1, 12, 12)), "context_shape"),
        (lambda d: MSEDecoder((8,), (12, 12)), "image_shape"),
        (lambda d: train_decoder(d, torch.randn(4, 8), torch.zeros(3, 1, 12, 12, dtype=torch.uint8), "/nonexistent",
                                 DecoderConfig(steps=1)), "4 contexts but 3 images"),
    ],
)
def test_bad_inputs(make, match):
    with pytest.raises(ValueError, match=match):
        make(MSEDecoder((8,), (1, 12, 12), n_filters=4))


def test_resumed_training_matches_uninterrupted(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 1, 12, 12), dtype=torch.uint8, generator=g)
    h = torch.randn(48, 8, generator=g) * 3 + 1

    def run(workdir, steps, seed):
        torch.manual_seed(seed)
        decoder = MSEDecoder((8,), (1, 12, 12), n_filters=4)
        train_decoder(decoder, h, images, workdir, DecoderConfig(steps=steps, batch_size=8), checkpoint_every=5,
                      progress=False)
        return decoder

    run(tmp_path / "a", 10, seed=0)
    resumed = run(tmp_path / "a", 20, seed=99)  # fresh random weights, overwritten by the checkpoint
    reference = run(tmp_path / "b", 20, seed=0)
    for k, v in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    with pytest.raises(ValueError, match="different run"):
        train_decoder(MSEDecoder((8,), (1, 12, 12), n_filters=5), h, images, tmp_path / "a", DecoderConfig(steps=30),
                      progress=False)


def test_config_rejects_bad_values_naming_the_field():
    bad = [("n_filters", 0), ("steps", -1), ("batch_size", 0), ("lr", 0), ("eval_every", -5), ("patience", -1),
           ("steps", 2.5), ("batch_size", "64"), ("n_filters", False), ("seed", None)]
    for name, value in bad:
        with pytest.raises(ValueError, match=rf"DecoderConfig\.{name} must be .*, got {re.escape(repr(value))}"):
            DecoderConfig(**{name: value})
    DecoderConfig(steps=0, eval_every=0, patience=0, lr=1)  # the boundaries are fine


def test_constructor_default_is_the_config_default():
    assert inspect.signature(MSEDecoder.__init__).parameters["n_filters"].default == DecoderConfig.n_filters == 64
    assert MSEDecoder.from_config((8,), (1, 12, 12), DecoderConfig(n_filters=5)).config["n_filters"] == 5
