"""Inpainting images with a trained network."""
