"""Pieces shared by every backbone: attention, position biases, embeddings, partitions."""
