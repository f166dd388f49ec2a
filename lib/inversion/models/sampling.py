"""Sampling from a PixelCNN++ inversion model: every sampler, and the compiled incremental one.

    images = sample(model, h)                       # uint8 [N, C, H, W], one image per row of h
    d = draw(model, h, method="fixed_point")         # d.images, and d.network_passes it took

An autoregressive model is sampled one sub-pixel at a time, in raster order over pixels and R -> G -> B
inside a pixel (``PixelCNNpp.draw_from_output`` draws a pixel from the network output). Three samplers do
this with the same uniforms (``PixelCNNpp.draw_noise``) and return the same images:

- "naive": one network pass per pixel (H*W passes), keeping one output of each.
- "fixed_point": with the noise frozen, pass the whole image through the network and redraw every pixel
  from its output, until nothing changes. Pixel k is final once pixels < k are, so this ends in at most
  H*W passes and returns exactly the naive sampler's images; images that have converged leave the batch.
- "cached" (the default): one pixel at a time, but every activation is computed once, as soon as the pixels
  it depends on are drawn, and kept: about one network pass per image in all.

The cached sampler. The naive sampler runs the whole network for every pixel. But the network is causal,
so every activation depends on the image only up to some pixel in raster order: its *ready step*. Computed
once, right after that pixel is drawn, and kept, the activations of a whole image cost about one network
pass instead of H*W of them. This is the idea of Ramachandran et al. (2017), "Fast Generation for
Convolutional Autoregressive Models", who keep a queue of hidden states per layer. Here the network is
instead compiled into a flat graph, so that one loop serves every layer type:

- the graph is built by running the model's own description of itself, ``PixelCNNpp.walk``, with
  ``GraphOps``: the same eight operations ``forward`` runs on tensors (``EagerOps``), here recording nodes;
- a *node* is one convolution's output map together with the elementwise work around it (concat_elu
  before it; the context bias, the gate and the residual after it). Its values live channels-last in a
  buffer [N, positions + 1, channels] whose extra slot is all zeros and stands for padding;
- a *term* reads a node through a gather table [positions, taps]. The table encodes the kernel window,
  stride and padding of a convolution, the upsampling of a transposed one and the down/right shifts, so
  every convolution becomes a gather and one matmul;
- ready steps are propagated through the same tables (a max over taps), and each node's positions are
  sorted by them, so that step s computes, node after node, the run of positions that became ready when
  pixel s was drawn. The compiler also checks that the output at pixel p is ready before p is drawn: a
  causality check of the network, for free.

The images are the naive sampler's given the same noise: exactly so in float64 (tested). In float32 the
logits differ from F.conv2d's in their last bits (another summation order), so a sub-pixel whose uniform
falls within ~1e-6 of an edge of its CDF can come out one value apart; the benchmark counts such images.

Memory: every node keeps its whole map, about (sum of channels over nodes) x H x W floats per image
(9.8 MB per 28x28 image at 64 filters and 3 resnets in float32), so images are sampled in chunks that fit
``max_bytes``. Keeping only the rows still to be read (Ramachandran's queues) would cut this; it was not
needed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from inversion.models.pixelcnn import DownShiftedDeconv, PixelCNNpp, WNConv2d

METHODS = ("naive", "fixed_point", "cached")


# --------------------------------------------------------------------------------------------------
# The samplers, one entry point
# --------------------------------------------------------------------------------------------------
@dataclass
class Draw:
    images: torch.Tensor  # uint8 [N, C, H, W]
    network_passes: int | None  # whole-network passes: the fixed point's count, H*W naive, None cached (~1)


@torch.no_grad()
def draw(model: PixelCNNpp, context=None, *, n=None, noise=None, generator=None, method="cached",
         progress=False) -> Draw:
    """Draw images from p(x | context) with one of ``METHODS`` (see the module docstring).

    One image per row of ``context``, or ``n`` images of an unconditional model. ``noise`` [n, C + 1, H, W]
    (``model.draw_noise``) fixes the draw: the same noise gives the same images with every method; without
    it, fresh uniforms come from ``generator``. The model is sampled in eval mode and left in the mode it
    was in."""
    if context is not None:
        n = len(context)
    if n is None:
        raise ValueError("give a context (one image is drawn per row) or n for an unconditional model")
    context = model.on_device(model.check_context(context, n))
    if noise is None:
        noise = model.draw_noise(n, generator)
    C, H, W = model.image_shape
    if tuple(noise.shape) != (n, C + 1, H, W):
        raise ValueError(f"noise must have shape [{n}, {C + 1}, {H}, {W}] (see draw_noise), got {list(noise.shape)}")
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {METHODS}")
    noise = noise.to(model.device)
    was_training = model.training
    model.eval()
    try:
        if method == "naive":
            x, passes = _sample_naive(model, context, noise, progress), H * W
        elif method == "fixed_point":
            x, passes = _sample_fixed_point(model, context, noise, progress)
        else:
            x, passes = sample_cached(model, context, noise, progress), None
    finally:
        model.train(was_training)
    return Draw(images=x.to(torch.uint8), network_passes=passes)


def sample(model: PixelCNNpp, context=None, *, n=None, noise=None, generator=None, method="cached",
           progress=False) -> torch.Tensor:
    """Images drawn from p(x | context): uint8 [N, C, H, W]; ``draw(...).images`` (see ``draw``)."""
    return draw(model, context, n=n, noise=noise, generator=generator, method=method, progress=progress).images


def _sample_naive(model, context, noise, progress):
    C, H, W = model.image_shape
    x = torch.zeros(len(noise), C, H, W, dtype=torch.long, device=model.device)
    for i in tqdm(range(H * W), disable=not progress, desc="sample (naive)", leave=False):
        r, c = divmod(i, W)
        out = model.forward(model.scale(x), context)
        x[:, :, r, c] = model.draw_from_output(out[:, :, r : r + 1, c : c + 1],
                                               noise[:, :, r : r + 1, c : c + 1])[:, :, 0, 0]
    return x


def _sample_fixed_point(model, context, noise, progress):
    """(images, network passes taken)."""
    C, H, W = model.image_shape
    n = len(noise)
    x = torch.zeros(n, C, H, W, dtype=torch.long, device=model.device)
    active = torch.arange(n, device=model.device)
    bar = tqdm(total=n, disable=not progress, desc="sample (fixed point)", leave=False)
    passes = 0
    for _ in range(H * W + 1):
        if len(active) == 0:
            break
        passes += 1
        ctx = None if context is None else context[active]
        new = model.draw_from_output(model.forward(model.scale(x[active]), ctx), noise[active])
        changed = (new != x[active]).flatten(1).any(dim=1)
        x[active] = new
        bar.update(int((~changed).sum()))
        active = active[changed]
    bar.close()
    return x, passes


def sample_cached(model: PixelCNNpp, context, noise, progress=False, max_bytes=None) -> torch.Tensor:
    """The cached sampler without draw's checks: compile once, then sample in chunks whose caches fit
    ``max_bytes`` (default: 2 GiB on a CPU, a quarter of the free memory on a GPU). Images are long."""
    if max_bytes is None:
        max_bytes = torch.cuda.mem_get_info(model.device)[0] // 4 if model.device.type == "cuda" else 2**31
    graph = CachedGraph(model)
    n = len(noise)
    chunk = max(1, min(n, int(max_bytes // graph.bytes_per_image())))
    parts = []
    for i in range(0, n, chunk):
        ctx = None if context is None else context[i : i + chunk]
        parts.append(graph.sample(ctx, noise[i : i + chunk], progress=progress))
    return torch.cat(parts)


# --------------------------------------------------------------------------------------------------
# The compiled graph: nodes, terms and gather tables
# --------------------------------------------------------------------------------------------------
@dataclass
class _Term:
    src: int  # the node read
    taps: np.ndarray  # [positions, K]: flat positions in src; src's size means "the zero slot" (padding)
    weight: torch.Tensor | None  # [K * C_in, C_out], taps major; None: the values are copied (a shift, K = 1)
    pre: str = "none"  # applied to the gathered values: "none", "elu" or "concat_elu"


@dataclass
class _Node:
    size: tuple  # (H, W) of the map
    channels: int
    terms: list
    bias: torch.Tensor | None = None
    context_block: object = None  # the gated resnet whose projected context is added (a module), if any
    context_size: tuple | None = None
    residual: int | None = None  # a gated resnet's input x: out = x + a * sigmoid(b)
    layer: object = None  # the module of PixelCNNpp.walk this node computes (None: a sum of shifted maps)
    dep: np.ndarray | None = None  # ready step of each position (-1: needs no pixel)
    # filled by the schedule: positions sorted by ready step, and each term's taps in that order
    order: torch.Tensor | None = None
    sorted_taps: list = field(default_factory=list)
    bounds: np.ndarray | None = None  # bounds[s + 1] .. bounds[s + 2]: the run of positions ready at step s


def _grid(size):
    i, j = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
    return i.ravel(), j.ravel()


def _window_taps(in_size, out_size, kernel, stride, top, left):
    """A convolution: out(i, j) reads in(stride*i + a - top, stride*j + b - left) for every tap (a, b)."""
    Hi, Wi = in_size
    i, j = _grid(out_size)
    cols = []
    for a in range(kernel[0]):
        for b in range(kernel[1]):
            r, c = stride * i + a - top, stride * j + b - left
            ok = (r >= 0) & (r < Hi) & (c >= 0) & (c < Wi)
            cols.append(np.where(ok, r * Wi + c, Hi * Wi))
    return np.stack(cols, 1)


def _transposed_taps(in_size, out_size, kernel, left):
    """A stride-2 transposed convolution cropped to out_size from column ``left``: out(p, q) receives tap
    (a, b) of in(i, j) wherever 2i + a = p and 2j + b = q + left."""
    Hi, Wi = in_size
    p, q = _grid(out_size)
    cols = []
    for a in range(kernel[0]):
        for b in range(kernel[1]):
            r2, c2 = p - a, q + left - b
            r, c = r2 // 2, c2 // 2
            ok = (r2 % 2 == 0) & (c2 % 2 == 0) & (r >= 0) & (r < Hi) & (c >= 0) & (c < Wi)
            cols.append(np.where(ok, r * Wi + c, Hi * Wi))
    return np.stack(cols, 1)


def _shift_taps(size, down, right):
    """out(i, j) = in(i - down, j - right), zero outside: down_shift is (1, 0), right_shift (0, 1)."""
    return _window_taps(size, size, (1, 1), 1, down, right)


class GraphOps:
    """``PixelCNNpp.walk``'s operations as a compiler: each records the nodes and terms of what it would
    compute, and returns the index of its result node in place of a tensor (see ``EagerOps`` for what each
    operation computes; the weights are read once, here).

    Node 0 is the input: the image and its channel of ones. Each node also records ``layer``, the module of
    the walk it comes from (None for the sums of shifted maps), so a test can match the graph against the
    layers ``forward`` calls."""

    def __init__(self, model: PixelCNNpp):
        C, H, W = model.image_shape
        self.nodes = [_Node((H, W), C + 1, [], dep=np.arange(H * W))]

    def _add(self, node):
        self.nodes.append(node)
        return len(self.nodes) - 1

    def _conv_term(self, src, module, pre="none"):
        """A term for a DownShiftedConv, DownRightShiftedConv or a 1x1 WNConv2d; returns (term, bias, size)."""
        if isinstance(module, WNConv2d):
            wn, (left, right, top, bottom) = module, (0, 0, 0, 0)
        else:
            wn, (left, right, top, bottom) = module.conv, module.pad
        w = wn.weight().detach()
        kh, kw = w.shape[2:]
        Hi, Wi = self.nodes[src].size
        size = ((Hi + top + bottom - kh) // wn.stride + 1, (Wi + left + right - kw) // wn.stride + 1)
        taps = _window_taps((Hi, Wi), size, (kh, kw), wn.stride, top, left)
        return _Term(src, taps, w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]), pre), wn.b.detach(), size

    def _conv_node(self, src, module, pre="none"):
        term, bias, size = self._conv_term(src, module, pre)
        return self._add(_Node(size, term.weight.shape[1], [term], bias, layer=module))

    # ---- the walk's operations -------------------------------------------------------------------------
    def input(self, x):
        return 0

    def size(self, x):
        return self.nodes[x].size

    def context_pyramid(self, h, sizes):
        """The graph projects the context per node when sampling starts (``CachedGraph.contexts``)."""
        return [None] * len(sizes)

    def shifted_sum(self, x, parts):
        """A node per convolution, then one node summing their shifted maps (shifts are copying terms)."""
        convs = [(self._conv_node(x, module), down, right) for module, down, right in parts]
        size, ch = self.nodes[convs[0][0]].size, self.nodes[convs[0][0]].channels
        terms = [_Term(src, _shift_taps(size, d, r), None) for src, d, r in convs]
        return self._add(_Node(size, ch, terms))

    def conv(self, x, module):
        return self._conv_node(x, module)

    def gated_resnet(self, block, x, skips, h):
        """Two nodes: c1 = conv1(concat_elu(x)) [+ 1x1(concat_elu(cat(skips)))], then
        x + a * sigmoid(b) with (a, b) = conv2(concat_elu(c1)) + projected context."""
        size = self.nodes[x].size
        term, bias, _ = self._conv_term(x, block.conv1, "concat_elu")
        terms = [term]
        if block.skip is not None:
            # concat_elu(cat(s1, s2)) = elu(cat(s1, s2, -s1, -s2)): split the 1x1 weight's columns per source
            w = block.skip.weight().detach()[:, :, 0, 0]
            chans = [self.nodes[s].channels for s in skips]
            total, offset = sum(chans), 0
            for s, c in zip(skips, chans):
                cols = torch.cat([w[:, offset : offset + c], w[:, total + offset : total + offset + c]], 1)
                terms.append(_Term(s, _shift_taps(size, 0, 0), cols.T.contiguous(), "concat_elu"))
                offset += c
            bias = bias + block.skip.b.detach()
        c1 = self._add(_Node(size, term.weight.shape[1], terms, bias, layer=block))
        term2, bias2, _ = self._conv_term(c1, block.conv2, "concat_elu")
        return self._add(_Node(size, self.nodes[x].channels, [term2], bias2,
                               context_block=block if block.context is not None else None, context_size=size,
                               residual=x, layer=block))

    def upsample(self, x, module, size):
        w = module.deconv.weight().detach()  # [C_in, C_out, kh, kw]
        left = (module.kw - 1) // 2 if isinstance(module, DownShiftedDeconv) else 0
        taps = _transposed_taps(self.nodes[x].size, size, w.shape[2:], left)
        term = _Term(x, taps, w.permute(2, 3, 0, 1).reshape(-1, w.shape[1]))
        return self._add(_Node(size, w.shape[1], [term], module.deconv.b.detach(), layer=module))

    def output(self, x, module):
        """The last node: the distribution parameters of every pixel."""
        return self._conv_node(x, module, "elu")


@dataclass
class SamplerState:
    """One sampling run's tensors, updated in place: every node's buffer, the projected contexts, the images."""

    bufs: list  # per node: [N, positions + 1, channels]; the last slot is the zero padding
    contexts: list  # per node: [N, 1 or positions, channels] for a gated resnet's output node, else None
    x: torch.Tensor  # long [N, C, H, W]


class CachedGraph:
    """A PixelCNNpp compiled for incremental sampling (weights are read once, at compile time).

    ``sample`` draws images; ``start`` and ``steps`` are its two halves, public for runners that record the
    loop (bench/cuda_graph_sampler.py replays it as CUDA graphs)."""

    def __init__(self, model: PixelCNNpp):
        self.model = model
        ops = GraphOps(model)
        model.walk(ops, None, None)  # GraphOps.input stands the image in as node 0
        self.nodes = ops.nodes
        for node in self.nodes[1:]:
            assert all(len(t.taps) == node.size[0] * node.size[1] for t in node.terms)
        self._schedule()

    # ---- when each position can be computed ---------------------------------------------------------
    def _schedule(self):
        _, H, W = self.model.image_shape
        for node in self.nodes[1:]:
            dep = np.full(node.size[0] * node.size[1], -1)
            for t in node.terms:
                src = np.append(self.nodes[t.src].dep, -1)  # the zero slot needs nothing
                dep = np.maximum(dep, src[t.taps].max(1))
            if node.residual is not None:
                dep = np.maximum(dep, self.nodes[node.residual].dep)
            node.dep = dep
        out_dep = self.nodes[-1].dep
        if (out_dep >= np.arange(H * W)).any():
            p = int(np.argmax(out_dep >= np.arange(H * W)))
            raise RuntimeError(f"the network is not causal: its output at pixel {divmod(p, W)} depends on pixel "
                               f"{divmod(int(out_dep[p]), W)}")
        device = self.model.device
        steps = np.arange(-1, H * W + 1)
        for node in self.nodes:
            order = np.argsort(node.dep, kind="stable")
            node.order = torch.as_tensor(order, device=device)
            node.sorted_taps = [torch.as_tensor(t.taps[order], device=device) for t in node.terms]
            node.bounds = np.searchsorted(node.dep[order], steps, side="left")

    def bytes_per_image(self):
        item = torch.finfo(self.model.dtype).bits // 8
        return sum((n.size[0] * n.size[1] + 1) * n.channels for n in self.nodes) * item

    # ---- running -------------------------------------------------------------------------------------
    def contexts(self, context):
        """Each gated resnet's projected context: [N, 1, C] for a vector h, [N, positions, C] for a map."""
        out = [None] * len(self.nodes)
        for k, node in enumerate(self.nodes):
            if node.context_block is not None:
                h = context
                if h.dim() == 4:
                    h = F.interpolate(h, size=node.context_size, mode="bilinear", align_corners=False)
                proj = node.context_block.context(h)
                out[k] = proj[:, None] if proj.dim() == 2 else proj.flatten(2).transpose(1, 2)
        return out

    def start(self, context, n) -> SamplerState:
        """Fresh state for a sampling run: every buffer NaN (a read before a write would reach the output)
        but its zero slot, the input's channel of ones, the projected contexts, and every position that
        needs no pixel computed. The state's tensors are updated in place from here on."""
        m = self.model
        C, H, W = m.image_shape
        bufs = []
        for node in self.nodes:
            b = torch.full((n, node.size[0] * node.size[1] + 1, node.channels), float("nan"), dtype=m.dtype,
                           device=m.device)
            b[:, -1] = 0.0
            bufs.append(b)
        bufs[0][:, :-1, -1] = 1.0
        state = SamplerState(bufs=bufs, contexts=self.contexts(context),
                             x=torch.zeros(n, C, H, W, dtype=torch.long, device=m.device))
        for k in range(1, len(self.nodes)):
            b = self.nodes[k].bounds
            if b[1] > b[0]:
                self.compute(k, b[0], b[1], state)
        return state

    def compute(self, k, lo, hi, state: SamplerState):
        """Positions lo..hi (in ready order) of node k, from the buffers of the nodes it reads."""
        node = self.nodes[k]
        bufs = state.bufs
        pos = node.order[lo:hi]
        acc = None
        for t, taps in zip(node.terms, node.sorted_taps):
            v = bufs[t.src][:, taps[lo:hi]]  # [N, P, K, C_in]
            if t.pre == "elu":
                v = F.elu(v)
            elif t.pre == "concat_elu":
                v = F.elu(torch.cat([v, -v], dim=-1))
            v = v[:, :, 0] if t.weight is None else v.flatten(2) @ t.weight
            acc = v if acc is None else acc + v
        if node.bias is not None:
            acc = acc + node.bias
        ctx = state.contexts[k]
        if ctx is not None:
            acc = acc + (ctx if ctx.shape[1] == 1 else ctx[:, pos])
        if node.residual is not None:
            a, b = acc.chunk(2, dim=-1)
            acc = bufs[node.residual][:, pos] + a * torch.sigmoid(b)
        bufs[k][:, pos] = acc

    def steps(self, first, last, state: SamplerState, noise, progress=False):
        """Draw pixels first..last-1; after each, compute every position that became ready."""
        m = self.model
        C, H, W = m.image_shape
        bufs, x = state.bufs, state.x
        for p in tqdm(range(first, last), disable=not progress, desc="sample (cached)", leave=False):
            r, c = divmod(p, W)
            x[:, :, r, c] = m.draw_from_output(bufs[-1][:, p, :, None, None],
                                               noise[:, :, r : r + 1, c : c + 1])[:, :, 0, 0]
            bufs[0][:, p, :C] = m.scale(x[:, :, r, c])
            for k in range(1, len(self.nodes)):
                lo, hi = self.nodes[k].bounds[p + 1 : p + 3]
                if hi > lo:
                    self.compute(k, lo, hi, state)

    @torch.no_grad()
    def forward_all(self, x, context=None):
        """The network output [N, n_out, H, W] for whole images, node by node (a check of the compiled
        graph against PixelCNNpp.forward: the same numbers up to summation order)."""
        m = self.model
        C, H, W = m.image_shape
        state = self.start(context, len(x))
        bufs = state.bufs
        bufs[0][:, :-1, :C] = m.scale(x.to(m.device)).permute(0, 2, 3, 1).reshape(len(x), H * W, C)
        for k in range(1, len(self.nodes)):
            self.compute(k, 0, len(self.nodes[k].order), state)
        return bufs[-1][:, :-1].transpose(1, 2).reshape(len(x), -1, H, W)

    @torch.no_grad()
    def sample(self, context, noise, progress=False):
        """Images [N, C, H, W] (long) drawn with the given uniforms (see PixelCNNpp.draw_noise)."""
        return self.run(context, noise, progress).x

    @torch.no_grad()
    def run(self, context, noise, progress=False) -> SamplerState:
        """The sampling loop; returns its final state (the images and every node's buffer)."""
        _, H, W = self.model.image_shape
        state = self.start(context, len(noise))
        self.steps(0, H * W, state, noise, progress)
        return state
