"""The networks, their augmentation and training, checkpoints, and batched prediction with PyTorch."""
