"""What pack tells the user after packing: every split's count per class, and what is too small to trust."""

from __future__ import annotations

from .manifest import SPLITS

TINY_TEST = 10  # fewer test objects of a class than this: its F1 moves by >= 0.1 with one object


def split_summary(manifest: dict, out: str) -> str:
    """Per-class counts of each split, then a note on a missing or tiny test split (a way out included)."""
    counts, arguments = manifest["counts"], manifest.get("arguments", {})
    benchmark = bool(arguments.get("labeled_fraction") or arguments.get("labeled_count"))
    lines = []
    for split in SPLITS:
        parts = [f"{name} {count}" for name, count in counts[split].items() if count and name != "?"]
        if counts[split].get("?"):
            parts.append(f"without a class {counts[split]['?']}")
        hidden = " (classes hidden: the benchmark)" if benchmark and split == "unlabeled" and parts else ""
        lines.append(f"  {split:<9} {manifest['num_samples'][split]:>8}  {', '.join(parts) or '-'}{hidden}")
    classes = manifest["classes"]
    if not classes:
        lines.append(f"no row has a class (column {arguments.get('label_column', 'Class')!r}): packed for "
                     f"`stellar-dist select --shards {out}` (which objects to get spectra for); training needs "
                     "classes (--label-column names the column; --labels FILE adds them by id)")
        return "\n".join(lines)
    if not manifest["num_samples"]["test"]:
        lines.append("no test split (--test-fraction 0): every spectrum trains; measure the model with "
                     "`stellar-dist predict` on objects it never saw")
        return "\n".join(lines)
    tiny = {name: counts["test"].get(name, 0) for name in classes if counts["test"].get(name, 0) < TINY_TEST}
    if tiny:
        spectra = sum(sum(counts[split].get(name, 0) for name in classes) for split in ("labeled", "test")) \
            if not benchmark else None
        what = ", ".join(f"{name} ({count})" for name, count in tiny.items())
        report = f"a cross-validated report over all {spectra} spectra: pack once per fold with --fold 1/5 ... " \
            "5/5, train each, then `stellar-dist evaluate --folds RUN1 ... RUN5`" if spectra else \
            "a larger --test-fraction"
        lines.append(f"warning: the test split holds fewer than {TINY_TEST} objects of {what}: their F1 moves by "
                     f"0.1 or more with one object, so read it as noise; for honest error bars use {report}")
    return "\n".join(lines)
