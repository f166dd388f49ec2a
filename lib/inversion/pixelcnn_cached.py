"""Exact incremental sampling for PixelCNN++: every activation is computed once.

The naive sampler runs the whole network for every pixel and keeps one output of it. But the network is
causal, so every activation depends on the image only up to some pixel in raster order: its *ready step*.
Computed once, right after that pixel is drawn, and kept, the activations of a whole image cost about one
network pass instead of H*W of them. This is the idea of Ramachandran et al. (2017), "Fast Generation for
Convolutional Autoregressive Models", who keep a queue of hidden states per layer. Here the network is
instead compiled into a flat graph, so that one loop serves every layer type:

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
(9.8 MB per 28x28 image at 64 filters and 3 resnets in float32), so images are sampled in chunks that fit ``max_bytes``.
Keeping only the rows still to be read (Ramachandran's queues) would cut this; it was not needed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from inversion.pixelcnn import DownShiftedDeconv, WNConv2d


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


class CachedGraph:
    """A trained PixelCNNpp compiled for incremental sampling (weights are read once, at compile time)."""

    def __init__(self, model):
        self.model = model
        C, H, W = model.image_shape
        self.nodes = [_Node((H, W), C + 1, [], dep=np.arange(H * W))]  # node 0: the image and its ones
        self._mirror_forward()
        self._schedule()

    # ---- compiling: the same walk as PixelCNNpp.forward ----------------------------------------------
    # A change to PixelCNNpp.forward must be made here too: tests/test_pixelcnn_cached.py compares the two.
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

    def _conv(self, src, module, pre="none"):
        term, bias, size = self._conv_term(src, module, pre)
        return self._add(_Node(size, term.weight.shape[1], [term], bias))

    def _deconv(self, src, module, size):
        w = module.deconv.weight().detach()  # [C_in, C_out, kh, kw]
        left = (module.kw - 1) // 2 if isinstance(module, DownShiftedDeconv) else 0
        taps = _transposed_taps(self.nodes[src].size, size, w.shape[2:], left)
        term = _Term(src, taps, w.permute(2, 3, 0, 1).reshape(-1, w.shape[1]))
        return self._add(_Node(size, w.shape[1], [term], module.deconv.b.detach()))

    def _shifted_sum(self, parts):
        """sum of shift(node) over (node, down, right) parts: the streams' starting points."""
        size, ch = self.nodes[parts[0][0]].size, self.nodes[parts[0][0]].channels
        terms = [_Term(src, _shift_taps(size, d, r), None) for src, d, r in parts]
        return self._add(_Node(size, ch, terms))

    def _resnet(self, block, x, skips=()):
        """A gated resnet: node c1 = conv1(concat_elu(x)) [+ 1x1(concat_elu(cat(skips)))], then node
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
        c1 = self._add(_Node(size, term.weight.shape[1], terms, bias))
        term2, bias2, _ = self._conv_term(c1, block.conv2, "concat_elu")
        return self._add(_Node(size, self.nodes[x].channels, [term2], bias2,
                               context_block=block if block.context is not None else None, context_size=size,
                               residual=x))

    def _mirror_forward(self):
        m = self.model
        _, H, W = m.image_shape
        sizes = [(H, W)]
        for _ in range(m.n_resolutions - 1):
            sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
        u = self._shifted_sum([(self._conv(0, m.u_init), 1, 0)])
        ul = self._shifted_sum([(self._conv(0, m.ul_init_down), 1, 0), (self._conv(0, m.ul_init_right), 0, 1)])
        us, uls = [u], [ul]
        for r in range(m.n_resolutions):
            for block_u, block_ul in zip(m.up_u[r], m.up_ul[r]):
                u = self._resnet(block_u, u)
                ul = self._resnet(block_ul, ul, (u,))
                us.append(u)
                uls.append(ul)
            if r < m.n_resolutions - 1:
                u, ul = self._conv(u, m.downsample_u[r]), self._conv(ul, m.downsample_ul[r])
                us.append(u)
                uls.append(ul)
        u, ul = us.pop(), uls.pop()
        for r in reversed(range(m.n_resolutions)):
            for block_u, block_ul in zip(m.down_u[r], m.down_ul[r]):
                u = self._resnet(block_u, u, (us.pop(),))
                ul = self._resnet(block_ul, ul, (u, uls.pop()))
            if r > 0:
                u = self._deconv(u, m.upsample_u[r - 1], sizes[r - 1])
                ul = self._deconv(ul, m.upsample_ul[r - 1], sizes[r - 1])
        assert not us and not uls
        self._conv(ul, m.out, "elu")  # the last node: the distribution parameters of every pixel
        for node in self.nodes[1:]:
            assert all(len(t.taps) == node.size[0] * node.size[1] for t in node.terms)

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
    def _contexts(self, context):
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

    def _start(self, context, n):
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
        state = dict(bufs=bufs, contexts=self._contexts(context),
                     x=torch.zeros(n, C, H, W, dtype=torch.long, device=m.device))
        for k in range(1, len(self.nodes)):
            b = self.nodes[k].bounds
            if b[1] > b[0]:
                self._compute(k, b[0], b[1], bufs, state["contexts"])
        return state

    def _compute(self, k, lo, hi, bufs, contexts):
        """Positions lo..hi (in ready order) of node k, from the buffers of the nodes it reads."""
        node = self.nodes[k]
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
        ctx = contexts[k]
        if ctx is not None:
            acc = acc + (ctx if ctx.shape[1] == 1 else ctx[:, pos])
        if node.residual is not None:
            a, b = acc.chunk(2, dim=-1)
            acc = bufs[node.residual][:, pos] + a * torch.sigmoid(b)
        bufs[k][:, pos] = acc

    def _steps(self, first, last, state, noise, progress=False):
        """Draw pixels first..last-1; after each, compute every position that became ready."""
        m = self.model
        C, H, W = m.image_shape
        bufs, contexts, x = state["bufs"], state["contexts"], state["x"]
        for p in tqdm(range(first, last), disable=not progress, desc="sample (cached)", leave=False):
            r, c = divmod(p, W)
            x[:, :, r, c] = m._sample_from_output(bufs[-1][:, p, :, None, None],
                                                  noise[:, :, r : r + 1, c : c + 1])[:, :, 0, 0]
            bufs[0][:, p, :C] = m._scale(x[:, :, r, c])
            for k in range(1, len(self.nodes)):
                lo, hi = self.nodes[k].bounds[p + 1 : p + 3]
                if hi > lo:
                    self._compute(k, lo, hi, bufs, contexts)

    @torch.no_grad()
    def forward_all(self, x, context=None):
        """The network output [N, n_out, H, W] for whole images, node by node (a check of the compiled
        graph against PixelCNNpp.forward: same numbers up to summation order)."""
        m = self.model
        C, H, W = m.image_shape
        state = self._start(context, len(x))
        bufs = state["bufs"]
        bufs[0][:, :-1, :C] = m._scale(x.to(m.device)).permute(0, 2, 3, 1).reshape(len(x), H * W, C)
        for k in range(1, len(self.nodes)):
            self._compute(k, 0, len(self.nodes[k].order), bufs, state["contexts"])
        return bufs[-1][:, :-1].transpose(1, 2).reshape(len(x), -1, H, W)

    @torch.no_grad()
    def sample(self, context, noise, progress=False, cuda_graphs=False):
        """Images [N, C, H, W] (long) drawn with the given uniforms (see PixelCNNpp.draw_noise).

        cuda_graphs=True (CUDA only) records the loop once per batch size as CUDA graphs of one image row
        each and replays them: the same kernels, launched without Python in between."""
        if cuda_graphs:
            return self._sample_graphed(context, noise).clone()
        return self._run(context, noise, progress)[0]

    @torch.no_grad()
    def _run(self, context, noise, progress=False):
        """The sampling loop; returns (images, every node's buffer)."""
        _, H, W = self.model.image_shape
        state = self._start(context, len(noise))
        self._steps(0, H * W, state, noise, progress)
        return state["x"], state["bufs"]

    def _sample_graphed(self, context, noise):
        if self.model.device.type != "cuda":
            raise ValueError("cuda_graphs=True needs the model on a CUDA device")
        _, H, W = self.model.image_shape
        key = (len(noise), None if context is None else tuple(context.shape))
        if getattr(self, "_graphs", None) is None or self._graphs[0] != key:
            static_noise = noise.clone()
            static_context = None if context is None else context.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # one eager run first: libraries allocate their workspaces
                self._steps(0, H * W, self._start(static_context, len(noise)), static_noise)
            torch.cuda.current_stream().wait_stream(side)
            start = torch.cuda.CUDAGraph()
            with torch.cuda.graph(start):
                state = self._start(static_context, len(noise))
            rows = []
            for r in range(H):
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=start.pool()):
                    self._steps(r * W, (r + 1) * W, state, static_noise)
                rows.append(g)
            self._graphs = (key, static_noise, static_context, state, start, rows)
        _, static_noise, static_context, state, start, rows = self._graphs
        static_noise.copy_(noise)
        if context is not None:
            static_context.copy_(context)
        start.replay()
        for g in rows:
            g.replay()
        return state["x"]


def sample_cached(model, context, noise, progress=False, max_bytes=None, cuda_graphs=False):
    """PixelCNNpp.sample(method="cached"): compile once, then sample in chunks whose caches fit max_bytes
    (default: 2 GiB on a CPU, a quarter of the free memory on a GPU)."""
    if max_bytes is None:
        max_bytes = torch.cuda.mem_get_info(model.device)[0] // 4 if model.device.type == "cuda" else 2**31
    graph = CachedGraph(model)
    n = len(noise)
    chunk = max(1, min(n, int(max_bytes // graph.bytes_per_image())))
    parts = []
    for i in range(0, n, chunk):
        ctx = None if context is None else context[i : i + chunk]
        parts.append(graph.sample(ctx, noise[i : i + chunk], progress=progress, cuda_graphs=cuda_graphs))
    return torch.cat(parts)
