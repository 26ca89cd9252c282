"""The native-resolution recipe (nnU-Net's 2D configuration, on this product's pipeline).

fingerprint  per-case spacing and shape, foreground intensity statistics, class fractions
plan         the recipe decided from a fingerprint: target spacing, patch, normalisation
dataset      the nnU-Net raw / Decathlon layout (dataset.json, imagesTr/, labelsTr/)
slices       a case's slices normalised and resampled to the target spacing (model input)
ceiling      a perfect model's mask at a recipe's resolution
resample     slices to the target spacing and probabilities back to the source grid
sliding      tiles with overlap and Gaussian-weighted stitching
"""
