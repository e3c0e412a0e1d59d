"""The partial convolution as a pure function of arrays."""
