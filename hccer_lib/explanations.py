"""Grad-CAM figures of the study's networks: which network, slices, inputs and layer, and their titles.

:mod:`hccer_lib.gradcam` computes the maps (``grad_cam``) and draws them (``plot_gradcam``);
this module decides what is explained, once for every caller:

- :func:`final_model_gradcam`: the final model's primary network on patients predicted from
  their files (the ``predict`` command: one patient, several slices; notebook 07: a few
  patients, the middle slice of each);
- :func:`fold_gradcam`: a cross-validation fold's network, retrained with the stored seed and
  checked against its stored out-of-fold predictions, on correctly and wrongly predicted
  patients (notebook 08);
- :func:`network_gradcam`: both end here: the fused head's map for early recurrence on a batch
  of inputs, one row of NC, ART and PV per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hccer_lib.models import PRIMARY_ORDER
from hccer_lib.study_run import DEFAULT_SETTINGS

if TYPE_CHECKING:
    from hccer_lib.model_folder import FinalModel
    from hccer_lib.prediction import PatientPrediction

#: Smallest side (pixels) of the feature map that the final model's figure explains by default:
#: the last map at the paper's 224 px (7 x 7), an earlier one at the small profiles' sizes,
#: whose last map is 1 x 1 or 2 x 2.
GRADCAM_MIN_SIDE = 4
#: Largest difference between a retrained fold network and its stored out-of-fold probabilities.
REPRODUCTION_TOLERANCE = 1e-4


@dataclass
class GradCam:
    """A Grad-CAM figure and what it shows.

    Attributes:
        figure: one row per image, columns NC, ART, PV (``gradcam.plot_gradcam``).
        model_name: the explained network.
        layer: the explained feature map's layer.
        map_shape: that map's ``(h, w)`` in cells.
        heatmaps: float32 ``[n, H, W]`` in ``[0, 1]``.
    """

    figure: object
    model_name: str
    layer: str
    map_shape: tuple[int, int]
    heatmaps: np.ndarray


def network_gradcam(network, model_name: str, inputs: dict, titles: list[str], title: str,
                    layer_name: str | None = None, min_side: int = 1) -> GradCam:  # fmt: skip
    """Grad-CAM of the fused head of ``network`` for early recurrence (class 1) on a batch of inputs.

    Args:
        inputs: the network's inputs: ``"image"`` ``[n, H, W, 3]`` (NC, ART, PV in ``[0, 1]``),
            and ``"clinical"`` ``[n, k]`` for a fusion model.
        titles: one per image.
        title: the figure's first title line; the second names the head, layer and map size.
        layer_name: the feature map to explain; default the last one of the image pathway
            that is at least ``min_side`` cells a side.
    """
    from hccer_lib import gradcam

    layer = layer_name or gradcam.last_feature_map(network, min_side)
    heatmaps = gradcam.grad_cam(network, inputs, head="fused", target_class=1, layer_name=layer)
    map_shape = tuple(int(side) for side in gradcam.image_pathway(network).get_layer(layer).output.shape[1:3])
    figure = gradcam.plot_gradcam(inputs["image"], heatmaps, titles)
    figure.suptitle(f"{title}\nGrad-CAM of {model_name}'s fused head at layer {layer} ({map_shape[0]}x{map_shape[1]} map)",
                    fontsize=9)  # fmt: skip
    return GradCam(figure, model_name, layer, map_shape, heatmaps)


def spread_slices(n_slices: int, n_wanted: int) -> np.ndarray:
    """Indices of up to ``n_wanted`` of ``n_slices`` slices, evenly spread; one: the middle slice."""
    if n_slices < 1 or n_wanted < 1:
        return np.zeros(0, dtype=int)
    if n_wanted == 1:
        return np.array([n_slices // 2])
    return np.unique(np.linspace(0, n_slices - 1, min(n_wanted, n_slices)).round().astype(int))


def primary_network(final: FinalModel) -> str | None:
    """The network a final model's figure explains: the first of ``models.PRIMARY_ORDER`` it holds."""
    return next((name for name in PRIMARY_ORDER if name in final.networks), None)


