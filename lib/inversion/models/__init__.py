"""The trainable models of the paper, one file each, and how to sample the inversion model.

  pixelcnn     conditional PixelCNN++ p(x | h) (Appendix A): PixelCNNConfig, the network (one walk over a
               few operations), its two likelihoods, the draw of a pixel from its output, train_pixelcnn
  sampling     every sampler of a PixelCNNpp (naive, fixed point, cached): sample(), draw(); the cached one
               compiles PixelCNNpp.walk into a graph computed incrementally, one activation at a time
  classifier   the supervised CNNs whose layers are inverted (Appendix A, §5.2): ClassifierConfig, feature
               taps, train_classifier
  decoders     the MSE decoder baseline x_hat = f(h) (§4, eq. 3): DecoderConfig, train_decoder

Imports go one way: sampling imports pixelcnn; the models import inversion.training (the shared loop).
"""
