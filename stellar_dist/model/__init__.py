"""The network: backbone, photometric branch, class and cluster heads (network.build_model, the one builder for
training and loading)."""