def final_model_gradcam(final: FinalModel, predictions: list[PatientPrediction], slices_per_patient: int = 6,
                        layer_name: str | None = None, min_side: int = GRADCAM_MIN_SIDE) -> GradCam | None:  # fmt: skip
    """Grad-CAM of the final model's primary network on patients it predicted from their files.

    Args:
        predictions: ``FinalModel.predict_patient`` results (with their images).
        slices_per_patient: up to this many slices of each patient (:func:`spread_slices`).
        layer_name, min_side: as for :func:`network_gradcam`; by default the last feature map
            at least :data:`GRADCAM_MIN_SIDE` cells a side.

    Returns:
        the :class:`GradCam`, or None when the model holds no network or no patient has a slice.
    """
    name = primary_network(final)
    chosen = [(p, spread_slices(len(p.images), slices_per_patient)) for p in predictions]
    chosen = [(p, rows) for p, rows in chosen if len(rows)]
    if name is None or not chosen:
        return None
    inputs = {"image": np.concatenate([p.images[rows] for p, rows in chosen])}
    if "clinical" in final.manifest["models"][name]["inputs"]:
        inputs["clinical"] = np.concatenate([np.repeat(p.clinical_bits, len(rows), axis=0) for p, rows in chosen])
    titles = [f"{p.patient_id}{'' if p.y_true is None else (' (ER)' if p.y_true else ' (NER)')}, slice "
              f"{p.slices['slice'].iloc[k]}\nP(ER) slice {p.slices[name].iloc[k]:.2f}, patient {p.probabilities[name]:.2f}"
              for p, rows in chosen for k in rows]  # fmt: skip
    synthetic = " (SYNTHETIC training cohort)" if final.manifest["cohort"].get("synthetic") else ""
    shown = (f"patient {chosen[0][0].patient_id}: P(ER) {chosen[0][0].probabilities[name]:.2f}" if len(chosen) == 1
             else f"{len(chosen)} patients")  # fmt: skip
    title = f"The final {name}, profile {final.manifest['profile']['name']}{synthetic}: {shown}"
    return network_gradcam(final.networks[name], name, inputs, titles, title, layer_name, min_side)


def fold_gradcam(model_name: str, dataset, clinical: pd.DataFrame, folds: pd.DataFrame, profile, picked: pd.DataFrame,
                 stored: pd.DataFrame, seed: int, selection_protocol: str = DEFAULT_SETTINGS.selection_protocol, imagenet: str = "auto",
                 layer_name: str | None = None, title_suffix: str = "") -> tuple[GradCam, pd.DataFrame]:  # fmt: skip
    """Grad-CAM of one cross-validation fold's network on chosen test patients, the middle slice of each.

    The fold of the first picked patient is trained again with the run's seed and settings
    (``training.train_fold_isolated``: in a worker pinned as the cross-validation's were, the
    first training seed); its probabilities of the fold's test
    slices are checked against that seed's stored out-of-fold ones (a line says whether they
    agree within :data:`REPRODUCTION_TOLERANCE`).

    Args:
        dataset: ``preprocessing.study_dataset`` (notebook 02's processed slices).
        picked: ``patient_id, fold, y_true, y_prob, call, kind`` of the patients to show, all of
            one fold (``report.pick_explained_patients``).
        stored: the model's stored out-of-fold predictions (``evaluation.read_predictions``).
        layer_name: the feature map to explain; default the last one of the image pathway.
        title_suffix: appended to the figure's title (e.g. " (SYNTHETIC cohort)").

    Returns:
        the :class:`GradCam` and the picked patients' table with ``slice``,
        ``slice_prob_retrained``, ``model``, ``layer`` and ``reproduced``.
    """
    import keras

    from hccer_lib import training

    fold = int(picked["fold"].iloc[0])
    print(f"explaining {model_name}: retraining fold {fold} ({profile.epochs} epochs, seed {seed} + {fold})")
    model, data = training.train_fold_isolated(model_name, dataset, clinical, folds, profile, fold, seed=seed,
                                               selection_protocol=selection_protocol, imagenet=imagenet)  # fmt: skip
    retrained = pd.DataFrame({"patient_id": data.patient_id[data.test], "slice": data.slice[data.test],
                              "y_prob_retrained": training.predict_probability(model, data.subset(data.test),
                                                                                symmetries=profile.test_symmetries)})  # fmt: skip
    first_seed = stored["train_seed"] == seed if "train_seed" in stored else np.ones(len(stored), dtype=bool)
    check = stored[first_seed & (stored["fold"] == fold)].merge(retrained, on=["patient_id", "slice"], how="outer")
    max_difference = float((check["y_prob"] - check["y_prob_retrained"]).abs().max())
    reproduced = len(check) == len(retrained) and max_difference < REPRODUCTION_TOLERANCE
    print(f"retrained fold {fold} reproduces the stored out-of-fold predictions of its {len(retrained)} test slices: "
          f"{reproduced} (largest difference {max_difference:.2e})")

    rows, titles = [], []
    for r in picked.itertuples():
        mine = np.flatnonzero(data.test & (data.patient_id == r.patient_id))
        row = mine[np.argsort(data.slice[mine])][len(mine) // 2]  # the patient's middle slice
        rows.append(row)
        titles.append(f"{r.patient_id} ({'ER' if r.y_true else 'NER'}) slice {data.slice[row]}\nP(ER) {r.y_prob:.2f}: {r.kind}")
    rows = np.array(rows)
    inputs = {name: array[rows] for name, array in data.inputs.items()}
    result = network_gradcam(model, model_name, inputs, titles, f"Fold {fold} of {model_name}{title_suffix}", layer_name)
    slice_prob = training.predict_probability(model, inputs, symmetries=profile.test_symmetries)
    table = picked.assign(slice=data.slice[rows], slice_prob_retrained=slice_prob, model=model_name, layer=result.layer,
                          reproduced=reproduced)
    del model
    keras.backend.clear_session()
    return result, table
