"""Fitted scikit-learn models as plain arrays: stored and predicted without pickles.

A random forest is stored as the arrays of its trees (``children_left``, ``children_right``,
``feature``, ``threshold``, ``value``, ``missing_go_to_left``, per tree: :func:`forest_arrays`)
and predicted by :func:`forest_predict_proba`, a numpy tree walker that gives scikit-learn's
``predict_proba`` to the last bit (float32 inputs, the same comparisons, the same order of
summation). The radiomics pipeline's steps before its forest (imputation, scaling, LASSO
selection) are stored as numbers (:func:`radiomics_spec`) and applied by
:func:`radiomics_transform`. Arrays are written to ``.npz`` files and read with
``allow_pickle=False`` (:func:`save_arrays`, :func:`load_arrays`). The model folder
(:mod:`hccer_lib.model_folder`) holds them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hccer_lib import outputs

FOREST_ARRAYS = ("children_left", "children_right", "feature", "threshold", "value", "missing_go_to_left", "tree_offsets", "classes")


def forest_arrays(forest) -> dict[str, np.ndarray]:
    """A fitted ``RandomForestClassifier`` as plain arrays (the trees one after another).

    Returns:
        ``children_left``, ``children_right``, ``feature`` (int64 ``[n_nodes]``; ``-1``
        children mark a leaf), ``threshold`` (float64 ``[n_nodes]``), ``value`` (float64
        ``[n_nodes, n_classes]``: the class fractions of each node), ``missing_go_to_left``
        (uint8 ``[n_nodes]``), ``tree_offsets`` (int64 ``[n_trees + 1]``: tree ``t`` holds
        nodes ``tree_offsets[t]:tree_offsets[t + 1]``), ``classes`` (int64) and
        ``n_features`` (int64 scalar).
    """
    if getattr(forest, "n_outputs_", 1) != 1:
        raise ValueError(f"only single-output forests can be exported, got {forest.n_outputs_} outputs")
    classes = np.asarray(forest.classes_)
    if classes.dtype.kind not in "iub":
        raise ValueError(f"class labels must be integers to be stored without pickles, got {classes.dtype}")
    trees = [estimator.tree_ for estimator in forest.estimators_]
    n_classes = len(classes)
    return {
        "children_left": np.concatenate([t.children_left for t in trees]).astype(np.int64),
        "children_right": np.concatenate([t.children_right for t in trees]).astype(np.int64),
        "feature": np.concatenate([t.feature for t in trees]).astype(np.int64),
        "threshold": np.concatenate([t.threshold for t in trees]).astype(np.float64),
        "value": np.concatenate([t.value[:, 0, :n_classes] for t in trees]).astype(np.float64),
        "missing_go_to_left": np.concatenate([t.missing_go_to_left for t in trees]).astype(np.uint8),
        "tree_offsets": np.cumsum([0] + [t.node_count for t in trees]).astype(np.int64),
        "classes": classes.astype(np.int64),
        "n_features": np.int64(forest.n_features_in_),
    }


def forest_predict_proba(arrays: dict[str, np.ndarray], X) -> np.ndarray:
    """Class probabilities ``[n, n_classes]`` of a forest stored by :func:`forest_arrays`.

    The same computation as scikit-learn's ``RandomForestClassifier.predict_proba`` (one
    job): inputs cast to float32, ``x <= threshold`` goes left, a missing value goes where
    ``missing_go_to_left`` says, each tree's leaf fractions summed in tree order and
    divided by the number of trees.

    Args:
        X: ``[n, n_features]`` numbers.
    """
    X = np.asarray(X, dtype=np.float32)
    n_features = int(arrays["n_features"])
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"the forest reads [n, {n_features}] inputs, got shape {X.shape}")
    left, right, feature = arrays["children_left"], arrays["children_right"], arrays["feature"]
    threshold, value, missing_left = arrays["threshold"], arrays["value"], arrays["missing_go_to_left"]
    offsets = arrays["tree_offsets"]
    total = np.zeros((X.shape[0], value.shape[1]), dtype=np.float64)
    rows = np.arange(X.shape[0])
    for begin in offsets[:-1]:
        node = np.full(X.shape[0], begin, dtype=np.int64)  # global node index
        active = left[node] != -1
        while active.any():
            at = node[active]
            x = X[rows[active], feature[at]]
            go_left = np.where(np.isnan(x), missing_left[at] == 1, x <= threshold[at])
            node[active] = begin + np.where(go_left, left[at], right[at])
            active = left[node] != -1
        total += value[node]
    total /= len(offsets) - 1
    return total


def check_forest_arrays(arrays: dict[str, np.ndarray], n_features: int | None = None) -> None:
    """``ValueError`` unless ``arrays`` is a consistent binary forest (for a folder that may be damaged)."""
    missing = [name for name in (*FOREST_ARRAYS, "n_features") if name not in arrays]
    if missing:
        raise ValueError(f"forest arrays lack {', '.join(missing)}")
    offsets = arrays["tree_offsets"]
    n_nodes = len(arrays["children_left"])
    if offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != n_nodes or np.any(np.diff(offsets) < 1):
        raise ValueError(f"tree_offsets {offsets[:3]}... do not split {n_nodes} nodes into trees")
    for name in ("children_right", "feature", "threshold", "missing_go_to_left"):
        if arrays[name].shape != (n_nodes,):
            raise ValueError(f"{name} has shape {arrays[name].shape}, expected ({n_nodes},)")
    if arrays["value"].shape != (n_nodes, len(arrays["classes"])):
        raise ValueError(f"value has shape {arrays['value'].shape}, expected ({n_nodes}, {len(arrays['classes'])})")
    if list(arrays["classes"]) != [0, 1]:
        raise ValueError(f"classes are {list(arrays['classes'])}, expected [0, 1]")
    stored = int(arrays["n_features"])
    if n_features is not None and stored != n_features:
        raise ValueError(f"the forest reads {stored} features but the model's inputs have {n_features}")
    sizes = np.repeat(np.diff(offsets), np.diff(offsets))
    local_left, local_right = arrays["children_left"], arrays["children_right"]
    leaf = local_left == -1
    internal = ~leaf
    if np.any(leaf != (local_right == -1)) or np.any(
        internal & ((local_left < 1) | (local_left >= sizes) | (local_right < 1) | (local_right >= sizes))
    ):
        raise ValueError("children indices outside their tree")
    if np.any(internal & ((arrays["feature"] < 0) | (arrays["feature"] >= stored))):
        raise ValueError(f"split features outside 0..{stored - 1}")


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """``np.savez_compressed`` of plain numeric arrays (no object arrays), atomically."""
    with outputs.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **{name: np.asarray(value) for name, value in arrays.items()})
    return path


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, read with ``allow_pickle=False``."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def radiomics_spec(pipeline, feature_columns: list[str]) -> dict:
    """What the fitted radiomics pipeline (impute → scale → LASSO → forest) does before its forest.

    Returns a JSON-able dict: ``feature_columns`` (every input column, in order),
    ``impute_median``, ``scale_mean``, ``scale_scale`` (one number per column; a column
    that was empty when fitted is imputed with 0, as ``SimpleImputer(keep_empty_features=True)``
    does), ``selected`` (the columns the LASSO kept, in order), ``lasso_C``, ``lasso_fallback``.
    """
    impute, scale, lasso = (pipeline.named_steps[k] for k in ("impute", "scale", "lasso"))
    medians = np.where(np.isnan(impute.statistics_), 0.0, impute.statistics_)
    support = np.asarray(lasso.support_, dtype=bool)
    if len(feature_columns) != len(support):
        raise ValueError(f"{len(feature_columns)} column names for a pipeline fitted on {len(support)} features")
    return {
        "feature_columns": list(feature_columns),
        "impute_median": [float(v) for v in medians],
        "scale_mean": [float(v) for v in scale.mean_],
        "scale_scale": [float(v) for v in scale.scale_],
        "selected": [c for c, keep in zip(feature_columns, support, strict=True) if keep],
        "lasso_C": float(lasso.C_),
        "lasso_fallback": bool(lasso.fallback_),
    }


def radiomics_transform(spec: dict, X) -> np.ndarray:
    """The pipeline's imputation, scaling and LASSO selection: ``[n, n_columns]`` → ``[n, n_selected]``."""
    X = np.array(X, dtype=np.float64)
    columns = spec["feature_columns"]
    if X.ndim != 2 or X.shape[1] != len(columns):
        raise ValueError(f"radiomics rows must be [n, {len(columns)}], got shape {X.shape}")
    medians = np.asarray(spec["impute_median"], dtype=np.float64)
    missing = np.isnan(X)
    X[missing] = np.broadcast_to(medians, X.shape)[missing]
    X -= np.asarray(spec["scale_mean"], dtype=np.float64)
    X /= np.asarray(spec["scale_scale"], dtype=np.float64)
    index = {c: i for i, c in enumerate(columns)}
    return X[:, [index[c] for c in spec["selected"]]]
