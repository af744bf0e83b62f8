"""StellarDeepCluster: distributed semi-supervised classification of astronomical cutouts."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`stellar_dist.predict_catalog`, imported on first use (`stellar-dist --help` stays free of torch)."""
    if name == "predict_catalog":
        from .inference.catalog import predict_catalog

        return predict_catalog
    raise AttributeError(f"module 'stellar_dist' has no attribute {name!r}")
