"""StellarDeepCluster: distributed semi-supervised classification of astronomical cutouts.

Every command has one Python entry, which its command line calls (imported on first use: `import stellar_dist`
stays free of torch):

    stellar_dist.simulate(out, num)                        # stellar-dist simulate
    stellar_dist.pack(catalog, out, PackOptions(...))      # stellar-dist pack
    stellar_dist.train("configs/demo.yaml", ["train.steps=50"])   # stellar-dist train
    stellar_dist.predict(model, source, out)               # stellar-dist predict (one file)
    stellar_dist.predict_catalog(model, table)             # a catalog in, the same catalog out, with predictions
    stellar_dist.export(model, "onnx")                     # stellar-dist export
    stellar_dist.select(shards, budget, out)               # stellar-dist select
"""

__version__ = "0.1.0"

# name: (module, attribute)
API = {
    "simulate": ("stellar_dist.data.simulate", "simulate"),
    "pack": ("stellar_dist.data.pack", "pack"),
    "PackOptions": ("stellar_dist.data.pack", "PackOptions"),
    "train": ("stellar_dist.training.stages", "train"),
    "load_config": ("stellar_dist.training.config", "load_config"),
    "predict": ("stellar_dist.inference.predict", "predict"),
    "predict_catalog": ("stellar_dist.inference.catalog", "predict_catalog"),
    "export": ("stellar_dist.inference.export", "export"),
    "select": ("stellar_dist.selection.select", "select"),
}


def __getattr__(name: str):
    if name in API:
        import importlib

        module, attribute = API[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'stellar_dist' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
