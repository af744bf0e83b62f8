"""Which rows of a catalog go to which split: a real catalog's rule and the benchmark's.

A real catalog (the default): every row with a class is used, as a labeled row or a held-out test (or
validation) row, `split_catalog`; rows with an empty class are the unlabeled split. The benchmark
(`--labeled-fraction` / `--labeled-count`): the classes of a fully labeled catalog are hidden except for a chosen
few, `stratified_split`, to measure how an algorithm does with few labels.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from ..core.errors import UserError


def stratified_split(
    classes: pd.Series, labeled_fraction: float, test_fraction: float, seed: int, exclude: np.ndarray | None = None,
    labeled_count: int = 0, validation_fraction: float = 0.0, labeled_seed: int = -1,
) -> np.ndarray:
    """Assign each row to a split (an array of split names), stratified by class.

    Rows of unknown class (empty string) all go to unlabeled. Per class, round(n * fraction) rows go to test and
    to labeled, the rest to unlabeled, so every split is within one sample of the exact per-class proportion.
    Each class needs at least one sample in every split (no unlabeled one when the fractions sum to 1). The
    test rows come first in each class's seeded permutation and the labeled ones next: with the same seed and
    test fraction, the test split is the same for every labeled fraction or count, and a smaller labeled split is
    a subset of a larger one (what a label-efficiency comparison needs).

    `labeled_count` > 0: that many labeled rows in all instead of a fraction, one of each class first, then in
    proportion to the classes of the training pool (`_count_order`): nested in the count as well.
    `validation_fraction` > 0: the test rows are set aside ("heldout": never packed) and the next
    round(n * validation_fraction) rows of each class become the test split, a validation split carved from the
    training pool, for choosing a recipe without ever looking at the test split.
    `labeled_seed` >= 0: each class's training pool is shuffled again with that seed before the labeled rows are
    taken from it: the test and validation rows stay those of `seed`, the labeled objects change with
    `labeled_seed` (still nested in the fraction or count).
    """
    _check_fractions(labeled_fraction, test_fraction, validation_fraction, labeled_count)
    everything_labeled = labeled_count == 0 and labeled_fraction + test_fraction > 1 - 1e-9
    rng = np.random.default_rng(seed)
    labeled_rng = np.random.default_rng([labeled_seed, 1]) if labeled_seed >= 0 else None
    assignment = np.full(len(classes), "unlabeled", dtype=object)
    keep = np.ones(len(classes), dtype=bool) if exclude is None else ~exclude
    assignment[~keep] = "duplicate"  # in no split
    pools = {}
    for name in sorted(set(classes.unique()) - {""}):
        rows = np.flatnonzero((classes == name).to_numpy() & keep)
        count = len(rows)
        num_test = round(count * test_fraction)
        num_validation = round(count * validation_fraction)
        num_labeled = count - num_test if everything_labeled else round(count * labeled_fraction)
        if labeled_count:
            num_labeled = 1
        if min(num_test if test_fraction else 1, num_labeled, 1 if everything_labeled or labeled_count else
               count - num_test - num_labeled) < 1 or (
                validation_fraction and (num_validation < 1 or count - num_test - num_validation - num_labeled < 1)):
            smallest = min(labeled_fraction, test_fraction, 1 if everything_labeled else 1 - labeled_fraction
                           - test_fraction)
            needed = int(np.ceil(1 / smallest))
            raise UserError(
                f"class {name!r} has only {count} sample(s), too few to split into labeled/unlabeled/test with these "
                f"fractions: give it about {needed}+ samples, raise the fractions, or drop the class"
            )
        rows = rng.permutation(rows)
        assignment[rows[:num_test]] = "heldout" if validation_fraction else "test"
        start = num_test
        if validation_fraction:
            assignment[rows[num_test : num_test + num_validation]] = "test"
            start += num_validation
        pools[name] = rows[start:] if labeled_rng is None else labeled_rng.permutation(rows[start:])
        if not labeled_count:
            assignment[pools[name][:num_labeled]] = "labeled"
    if labeled_count:
        assignment[_labeled_by_count(pools, labeled_count, int(((classes == "").to_numpy() & keep).sum()))] = "labeled"
    return assignment


def _check_fractions(labeled_fraction: float, test_fraction: float, validation_fraction: float,
                     labeled_count: int) -> None:
    if not 0 < labeled_fraction <= 1 or not 0 <= test_fraction < 1 or labeled_fraction + test_fraction > 1 + 1e-9:
        raise UserError(
            f"--labeled-fraction {labeled_fraction} must lie in (0, 1] and --test-fraction {test_fraction} in "
            "[0, 1), and the two sum to at most 1 (exactly 1: every training sample labeled, no unlabeled split)"
        )
    if not 0 <= validation_fraction < 1 - test_fraction or labeled_count < 0:
        raise UserError(f"--validation-fraction {validation_fraction} must lie in [0, 1 - --test-fraction) and "
                        f"--labeled-count {labeled_count} must be 0 or more")


def _labeled_by_count(pools: dict[str, np.ndarray], labeled_count: int, num_unknown: int) -> np.ndarray:
    """The rows labeled by `--labeled-count`: one of each class first, then by class share (`_count_order`)."""
    order = _count_order(pools)
    if labeled_count > len(order):
        raise UserError(f"--labeled-count {labeled_count} is more than the {len(order)} rows with a class left for "
                        f"training (the others are test rows): to train on every row with a class, drop "
                        "--labeled-count (rows without a class are unlabeled either way)")
    if labeled_count == len(order) and not num_unknown:
        raise UserError(f"--labeled-count {labeled_count} labels every one of the {len(order)} training rows and "
                        "the catalog has no row without a class: nothing would be unlabeled; drop --labeled-count "
                        "to train on every row with a class, or choose a smaller count")
    if labeled_count < len(pools):
        raise UserError(f"--labeled-count {labeled_count} is fewer than the {len(pools)} classes: give every "
                        "class at least one label")
    return order[:labeled_count]


def _count_order(pools: dict[str, np.ndarray]) -> np.ndarray:
    """The training pool's rows in the order they get labels: the first row of every class, then the rows of all
    classes interleaved so that any prefix holds each class in proportion to its size (the k-th row of a class of
    n rows sits at (k + 0.5) / n). Labeled sets of growing counts are prefixes of this order, hence nested."""
    keys, rows = [], []
    for index, (name, pool) in enumerate(sorted(pools.items())):
        position = (np.arange(len(pool)) + 0.5) / max(len(pool), 1)
        position[:1] = -1.0 + index * 1e-9  # one of each class first
        keys.append(position)
        rows.append(pool)
    keys, rows = np.concatenate(keys), np.concatenate(rows)
    return rows[np.argsort(keys, kind="stable")]


def split_rows(classes: pd.Series, options, exclude: np.ndarray | None = None, keys: np.ndarray | None = None
               ) -> np.ndarray:
    """Each row's split under pack's options: the benchmark when a labeled fraction or count is given, else the
    real catalog's rule (`split_catalog`, ordered by `keys`: object_keys)."""
    if options.labeled_fraction or options.labeled_count:
        if options.fold:
            raise UserError("--fold splits a real catalog's spectra into test folds: it does not combine with "
                            "--labeled-fraction or --labeled-count (drop them)")
        return stratified_split(classes, options.labeled_fraction or 0.1, options.test_fraction, options.seed,
                                exclude, options.labeled_count, options.validation_fraction, options.labeled_seed)
    return split_catalog(classes, options.test_fraction, options.seed, exclude, options.validation_fraction,
                         parse_fold(options.fold), keys)


