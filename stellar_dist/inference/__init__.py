"""Using a trained model: the portable model folder (and, later, predict and export)."""
