"""The networks: the partial-convolution UNet and the VGG16 feature extractor."""
