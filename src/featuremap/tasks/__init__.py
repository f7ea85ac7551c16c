"""Uses of feature maps: recognition (classify) and segmentation (segment)."""
