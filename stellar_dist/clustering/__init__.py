"""Clustering the learned features: k-means (Faiss / torch), re-clustering across ranks, Hungarian
evaluation and the cluster report."""
