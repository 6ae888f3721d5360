"""The model registry: one record per model of the study, read by every module and notebook.

Each model has a name (the stem of its ``<results_dir>/predictions/<name>.csv``), a kind
(``clinical``, ``radiomics`` or ``network``), the inputs it reads, the notebook that
cross-validates it and, where the paper reports it, the paper's name for it, its tables
and its values (Wang et al. 2020, section IV, Tables 3-5: accuracy in percent and AUC,
mean ± SD over the 10 folds, as printed):

| model | kind | inputs | notebook | the paper |
|---|---|---|---|---|
| ``clinical_rf`` | clinical | clinical | 01 | Table 4 "Clinical model (RF)" |
| ``clinical_rf_strict`` | clinical | clinical | 01 | (this study: selection inside each training fold) |
| ``clinical_lr`` | clinical | clinical | 01 | (this study: a logistic regression instead of the forest) |
| ``radiomics_rf`` | radiomics | radiomics | 03 | Table 3 "Conventional radiomics model" |
| ``deep_resnet50`` | network | image | 04 | Tables 3, 4 "Deep learning model" |
| ``fusion_a`` ... ``fusion_d`` | network | image, clinical | 05 | Table 4 "Fusion model A" ... "D"; D also Table 5 |
| ``fusion_d_joint`` | network | image, clinical | 06 | Table 5 "Fusion model D with joint loss" |

A *variant* (``variant_of``) is the same model fitted under another protocol or with another
classifier; the study's eight main models (:data:`MODEL_NAMES`) are the paper's, in the order of
the study.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("clinical", "radiomics", "network")
#: A network's pathway heads: a joint-loss model also outputs ``<name>_<head>_head``.
PATHWAY_HEADS = ("image", "clinical")
#: The rows of the paper's result Tables 3-5 (section IV), in its order.
PAPER_TABLE_ROWS: dict[str, tuple[str, ...]] = {
    "table3": ("radiomics_rf", "deep_resnet50"),
    "table4": ("deep_resnet50", "clinical_rf", "fusion_a", "fusion_b", "fusion_c", "fusion_d"),
    "table5": ("fusion_d", "fusion_d_joint"),
}
PAPER_TABLES = tuple(PAPER_TABLE_ROWS)


@dataclass(frozen=True)
class PaperValues:
    """What the paper prints for a model: accuracy (percent) and AUC, mean ± SD over its 10 folds."""

    accuracy_mean: float
    accuracy_sd: float
    auc_mean: float
    auc_sd: float

    def as_dict(self) -> dict[str, float]:
        return {"accuracy_mean": self.accuracy_mean, "accuracy_sd": self.accuracy_sd,
                "auc_mean": self.auc_mean, "auc_sd": self.auc_sd}  # fmt: skip


@dataclass(frozen=True)
class Model:
    """One model of the study.

    Attributes:
        name: the model's name, the stem of its predictions file.
        kind: ``"clinical"`` (random forest on the clinical vector), ``"radiomics"``
            (PyRadiomics features, LASSO, random forest) or ``"network"`` (Keras).
        inputs: what it reads: ``"clinical"`` (the binary clinical vector), ``"radiomics"``
            (feature rows), ``"image"`` (the processed three-phase slices ``[n, H, W, 3]``).
        notebook: the notebook that cross-validates it and writes its predictions.
        description: one line.
        paper_name: the paper's name for it (None: not in the paper).
        paper: the values the paper prints (None: not in the paper).
        variant_of: the main model it is a variant of (another protocol or classifier), or None.
        fusion: the fusion architecture of a fusion network (``"a"``-``"d"``, section II.D;
            ``networks.build_model``), or None.
    """

    name: str
    kind: str
    inputs: tuple[str, ...]
    notebook: str
    description: str
    paper_name: str | None = None
    paper: PaperValues | None = None
    variant_of: str | None = None
    fusion: str | None = None

    @property
    def paper_tables(self) -> tuple[str, ...]:
        """The paper's tables that report it (:data:`PAPER_TABLES`)."""
        return tuple(table for table, rows in PAPER_TABLE_ROWS.items() if self.name in rows)

    @property
    def outputs(self) -> list[str]:
        """The probabilities it gives: :func:`output_names`."""
        return output_names(self.name)


