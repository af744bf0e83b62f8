"""Everything a run writes to keep its work: checkpoints (checkpoint.py) and the portable model folder written
into each of them and published as OUTPUT_DIR/model (model_folder.py). Reading a model folder is inference's."""
