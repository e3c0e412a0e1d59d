"""The mask convention every module shares (no dependencies: any floor may import it).

Inside the code a mask is float, 1 = valid (known) pixel, 0 = hole, shaped (N, H, W, 1) or
(N, H, W, C). Values above `MASK_THRESHOLD` count as valid, the rest as holes: the network, the
loss, the metrics and the image readers binarise at this one value. Mask files use other
conventions (NVIDIA's test masks: white = hole); `pconv_jax.data.images` converts at load time.
"""

MASK_THRESHOLD = 0.5  # mask values > this count as valid; the rest as holes
