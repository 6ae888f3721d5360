"""Command-line entry points: ``python -m hccer_lib --help``.

Bad input in a cohort ends with one line naming the patient, the file and the problem,
and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys


def _cmd_synth(args: argparse.Namespace) -> int:
    from hccer_lib.synth import SynthConfig, generate_cohort

    generate_cohort(args.out, SynthConfig(seed=args.seed), overwrite=args.overwrite)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from hccer_lib.cohort import validate_cohort

    report = validate_cohort(args.cohort)
    print(report.summary())
    return 0


def _cmd_import_dicom(args: argparse.Namespace) -> int:
    from hccer_lib.dicom_import import import_dicom_series

    path = import_dicom_series(args.series, args.cohort, args.patient, args.phase)
    print(f"wrote {path}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from hccer_lib.runner import run_notebooks

    return run_notebooks(profile=args.profile, cohort=args.cohort, seed=args.seed)


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
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("import-dicom", help="import one DICOM CT series as a phase of a patient")
    p.add_argument("series", help="folder holding the DICOM files of one series")
    p.add_argument("--cohort", required=True, help="cohort folder to write into")
    p.add_argument("--patient", required=True, help="patient_id")
    p.add_argument("--phase", required=True, choices=["NC", "ART", "PV"])
    p.set_defaults(func=_cmd_import_dicom)

    p = sub.add_parser("run", help="run every notebook in order with papermill (run_all.sh)")
    p.add_argument("--profile", default="quick", choices=["smoke", "quick", "paper"])
    p.add_argument("--cohort", default=None, help="cohort folder (default: the synthetic cohort)")
    p.add_argument("--seed", type=int, default=2020)
    p.set_defaults(func=_cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hccer_lib.cohort import CohortError

    try:
        return args.func(args)
    except CohortError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
