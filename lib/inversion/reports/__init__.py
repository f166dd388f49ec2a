"""What the book shows of a run, one module per chapter; each turns stage results into typed summaries,
figures and checked claims, and returns values and booleans, never sentences (those live in the chapters).

  common         the presentation toolkit: labels, colours, image grids, Markdown tables, ``Claim``,
                 claims and provenance tables, figure captions
  background     §3–4: the toy distribution whose H(x | h) is known exactly
  layers         §5.1: what each layer of a classifier keeps (Fig. 1, Fig. 2, Table 1, Fig. 5a)
  architectures  §5.2: FC vs conv vs conv + global max pooling on affNIST (Fig. 4)
  dynamics       §5.3: the NCE over the classifier's training (Fig. 5b)
  estimators     Appendix B: binning, KDE, Kraskov and KSG estimators beside the NCE
  widgets        the sample scrubber, a widget that runs in the static page

The paper's own numbers come from ``inversion.paper``.
"""
