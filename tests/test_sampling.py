"""Incremental (cached) sampling: the compiled graph computes PixelCNNpp.forward, and samples equal the
naive sampler's exactly in float64."""

import pytest
import torch

from inversion.pixelcnn import PixelCNNpp
from inversion.pixelcnn_cached import CachedGraph, sample_cached
from test_pixelcnn import CASES, CONTEXTS, make_model, random_context


@pytest.mark.parametrize("likelihood,C", CASES)
@pytest.mark.parametrize("context_shape", CONTEXTS)
@pytest.mark.parametrize("H,W", [(7, 6), (5, 9)])
def test_compiled_graph_computes_forward(likelihood, C, context_shape, H, W):
    """Node by node over whole images, the gather tables give the network's output (float64, to rounding):
    windows, strides, odd sizes, the transposed convolutions' crops and the shifts are all encoded right."""
    m = make_model(likelihood, C, context_shape, H, W)
    x = torch.randint(0, 256, (3, C, H, W), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    h = random_context(context_shape, 3)
    with torch.no_grad():
        expected = m.forward(m._scale(x), h)
    got = CachedGraph(m).forward_all(x, h)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-10 * expected.abs().max()


@pytest.mark.parametrize("likelihood,C", CASES)
@pytest.mark.parametrize("context_shape", CONTEXTS)
def test_cached_sampler_equals_naive(likelihood, C, context_shape):
    m = make_model(likelihood, C, context_shape, 5, 4)
    noise = m.draw_noise(6, torch.Generator().manual_seed(3))
    h = random_context(context_shape, 6)
    a = m.sample(h, n=6, noise=noise, method="naive")
    b = m.sample(h, n=6, noise=noise, method="cached")
    assert b.dtype == torch.uint8 and b.shape == (6, C, 5, 4)
    assert torch.equal(a, b)
    assert len(torch.unique(a)) > 10


@pytest.mark.parametrize("n_resolutions", [1, 2, 3])
def test_cached_sampler_every_depth(n_resolutions):
    """One, two and three resolutions, two resnets per block, a 9x7 image (odd sizes at every level)."""
    torch.manual_seed(0)
    m = PixelCNNpp((1, 9, 7), (4,), n_filters=6, n_resnet=2, n_resolutions=n_resolutions).double().eval()
    m.data_init(torch.randint(0, 256, (8, 1, 9, 7), dtype=torch.uint8), torch.randn(8, 4, dtype=torch.float64))
    with torch.no_grad():
        m.out.g.mul_(20.0)
    noise = m.draw_noise(4, torch.Generator().manual_seed(5))
    h = torch.randn(4, 4, dtype=torch.float64)
    assert torch.equal(m.sample(h, noise=noise, method="naive"), m.sample(h, noise=noise, method="cached"))


def test_every_activation_computed_once_and_nothing_read_early():
    """Buffers start as NaN: after sampling none is left (every position of every node was computed) and
    none reached the output (no position was read before it was written)."""
    m = make_model("logistic_mixture", 3, (4, 3, 3), 6, 5)
    graph = CachedGraph(m)
    noise = m.draw_noise(3, torch.Generator().manual_seed(2))
    x, bufs = graph._run(random_context((4, 3, 3), 3), noise)
    for node, buf in zip(graph.nodes, bufs):
        assert not torch.isnan(buf).any(), node.size
    # each position is scheduled exactly once: the runs of all steps partition the node's positions
    for node in graph.nodes[1:]:
        assert node.bounds[0] == 0 and node.bounds[-1] == node.size[0] * node.size[1]
        assert sorted(node.order.tolist()) == list(range(node.size[0] * node.size[1]))


def test_chunks_give_the_same_images():
    m = make_model("softmax", 1, (5,), 5, 4)
    noise = m.draw_noise(7, torch.Generator().manual_seed(4))
    h = random_context((5,), 7)
    whole = sample_cached(m, h, noise)
    per_two = sample_cached(m, h, noise, max_bytes=2 * CachedGraph(m).bytes_per_image())
    assert torch.equal(whole, per_two)


def test_a_non_causal_network_is_refused():
    """If a convolution looked at the current row, the output at a pixel would depend on that pixel: the
    compiler sees it in the ready steps and refuses to sample."""
    m = make_model("softmax", 1, None, 5, 4)
    m.u_init.pad = (1, 1, 0, 1)  # no top padding: output row i reads input rows i and i + 1
    with pytest.raises(RuntimeError, match="not causal"):
        m.sample(n=2, method="cached")
