"""The networks: the partial-convolution UNet, and the frozen VGG16 and Inception-v3 of the
loss and the metrics."""
