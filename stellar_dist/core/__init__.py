"""The ground floor, which knows no algorithm, model or command: configuration machinery and the algorithm-free
config sections (config), every collective and "am I the main process" (dist), one-line errors (errors), how files
are created, replaced and read on a shared filesystem (files), output paths, locks and ownership (outputs), and the
classification report (metrics)."""
