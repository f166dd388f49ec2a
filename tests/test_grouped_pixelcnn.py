"""Several PixelCNN++ models trained at once behave exactly like the same models trained one by one."""

import sys
from pathlib import Path

import pytest
import torch

from inversion.models.pixelcnn import PixelCNNConfig, PixelCNNpp, train_pixelcnn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # the grouped trainer lives in bench/
from grouped_pixelcnn import PixelCNNGroup, train_pixelcnn_group  # noqa: E402


def models(k, context_shape=(3,), seed=0):
    torch.manual_seed(seed)
    return [PixelCNNpp((1, 6, 6), context_shape, n_filters=8, n_resnet=1, dropout=0.0).double() for _ in range(k)]


def test_group_log_prob_equals_each_model():
    ms = models(3, (2, 3, 3))
    g = PixelCNNGroup(ms).eval()
    x = torch.randint(0, 256, (5, 1, 6, 6), dtype=torch.uint8)
    h = torch.randn(5, 3, 2, 3, 3, dtype=torch.float64)
    lp = g.sub_pixel_log_prob(x, h)
    assert lp.shape == (3, 5, 1, 6, 6)
    for k, m in enumerate(ms):
        assert torch.allclose(lp[k], m.eval().log_prob(x, h[:, k], reduce=False), rtol=0, atol=1e-12)


def test_group_training_equals_training_one_by_one(tmp_path):
    x = torch.randint(0, 256, (48, 1, 6, 6), dtype=torch.uint8)
    h = torch.randn(48, 2, 3, dtype=torch.float64)
    config = PixelCNNConfig(steps=5, batch_size=16)
    singles = models(2)
    for k, m in enumerate(singles):
        train_pixelcnn(m, x, h[:, k], tmp_path / f"single{k}", config, progress=False)
    g = PixelCNNGroup(models(2))
    train_pixelcnn_group(g, x, h, tmp_path / "group", config, progress=False)
    for single, grouped in zip(singles, g.unstack()):
        for (name, a), b in zip(single.state_dict().items(), grouped.state_dict().values()):
            assert torch.allclose(a, b, rtol=0, atol=1e-9), name
        assert not torch.equal(single.out.v, models(1)[0].out.v)  # training did move the weights


def test_group_rejects_mixed_architectures_and_bad_contexts():
    a = PixelCNNpp((1, 6, 6), (3,), n_filters=8, n_resnet=1)
    b = PixelCNNpp((1, 6, 6), (4,), n_filters=8, n_resnet=1)
    with pytest.raises(ValueError, match="one architecture"):
        PixelCNNGroup([a, b])
    g = PixelCNNGroup([a, a])
    x = torch.zeros(2, 1, 6, 6, dtype=torch.uint8)
    with pytest.raises(ValueError, match="one per model"):
        g.sub_pixel_log_prob(x, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="needs a context"):
        g.sub_pixel_log_prob(x, None)
