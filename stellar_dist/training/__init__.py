"""A training run, start to finish: its config (config: the sections plus the algorithms' own), the objects it
holds, built once (session), its streams (batches), the loop (engine), its saved state collected and restored in
one place (state), the checkpoint files (checkpoint) and the portable model folder (model_folder), which checkpoint
continues a run (resume), pretraining then training (stages), optimizer / schedule / EMA (optim), evaluation
during and after training (evaluation), per-interval statistics and phase timing (diagnostics), stop requests
(preemption) and W&B (tracking)."""
