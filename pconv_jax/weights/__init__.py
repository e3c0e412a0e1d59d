"""Reading weight files safely: PyTorch pickles without torch, VGG16 formats."""
