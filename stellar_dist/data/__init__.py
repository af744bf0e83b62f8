"""Getting images in: catalogs, FITS bands, packing into shards, the manifest, streams, augmentations, the simulator."""
