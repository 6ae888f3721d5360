"""Command-line entry points: ``python -m hccer_lib --help``.

Bad input in a cohort ends with one line naming the patient, the file and the problem,
and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

#: TensorFlow's C++ log level for the command line: 2 hides its start-up INFO and WARNING
#: lines (absl, CPU features), so that a refused input is the one line on stderr. Errors show.
TF_LOG_LEVEL = "2"
#: Exit code of ``predict --cohort`` when some patients could not be predicted (their rows
#: in predictions.csv say why); 2 is bad input that stops the whole command.
PARTLY_PREDICTED = 1


#: The start-up lines that TensorFlow writes to stderr before it reads its log level (absl's notice, then INFO and
#: WARNING lines such as "I0000 00:00:... port.cc:153] oneDNN custom operations are on"), and the line that
#: continues the CPU-feature notice.
_TENSORFLOW_STARTUP = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IW]\d{4} \d\d:\d\d:|"
                                 r"To enable the following instructions: )")


def _tensorflow_startup_line(line: str) -> bool:
    """Whether ``line`` is one of TensorFlow's start-up INFO or WARNING lines (:data:`_TENSORFLOW_STARTUP`)."""
    return bool(_TENSORFLOW_STARTUP.match(line))


def _import_tensorflow_quietly() -> None:
    """Import Keras (and TensorFlow) with stderr held back, then write back all but TensorFlow's start-up lines.

    On CPUs where TensorFlow turns on its oneDNN operations it writes INFO lines to stderr when it loads, before it
    reads ``TF_CPP_MIN_LOG_LEVEL``; a refused input would then not be the one line on stderr. With the log level
    above 1 (the command line's default, :data:`TF_LOG_LEVEL`), those lines are dropped; any other line, and an
    error of the import, still show.
    """
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "")
    if "keras" in sys.modules or not level.isdigit() or int(level) < 2:
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import keras  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines() if not _tensorflow_startup_line(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def _cmd_synth(args: argparse.Namespace) -> int:
    from hccer_lib.synth import SynthConfig, generate_cohort

    generate_cohort(args.out, SynthConfig(seed=args.seed), overwrite=args.overwrite)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from hccer_lib.cohort import validate_cohort

    report = validate_cohort(args.cohort, clinical_only=args.clinical_only)
    print(report.summary())
    return 0


def _cmd_import_dicom(args: argparse.Namespace) -> int:
    from hccer_lib.dicom_import import import_dicom_series

    path = import_dicom_series(args.series, args.cohort, args.patient, args.phase)
    print(f"wrote {path}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from hccer_lib.cohort import CohortError
    from hccer_lib.outputs import from_working_folder
    from hccer_lib.runner import run_notebooks
    from hccer_lib.study_run import parse_settings

    try:  # the folders given here are relative to the working folder, the notebooks' to the project root
        return run_notebooks(profile=args.profile, cohort=from_working_folder(args.cohort), seed=args.seed,
                             imagenet="none" if args.random_init else "auto",
                             external_cohort=from_working_folder(args.external_cohort),
                             clinical_only=args.clinical_only, workers=args.workers,
                             executor=args.executor, settings=parse_settings(args.settings))
    except CohortError:  # a bad cohort: main() prints "error: <patient, file: problem>"
        raise
    except (ValueError, RuntimeError) as err:  # the ImageNet weights file missing, a bad --workers or --set, Ray missing
        print(f"hccer: {err}", file=sys.stderr)
        return 2


def _cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hccer_lib import explanations, model_folder, models, new_patients, outputs, prediction

    # bad input first (no model to load), read with the model folder's data dictionary
    patient = new_patients.read_patient_folder(args.patient, model_folder.peek_clinical_settings(args.model)) if args.patient else None
    try:
        model = model_folder.load_final_model(args.model)
    except model_folder.ModelFolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"model folder {args.model}: {model.describe()}")
    if args.cohort:
        out = Path(args.out or f"prediction_{Path(args.cohort).resolve().name}")
        patients, slices = prediction.predict_cohort(model, args.cohort)
        outputs.write_csv(out / "predictions.csv", patients)
        outputs.write_csv(out / "slices.csv", slices)
        failed = patients[patients["status"] == prediction.STATUS_FAILED]
        predicted = patients[patients["status"] == prediction.STATUS_OK]
        shown = (f": ER probability of {model.primary_model} {predicted[model.primary_model].min():.3f}.."
                 f"{predicted[model.primary_model].max():.3f}" if len(predicted) else "")  # fmt: skip
        print(f"{len(predicted)} of {len(patients)} patients predicted{shown}")
        for _, row in failed.iterrows():
            print(f"not predicted: patient {row['patient_id']}: {row['reason']}", file=sys.stderr)
        print(f"wrote {out / 'predictions.csv'} and {out / 'slices.csv'}")
        if len(failed):
            print(model.manifest["note"])
            return PARTLY_PREDICTED
    else:
        predicted = model.predict_patient(patient)
        out = Path(args.out or f"prediction_{patient.patient_id}")
        label = "unknown" if patient.y_true is None else str(patient.y_true)
        print(f"patient {patient.patient_id}: {len(predicted.slices)} tumour slices, early_recurrence in clinical.csv: {label}")
        primary = models.output_names(model.primary_model)
        shown = primary + [name for name in predicted.probabilities if name not in primary]
        for name in shown:
            role = {primary[0]: "  (the prediction" + (": fused head)" if primary[0].startswith("fusion") else ")"),
                    f"{primary[0]}_image_head": "  (image pathway head)",
                    f"{primary[0]}_clinical_head": "  (clinical pathway head)"}.get(name, "")  # fmt: skip
            print(f"  P(ER) {name:30s} {predicted.probabilities[name]:.3f}{role}")
        outputs.write_csv(out / "prediction.csv", prediction.prediction_frame([predicted]))
        outputs.write_csv(out / "slices.csv", predicted.slices)
        written = [out / "prediction.csv", out / "slices.csv"]
        explained = explanations.final_model_gradcam(model, [predicted])
        if explained is not None:
            import matplotlib.pyplot as plt

            written.append(outputs.save_figure(explained.figure, out / "gradcam.png"))
            plt.close(explained.figure)
        print("wrote " + ", ".join(str(p) for p in written))
    print(model.manifest["note"])
    return 0


def _cmd_external_validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hccer_lib import external_validation, model_folder

    out = Path(args.out or f"external_validation_{Path(args.cohort).resolve().name}")
    try:
        result = external_validation.validate_externally(args.model, args.cohort, args.development_cohort,
                                                         n_bootstrap=args.n_bootstrap, seed=args.seed, progress=True)
    except model_folder.ModelFolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # CohortError is a ValueError too: one line, exit 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    written = external_validation.write_external_validation(result, out)
    print("\n".join(result.summary_lines()))
    print(f"wrote {len(written)} files to {out}: " + ", ".join(sorted(p.name for p in written)))
    print(result.note)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hccer_lib",
        description="hccer: early recurrence of HCC from triple-phase CT and clinical data.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("synth", help="generate the seeded synthetic cohort folder")
    p.add_argument("--out", required=True, help="cohort folder to create")
    p.add_argument("--seed", type=int, default=2020, help="generator seed (default 2020)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cohort folder")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("validate", help="check a cohort folder; exit 2 with one line on bad input")
    p.add_argument("cohort", help="cohort folder (clinical.csv, images/<patient_id>/...)")
    p.add_argument("--clinical-only", action="store_true",
                   help="check the clinical table only and list the patients without images (as run --clinical-only)")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("import-dicom", help="import one DICOM CT series as a phase of a patient")
    p.add_argument("series", help="folder holding the DICOM files of one series")
    p.add_argument("--cohort", required=True, help="cohort folder to write into")
    p.add_argument("--patient", required=True, help="patient_id")
    p.add_argument("--phase", required=True, choices=["NC", "ART", "PV"])
    p.set_defaults(func=_cmd_import_dicom)

    p = sub.add_parser(
        "predict",
        help="ER probability of a new patient (or of every patient of a cohort) from a saved final model",
        description="Predict early recurrence with a model folder written by notebook 07 (<work_dir>/results/<profile>/final_model). "
        "A patient folder holds clinical.csv (one row; early_recurrence may be empty), NC/ART/PV.nii.gz and "
        "<phase>_roi.nii.gz label images and/or roi_boxes.csv. Prints the probability of every model and "
        "writes prediction.csv, slices.csv and gradcam.png (or, with --cohort, predictions.csv and slices.csv: "
        "a patient that cannot be predicted gets a row with status 'failed' and the reason, and the exit code is 1).",
    )
    p.add_argument("--model", required=True, help="model folder (manifest.json, ...)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--patient", help="one patient's folder")
    target.add_argument("--cohort", help="a cohort folder: predict every patient")
    p.add_argument("--out", default=None, help="output folder (default: prediction_<patient id or cohort name>)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "external-validate",
        help="apply the final models of one cohort to another labelled cohort: AUC with CI, calibration, decision curves, case-mix",
        description="External validation: predict every patient of a labelled cohort (its clinical table read as for "
        "predict --cohort: its own data_dictionary.yaml, else the model's, else the paper's columns; images as for "
        "predict --cohort) with a model folder written by notebook 07, and write to --out: "
        "external_discrimination (AUC, 95%% bootstrap CI), external_calibration (intercept with slope fixed at 1, slope), "
        "external_reliability.csv, external_decision_curve.csv, external_case_mix (Table 1 of both cohorts), "
        "external_predictions.csv and fig9_external_validation.png. Patients that cannot be predicted are left out and counted.",
    )
    p.add_argument("--model", required=True, help="model folder (manifest.json, ...), e.g. data/synthetic_seed2020/results/quick/final_model")
    p.add_argument("--cohort", required=True, help="the labelled cohort folder to validate on")
    p.add_argument("--out", default=None, help="output folder (default: external_validation_<cohort name>)")
    p.add_argument("--development-cohort", default=None,
                   help="the cohort the models were fitted on, for the case-mix table (default: the model folder's parent "
                   "when it holds a clinical table)")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples of the AUC interval (default 1000)")
    p.add_argument("--seed", type=int, default=2020, help="seed of the bootstrap (default 2020)")
    p.set_defaults(func=_cmd_external_validate)

    p = sub.add_parser("run", help="run every notebook in order with papermill (run_all.sh)")
    p.add_argument("--profile", default="quick", choices=["smoke", "quick", "paper"])
    p.add_argument("--cohort", default=None,
                   help="cohort folder (default: the synthetic cohort of --seed, data/synthetic_seed<N>)")
    p.add_argument("--seed", type=int, default=2020,
                   help="the run's seed: folds, models and the synthetic cohort's generator (default 2020)")
    p.add_argument("--random-init", action="store_true",
                   help="train the networks from random weights even where the profile fine-tunes ImageNet weights (paper)")
    p.add_argument("--external-cohort", default=None,
                   help="a labelled cohort on which notebook 09 validates the final models of notebook 07")
    p.add_argument("--clinical-only", action="store_true",
                   help="run the clinical study on every patient of --cohort and skip the notebooks that read images "
                   "(for a cohort where some patients have no images)")
    p.add_argument("--workers", default=None,
                   help="worker processes training the networks side by side (default: $HCCER_TRAINING_WORKERS, else one "
                   "per core for the quick profile); changes the time taken, not the results")
    p.add_argument("--executor", choices=("local", "ray"), default=None,
                   help="where the networks' trainings run: local processes (default, or $HCCER_EXECUTOR) or Ray tasks "
                   "($RAY_ADDRESS's cluster, else a local Ray instance; pip install -e '.[ray]'); changes the time, not the results")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                   help="change one of the study's settings for this run (repeatable): selection_protocol, alpha, "
                   "n_estimators, inner_folds, min_texture_voxels, e.g. --set alpha=0.01; it reaches every notebook "
                   "that uses it and run.json")
    p.set_defaults(func=_cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)  # before anything imports TensorFlow
    args = build_parser().parse_args(argv)
    if args.func in (_cmd_predict, _cmd_external_validate):  # they load saved networks
        _import_tensorflow_quietly()
    from hccer_lib.cohort import CohortError

    try:
        return args.func(args)
    except CohortError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
