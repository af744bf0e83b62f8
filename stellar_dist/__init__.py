"""StellarDeepCluster: distributed semi-supervised classification of astronomical cutouts."""

__version__ = "0.1.0"