REGISTRY: tuple[Model, ...] = (
    Model("clinical_rf", "clinical", ("clinical",), "01_select_clinical",
          "random forest (500 trees) on the chi-squared-selected clinical vector, selected on the whole cohort",
          "Clinical model (RF)", PaperValues(76.03, 10.0, 0.7532, 0.13)),
    Model("clinical_rf_strict", "clinical", ("clinical",), "01_select_clinical",
          "the clinical random forest with its variables selected inside each training fold",
          variant_of="clinical_rf"),
    Model("clinical_lr", "clinical", ("clinical",), "01_select_clinical",
          "logistic regression (L2) on the same clinical vector and selection, beside the paper's forest",
          variant_of="clinical_rf"),
    Model("radiomics_rf", "radiomics", ("radiomics",), "03_radiomics_baseline",
          "PyRadiomics features, median imputation, standardisation, LASSO, random forest",
          "Conventional radiomics model", PaperValues(67.04, 4.9, 0.6400, 0.03)),
    Model("deep_resnet50", "network", ("image",), "04_deep_model",
          "ResNet50 on the three-phase slices, 2-neuron softmax",
          "Deep learning model", PaperValues(69.52, 5.1, 0.7233, 0.06)),
    Model("fusion_a", "network", ("image", "clinical"), "05_fusion_models",
          "fusion A: ResNet features and the clinical vector concatenated",
          "Fusion model A", fusion="a", paper=PaperValues(74.80, 4.1, 0.7880, 0.05)),
    Model("fusion_b", "network", ("image", "clinical"), "05_fusion_models",
          "fusion B: an image FC layer, then the clinical vector concatenated",
          "Fusion model B", fusion="b", paper=PaperValues(78.05, 3.2, 0.8045, 0.08)),
    Model("fusion_c", "network", ("image", "clinical"), "05_fusion_models",
          "fusion C: the clinical vector through a Conv1D layer",
          "Fusion model C", fusion="c", paper=PaperValues(75.44, 7.0, 0.7649, 0.08)),
    Model("fusion_d", "network", ("image", "clinical"), "05_fusion_models",
          "fusion D: the clinical vector through its own FC layer",
          "Fusion model D", fusion="d", paper=PaperValues(78.66, 3.9, 0.8248, 0.07)),
    Model("fusion_d_joint", "network", ("image", "clinical"), "06_joint_loss",
          "fusion D trained with the joint loss (fused, image and clinical heads)",
          "Fusion model D with joint loss", fusion="d", paper=PaperValues(80.49, 4.3, 0.8331, 0.03)),
)  # fmt: skip

_BY_NAME = {model.name: model for model in REGISTRY}

#: The study's main models (the paper's eight), in the order of the study.
MODEL_NAMES: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.variant_of is None)
#: The main models stored as random forests in a model folder, and the networks.
FOREST_MODELS: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.variant_of is None and m.kind != "network")
NETWORK_MODELS: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.variant_of is None and m.kind == "network")
#: The networks that fuse the image with the clinical vector (fusion A-D, D with the joint loss).
FUSION_MODELS: tuple[str, ...] = tuple(name for name in NETWORK_MODELS if "clinical" in _BY_NAME[name].inputs)
#: The fusion architecture (``"a"``-``"d"``) of each fusion network (``networks.FUSION_KINDS``).
FUSION_KINDS: dict[str, str] = {m.name: m.fusion for m in REGISTRY if m.fusion is not None}
#: The model whose probability is "the" prediction of a model folder: the first of these it holds.
PRIMARY_ORDER: tuple[str, ...] = (
    "fusion_d_joint", "fusion_d", "fusion_c", "fusion_b", "fusion_a", "deep_resnet50", "clinical_rf", "radiomics_rf",
)  # fmt: skip


def get(name: str) -> Model:
    """The record of model ``name``; ``ValueError`` naming the known ones when there is none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; the study's models are {', '.join(_BY_NAME)}") from None


def names(kind: str | None = None, notebook: str | None = None, variants: bool = True) -> list[str]:
    """The registered models, in registry order: of one ``kind`` and/or ``notebook``, with or without variants."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return [m.name for m in REGISTRY if (kind is None or m.kind == kind) and (notebook is None or m.notebook == notebook)
            and (variants or m.variant_of is None)]  # fmt: skip


def paper_values(name: str) -> PaperValues | None:
    """The paper's values of model ``name`` (None for a model or variant the paper does not report)."""
    model = _BY_NAME.get(name)
    return None if model is None else model.paper


def paper_auc(name: str) -> float:
    """The paper's fold-mean AUC of model ``name`` (NaN when the paper does not report it)."""
    paper = paper_values(name)
    return float("nan") if paper is None else paper.auc_mean


def output_names(model_name: str) -> list[str]:
    """The probabilities a model gives: its name (the fused head), plus ``<name>_image_head`` and
    ``<name>_clinical_head`` for a joint-loss model."""
    if model_name.endswith("_joint"):
        return [model_name] + [f"{model_name}_{head}_head" for head in PATHWAY_HEADS]
    return [model_name]
