"""Reading weight files safely: PyTorch pickles without torch, VGG16 and Inception formats,
public PConv checkpoints."""
