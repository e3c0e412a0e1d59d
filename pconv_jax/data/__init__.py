"""Image and mask files, generated and NVIDIA masks, image sources, input pipelines."""
