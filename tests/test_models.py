"""The model registry: one record per model, the paper's values as printed, read by every module and notebook."""

import re

import nbformat
import numpy as np
import pytest

from hccer_lib import cohort, evaluation, gradcam, models, networks, preprocessing, report, synth
from hccer_lib import radiomics_baseline as rb
from hccer_lib.runner import REPO_ROOT, list_notebooks

# Tables 3-5 of Wang et al. 2020 (section IV) as printed: model, average accuracy, average AUC.
PAPER_TABLES = {
    "table3": """Conventional radiomics model	67.04%±4.9	0.6400±0.03
Deep learning model	69.52%±5.1	0.7233±0.06""",
    "table4": """Deep learning model	69.52%±5.1	0.7233±0.06
Clinical model (RF)	76.03%±10.0	0.7532±0.13
Fusion model A	74.80%±4.1	0.7880±0.05
Fusion model B	78.05%±3.2	0.8045±0.08
Fusion model C	75.44%±7.0	0.7649±0.08
Fusion model D	78.66%±3.9	0.8248±0.07""",
    "table5": """Fusion model D without joint loss	78.66%±3.9	0.8248±0.07
Fusion model D with joint loss	80.49%±4.3	0.8331±0.03""",
}
ROW = re.compile(r"^(?P<name>.+?)\t(?P<acc>[\d.]+)%±(?P<acc_sd>[\d.]+)\t(?P<auc>[\d.]+)±(?P<auc_sd>[\d.]+)$")
MODEL_LITERAL = re.compile(r"[\"']((?:clinical|radiomics|deep|fusion)_[a-z0-9_]+)[\"']")


def notebook_code(path) -> str:
    return "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")


@pytest.mark.parametrize("table", sorted(PAPER_TABLES))
def test_paper_values_are_the_papers_tables(table):
    rows = [ROW.match(line).groupdict() for line in PAPER_TABLES[table].splitlines()]
    names = models.PAPER_TABLE_ROWS[table]
    assert len(rows) == len(names), (table, names)
    for row, name in zip(rows, names, strict=True):
        paper = models.get(name).paper
        got = (paper.accuracy_mean, paper.accuracy_sd, paper.auc_mean, paper.auc_sd)
        printed = tuple(float(row[k]) for k in ("acc", "acc_sd", "auc", "auc_sd"))
        assert got == printed, f"{table} {row['name']!r}: registry {got}, paper {printed}"
        assert row["name"].startswith(models.get(name).paper_name), (name, models.get(name).paper_name, row["name"])
        assert table in models.get(name).paper_tables, (name, models.get(name).paper_tables)


def test_the_registry_lists_each_model_once_with_its_kind_and_inputs():
    names = [m.name for m in models.REGISTRY]
    assert len(names) == len(set(names)), names
    assert models.MODEL_NAMES == ("clinical_rf", "radiomics_rf", "deep_resnet50", "fusion_a", "fusion_b", "fusion_c",
                                  "fusion_d", "fusion_d_joint"), models.MODEL_NAMES  # fmt: skip
    assert set(models.FOREST_MODELS) | set(models.NETWORK_MODELS) == set(models.MODEL_NAMES)
    assert sorted(models.PRIMARY_ORDER) == sorted(models.MODEL_NAMES), models.PRIMARY_ORDER
    assert models.FUSION_MODELS == ("fusion_a", "fusion_b", "fusion_c", "fusion_d", "fusion_d_joint")
    for m in models.REGISTRY:
        assert m.kind in models.KINDS and set(m.inputs) <= {"clinical", "radiomics", "image"}, m
        assert ("image" in m.inputs) == (m.kind == "network"), m
        assert m.variant_of is None or m.variant_of in models.MODEL_NAMES, m
        assert (m.paper is None) == (m.paper_name is None) == (not m.paper_tables), m
        assert (REPO_ROOT / "notebooks" / f"{m.notebook}.ipynb").is_file(), m
    assert models.get("fusion_d_joint").outputs == ["fusion_d_joint", "fusion_d_joint_image_head", "fusion_d_joint_clinical_head"]
    assert models.names(kind="clinical") == ["clinical_rf", "clinical_rf_strict", "clinical_lr"]
    assert np.isnan(models.paper_auc("clinical_rf_strict")) and models.paper_auc("fusion_d") == 0.8248
    with pytest.raises(ValueError, match="unknown model 'fusion_e'"):
        models.get("fusion_e")


def test_modules_read_the_registry():
    """The lists that modules name (networks.py, report.MODELS) are the registry's."""
    assert tuple(networks.MODEL_NAMES) == models.NETWORK_MODELS, "networks.MODEL_NAMES differs from the registry"
    assert report.MODELS == models.MODEL_NAMES
    assert rb.MODEL_NAME in models.names(kind="radiomics")
    assert {m for pair in report.STUDY_COMPARISONS for m in pair[1:3]} <= set(models.names())


def test_phases_are_defined_once():
    assert preprocessing.PHASES is cohort.PHASES and synth.PHASES is cohort.PHASES and rb.PHASES is cohort.PHASES
    assert gradcam.PHASE_NAMES is cohort.PHASES
    assert evaluation.PREDICTION_COLUMNS == ["patient_id", "slice", "fold", "y_true", "y_prob"]


@pytest.mark.parametrize("notebook", list_notebooks(), ids=lambda p: p.stem)
def test_every_model_a_notebook_names_is_registered(notebook):
    """A model name written in a notebook's code (a prediction file it writes or reads) is in the registry,
    and each registered model is named by, or read from the registry in, the notebook that trains it."""
    code = notebook_code(notebook)
    unknown = sorted(set(MODEL_LITERAL.findall(code)) - set(models.names()))
    assert not unknown, f"{notebook.name} names models that the registry lacks: {unknown}"
    for name in models.names(notebook=notebook.stem):
        assert (f'"{name}"' in code or "models.names(" in code
                or (name == rb.MODEL_NAME and "rb.MODEL_NAME" in code)), f"{notebook.name} does not name {name}"  # fmt: skip
