"""Using a trained model: the one prediction pipeline (pipeline: setup, column schema, row builder; classify:
its kernel; inputs: what it reads; writer: what it writes), the single-file `predict` (predict), the partitioned
FOLDER/ output (parts), `predict_catalog` from Python (catalog), the model loader (model_folder), `export`, and the
`evaluate` / `cluster` reports of any checkpoint (reports, crossval)."""