def parse_fold(text: str) -> tuple[int, int] | None:
    """"I/K" -> (I, K), 1 <= I <= K, 2 <= K <= 100; "" -> None."""
    if not text:
        return None
    try:
        fold, folds = (int(part) for part in text.split("/"))
    except ValueError:
        fold = folds = 0
    if not (2 <= folds <= 100 and 1 <= fold <= folds):
        raise UserError(f"--fold {text!r} must be I/K with 2 <= K <= 100 and 1 <= I <= K, e.g. 1/5")
    return fold, folds


def split_catalog(classes: pd.Series, test_fraction: float, seed: int, exclude: np.ndarray | None = None,
                  validation_fraction: float = 0.0, fold: tuple[int, int] | None = None,
                  keys: np.ndarray | None = None) -> np.ndarray:
    """A real catalog: every row with a class is labeled or held out, every row without one is unlabeled.

    The rule, per class of n rows: with `keys` (pack's: a seeded 64-bit hash of each object's id, `object_keys`),
    an object is a test object when its hash lies below test_fraction of the hash range, so an object stays where
    it was when spectra are added (a pack with new spectra tests every object the last one tested, plus about
    test_fraction of the new ones) and the row order does not matter; the count is about n * test_fraction. Without
    keys, a seeded permutation and round(n * test_fraction) rows. Either way at least one and at most n - 1 (the
    lowest hashes first; a class of one row trains and is not tested; `--test-fraction 0`: no test split). With
    `validation_fraction` the test rows are set aside ("heldout", never packed) and the next objects (hash in
    [test_fraction, test_fraction + validation_fraction), or the next round(n * fraction) rows; at least one,
    leaving at least one labeled) are the validation split, packed as "test". With `fold`
    (I, K): the class's rows are dealt round-robin into K folds and fold I is the test split, so K packs test every
    row with a class exactly once (a cross-validated report, `stellar-dist evaluate --folds`). The rest is labeled.
    """
    if not 0 <= test_fraction < 1 or not 0 <= validation_fraction < 1 - test_fraction:
        raise UserError(f"--test-fraction {test_fraction} must lie in [0, 1) and --validation-fraction "
                        f"{validation_fraction} in [0, 1 - --test-fraction)")
    rng = np.random.default_rng(seed)
    keep = np.ones(len(classes), dtype=bool) if exclude is None else ~exclude
    assignment = np.full(len(classes), "unlabeled", dtype=object)
    assignment[~keep] = "duplicate"
    for name in sorted(set(classes.unique()) - {""}):
        rows = np.flatnonzero((classes == name).to_numpy() & keep)
        rows = rng.permutation(rows) if keys is None else rows[np.argsort(keys[rows], kind="stable")]
        assignment[rows] = "labeled"
        if fold is not None:
            assignment[rows[np.arange(len(rows)) % fold[1] == fold[0] - 1]] = "test"
            continue
        if keys is None:
            num_test = _held(len(rows), test_fraction)
            num_validation = _held(len(rows) - num_test, validation_fraction, len(rows))
        else:  # each object by its own hash: the rows are in hash order, so these are the first ones
            share = keys[rows].astype(np.float64) / 2.0**64
            num_test = _held(len(rows), test_fraction, count=int((share < test_fraction).sum()))
            num_validation = _held(len(rows) - num_test, validation_fraction, count=int(
                ((share >= test_fraction) & (share < test_fraction + validation_fraction)).sum()))
        assignment[rows[:num_test]] = "heldout" if validation_fraction else "test"
        assignment[rows[num_test : num_test + num_validation]] = "test"
    return assignment


def object_keys(ids, seed: int) -> np.ndarray:
    """A seeded 64-bit hash of each object's id (text): where it falls in split_catalog's order, whatever else the
    catalog holds."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{value}".encode(), digest_size=8).digest(), "big")
                     for value in ids], dtype=np.uint64)


def _held(available: int, fraction: float, total: int | None = None, count: int | None = None) -> int:
    """`count` rows (default round(total * fraction)), at least one and leaving at least one; none without a
    fraction."""
    if not fraction or available < 2:
        return 0
    wanted = round((total or available) * fraction) if count is None else count
    return int(min(available - 1, max(1, wanted)))
