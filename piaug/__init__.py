"""piaug: information-guided pixel augmentation for pixel-wise contrastive learning, in JAX."""
