"""The cached sampler's loop recorded as CUDA graphs and replayed: the same kernels, launched without Python.

inversion.models.sampling.CachedGraph runs its loop from Python, one small launch after another; on a GPU
that loop is launch-bound. Here it is recorded once per batch shape, as one CUDA graph for ``start`` and
one per image row of ``steps``, and replayed with new noise and contexts copied into the recorded inputs.
The images are the eager loop's (the same kernels in the same order). Only bench/pixelcnn_speed.py uses it.

    recording = record(CachedGraph(model), h, noise)      # records (and runs the loop once eagerly first)
    images = recording.replay(h, noise)                    # long [N, C, H, W]; a view of recorded memory
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inversion.models.sampling import CachedGraph, SamplerState


@dataclass
class Recording:
    graph: CachedGraph
    noise: torch.Tensor  # the recorded inputs: replay copies new values into them
    context: torch.Tensor | None
    state: SamplerState  # the recorded state; state.x holds the images after a replay
    start: torch.cuda.CUDAGraph
    rows: list  # one CUDA graph per image row

    @torch.no_grad()
    def replay(self, context, noise) -> torch.Tensor:
        """Images (long [N, C, H, W]) for this noise and context; shapes must be the recorded ones. The
        result lives in the recording's memory: clone it before the next replay if it is kept."""
        if tuple(noise.shape) != tuple(self.noise.shape) or (context is None) != (self.context is None) or (
                context is not None and tuple(context.shape) != tuple(self.context.shape)):
            raise ValueError("replay needs the noise and context shapes this recording was made with")
        self.noise.copy_(noise)
        if context is not None:
            self.context.copy_(context)
        self.start.replay()
        for g in self.rows:
            g.replay()
        return self.state.x


@torch.no_grad()
def record(graph: CachedGraph, context, noise) -> Recording:
    """Record ``graph``'s sampling loop for this batch shape (CUDA only)."""
    model = graph.model
    if model.device.type != "cuda":
        raise ValueError("CUDA graphs need the model on a CUDA device")
    _, H, W = model.image_shape
    static_noise = noise.clone()
    static_context = None if context is None else context.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # one eager run first: libraries allocate their workspaces
        graph.steps(0, H * W, graph.start(static_context, len(noise)), static_noise)
    torch.cuda.current_stream().wait_stream(side)
    start = torch.cuda.CUDAGraph()
    with torch.cuda.graph(start):
        state = graph.start(static_context, len(noise))
    rows = []
    for r in range(H):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=start.pool()):
            graph.steps(r * W, (r + 1) * W, state, static_noise)
        rows.append(g)
    return Recording(graph, static_noise, static_context, state, start, rows)
