#!/usr/bin/env bash
# Run the whole study: set-up if needed, then every notebooks/NN_*.ipynb in order (papermill).
#
#   ./run_all.sh [--profile smoke|quick|paper] [--cohort DIR [--clinical-only]] [--seed N] [--random-init] [--workers N]
#                [--executor local|ray]
#
# --random-init: train the networks from random weights where the profile (paper) fine-tunes
# ImageNet weights; without it the paper profile refuses to start when the weights file is missing.
# --clinical-only: the clinical study on every patient of --cohort, the notebooks that read images
# skipped (a cohort where some patients have no images is refused without it; docs/real_cohorts.md).
# --workers N: worker processes training the networks side by side (default: one per core in the
# quick profile); the results do not depend on it.
# --executor ray: the networks' trainings as Ray tasks, on $RAY_ADDRESS's cluster or a local Ray
# instance (needs `pip install -e '.[ray]'`; README, "Many GPUs or a Ray cluster"); same results.
# --set NAME=VALUE (repeatable): one of the study's settings for this run (selection_protocol, alpha,
# n_estimators, inner_folds, min_texture_voxels), e.g. --set alpha=0.01; README, "The notebooks".
#
# Default: the `quick` profile on the synthetic cohort of seed 2020 (generated in data/synthetic_seed2020;
# --seed N: data/synthetic_seed<N>). Tables, figures and run.json go to figures/<cohort>/<profile>/,
# executed notebooks to executed/<cohort>/<profile>/, predictions to data/<cohort>/results/<profile>/.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh
exec python -m hccer_lib run "$@"
