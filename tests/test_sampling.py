"""Sampling: the compiled graph is the network forward computes (both are PixelCNNpp.walk), and every
sampler draws the same images from the same noise (exactly so in float64)."""

import pytest
import torch

from inversion.models.pixelcnn import DownRightShiftedDeconv, DownShiftedDeconv, EagerOps, GatedResnet, PixelCNNpp
from inversion.models.sampling import CachedGraph, GraphOps, draw, sample, sample_cached
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
        expected = m.forward(m.scale(x), h)
    got = CachedGraph(m).forward_all(x, h)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-10 * expected.abs().max()


def walk_layers(m):
    """The modules PixelCNNpp.walk hands to its operations, in no particular order."""
    return ([m.u_init, m.ul_init_down, m.ul_init_right, m.out, *m.downsample_u, *m.downsample_ul, *m.upsample_u,
             *m.upsample_ul] + [b for blocks in (*m.up_u, *m.up_ul, *m.down_u, *m.down_ul) for b in blocks])


@pytest.mark.parametrize("n_resolutions,n_resnet,context_shape", [(1, 1, None), (2, 2, (3,)), (3, 1, (2, 4, 4)),
                                                                  (3, 3, (5,))])
def test_forward_and_graph_come_from_the_same_walk(n_resolutions, n_resnet, context_shape):
    """The layers forward calls, in the order it calls them, are the layers the graph's nodes compute, in
    node order; and the node count is what the walk's operations add up to."""
    torch.manual_seed(0)
    m = PixelCNNpp((1, 9, 7), context_shape, n_filters=4, n_resnet=n_resnet, n_resolutions=n_resolutions).eval()
    called = []
    hooks = [mod.register_forward_hook(lambda mod, args, out: called.append(mod)) for mod in walk_layers(m)]
    with torch.no_grad():
        m(torch.zeros(2, 1, 9, 7), random_context(context_shape, 2, torch.float32))
    for hook in hooks:
        hook.remove()
    graph = CachedGraph(m)
    from_nodes = []
    for node in graph.nodes[1:]:
        if node.layer is not None and (not from_nodes or from_nodes[-1] is not node.layer):
            from_nodes.append(node.layer)  # a gated resnet is two nodes of one layer
    assert [id(mod) for mod in from_nodes] == [id(mod) for mod in called]
    assert len(called) == len(walk_layers(m))  # every layer once
    # count the operations of the walk and what each adds to the graph
    counts = dict.fromkeys(("shifted_sum", "conv", "gated_resnet", "upsample", "output"), 0)

    class Counting(GraphOps):
        def __getattribute__(self, name):
            if name in counts:
                counts[name] += 1
            return super().__getattribute__(name)

    ops = Counting(m)
    m.walk(ops, None, None)
    resnets = sum(isinstance(mod, GatedResnet) for mod in called)
    assert counts["gated_resnet"] == resnets == 2 * n_resnet * n_resolutions * 2 + 2 * (n_resolutions - 1)
    assert counts["shifted_sum"] == 2 and counts["output"] == 1  # the two streams start; one output
    assert counts["conv"] == 2 * (n_resolutions - 1)  # downsampling
    assert counts["upsample"] == sum(isinstance(mod, (DownShiftedDeconv, DownRightShiftedDeconv)) for mod in called)
    # the input, the u start (a conv and a sum), the ul start (two convs and a sum), two nodes per gated
    # resnet, one per conv, upsampling and the output
    expected_nodes = 1 + (1 + 1) + (2 + 1) + 2 * counts["gated_resnet"] + counts["conv"] + counts["upsample"] + 1
    assert len(ops.nodes) == len(graph.nodes) == expected_nodes


def test_forward_is_the_walk_on_tensors():
    """forward is walk(EagerOps): an operation changed in EagerOps changes forward (the walk is not bypassed)."""
    m = make_model("softmax", 1, (5,), 5, 4)
    x = torch.randint(0, 256, (2, 1, 5, 4), dtype=torch.uint8)
    h = random_context((5,), 2)

    class Doubled(EagerOps):
        def output(self, x, module):
            return 2 * super().output(x, module)

    with torch.no_grad():
        assert torch.equal(m.walk(EagerOps(), m.scale(x), h), m(m.scale(x), h))
        assert torch.equal(m.walk(Doubled(), m.scale(x), h), 2 * m(m.scale(x), h))


@pytest.mark.parametrize("likelihood,C", CASES)
@pytest.mark.parametrize("context_shape", CONTEXTS)
def test_cached_sampler_equals_naive(likelihood, C, context_shape):
    m = make_model(likelihood, C, context_shape, 5, 4)
    noise = m.draw_noise(6, torch.Generator().manual_seed(3))
    h = random_context(context_shape, 6)
    a = sample(m, h, n=6, noise=noise, method="naive")
    b = draw(m, h, n=6, noise=noise, method="cached")
    assert b.images.dtype == torch.uint8 and b.images.shape == (6, C, 5, 4) and b.network_passes is None
    assert torch.equal(a, b.images)
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
    assert torch.equal(sample(m, h, noise=noise, method="naive"), sample(m, h, noise=noise, method="cached"))


def test_every_activation_computed_once_and_nothing_read_early():
    """Buffers start as NaN: after sampling none is left (every position of every node was computed) and
    none reached the output (no position was read before it was written)."""
    m = make_model("logistic_mixture", 3, (4, 3, 3), 6, 5)
    graph = CachedGraph(m)
    noise = m.draw_noise(3, torch.Generator().manual_seed(2))
    state = graph.run(random_context((4, 3, 3), 3), noise)
    for node, buf in zip(graph.nodes, state.bufs):
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
        sample(m, n=2, method="cached")


def test_sampling_leaves_the_model_as_it_was():
    """No state on the model: the pass count comes back in the Draw, and train mode is restored."""
    m = make_model("softmax", 1, None, 4, 4).train()
    before = set(vars(m))
    d = draw(m, n=3, generator=torch.Generator().manual_seed(0), method="fixed_point")
    assert m.training and set(vars(m)) == before
    assert d.images.shape == (3, 1, 4, 4) and isinstance(d.network_passes, int)
