"""The native-resolution recipe (nnU-Net's 2D configuration, on this product's pipeline).

fingerprint  per-case spacing and shape, foreground intensity statistics, class fractions
plan         the recipe decided from a fingerprint: target spacing, patch, normalisation
resample     slices to the target spacing and probabilities back to the source grid
sliding      tiles with overlap and Gaussian-weighted stitching
"""
