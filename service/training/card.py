"""The words of the model card that the numbers cannot say: intended use, population, limitations, update policy.

Written into the bundle's manifest (``card``) by ``gshap train``, so that the text travels with the model it
describes; ``GET /model`` serves it next to the measured numbers. The Pima text is used when the bundle is trained
on the shipped Pima data; any other data set gets a neutral text that says what is not known. No web framework.
"""

from __future__ import annotations

from typing import Any

from service.model.features import FeatureSpec

__all__ = ["card_text"]

PIMA_FILE = "pima-indians-diabetes.csv"

_PIMA: dict[str, Any] = {
    "intended_use": (
        "Decision support for estimating the probability that an adult woman would test positive for diabetes "
        "(WHO criteria, oral glucose tolerance test), from eight routinely recorded values, with an explanation of "
        "which values drive the estimate. It supports, and does not replace, a clinician's judgement: every answer "
        "shows its inputs, the imputed values, the calibrated risk and the attribution of each input, so the "
        "clinician can review the basis of the estimate independently."
    ),
    "intended_users": [
        "clinicians reviewing a patient's diabetes risk, who see the inputs, the risk and its explanation",
        "developers of clinical applications and EHR integrations, and reviewers of such integrations",
    ],
    "out_of_scope_uses": [
        "diagnosis: the model estimates a risk; diabetes is diagnosed by laboratory criteria",
        "men, children and adolescents (no one under 21 and no man is in the data)",
        "pregnant patients' gestational diabetes screening (the data do not record current pregnancy)",
        "populations other than the one sampled, without local validation (see population)",
        "treatment decisions, triage or resource allocation without a clinician's review",
        "monitoring over time: each answer is a single cross-sectional estimate",
    ],
    "population": {
        "description": (
            "One population: 768 women aged 21 and over of Pima Indian heritage living near Phoenix, Arizona, "
            "examined by the US National Institute of Diabetes and Digestive and Kidney Diseases; the data set "
            "was donated in 1990 and its records were collected decades ago (first published use 1988)."
        ),
        "sex": "female only",
        "age_years": "21 to 81",
        "outcome_prevalence": "268 of 768 (34.9%) tested positive",
        "provenance": "data/PROVENANCE.md (source, licence, sha256 of the CSV)",
        "quirks": [
            "zeros in glucose, blood pressure, skin thickness, insulin and BMI are physiologically impossible and "
            "mean 'not measured' (insulin is missing in 374 of 768 records, skin thickness in 227); the service "
            "treats 0 or null in these fields as not measured, never as a measurement",
            "the pedigree function is a score specific to this study, not a standard clinical measure",
            "'pregnancies' counts past pregnancies; current pregnancy is not recorded",
        ],
    },
    "not_measured": (
        "Glucose, blood pressure, skin thickness, insulin and BMI may be null, 0 or omitted: the value is treated "
        "as not measured and replaced by the training split's median (shown per input as imputed_with); the answer "
        "lists it in `imputed` and the explanation marks it. Pregnancies, pedigree and age are required. Values "
        "outside the range seen in training are accepted within the valid range and flagged with a warning."
    ),
    "development_and_validation": (
        "Stratified, seeded split of the 768 records: 460 training, 154 validation, 154 test (evaluation). "
        "Median imputation and standardisation fitted on the training split only. An 8-64-64-1 ReLU network "
        "(BatchNorm, dropout) trained with class-weighted cross-entropy and early stopping on the validation loss. "
        "Its logit is then recalibrated by Platt scaling (a*logit + b) fitted on the validation split, and the "
        "decision threshold is Youden's J on the validation split's calibrated probabilities. The test split is "
        "used only for the reported metrics (95% percentile bootstrap intervals, 2000 resamples), next to a "
        "logistic-regression reference treated the same way and a 5-fold cross-validation of the development rows. "
        "This is internal validation on one historical population: there is no external validation."
    ),
    "limitations": [
        "no external validation: performance in another population, era or care setting is unknown",
        "a small evaluation set (154 records, 54 positives): every interval is wide, and subgroup intervals "
        "(15 to 85 records a band) are wider still",
        "calibrated on 154 validation records: the calibration is itself uncertain (see metrics.calibration)",
        "the data are decades old, from one community with a high diabetes prevalence (35%): risks will be "
        "too high where diabetes is rarer, unless recalibrated locally",
        "imputed values (often insulin and skin thickness) carry no patient information; many imputed inputs "
        "make the estimate closer to an average patient's",
        "an explanation describes the model, not the biology: attributions say what moved the model's output "
        "relative to the training population, not what causes diabetes",
    ],
    "update_schedule": (
        "No scheduled retraining: the model changes only with a new bundle version (model_version in every "
        "answer and in the X-Model-Version header). Retraining with `gshap train` reproduces the bundle byte for "
        "byte; a new bundle is published with its own card, metrics and calibration."
    ),
}


def card_text(spec: FeatureSpec, data_file: str) -> dict[str, Any]:
    """The card's words for a model trained on ``data_file`` with features ``spec``."""
    if data_file == PIMA_FILE and {"glucose", "bmi", "age"} <= set(spec.names):
        return dict(_PIMA)
    unknown = "not recorded for this data set: describe it before serving this model to clinicians"
    return {
        "intended_use": f"estimating the probability of '{spec.target_label}' from {len(spec)} inputs ({unknown})",
        "intended_users": [unknown],
        "out_of_scope_uses": [unknown],
        "population": {"description": unknown, "provenance": unknown, "quirks": []},
        "not_measured": "inputs marked as possibly missing are imputed with the training median and reported",
        "development_and_validation": (
            "stratified seeded train/validation/test split; preprocessing fitted on training only; Platt scaling "
            "and threshold on validation; metrics on test with bootstrap intervals"
        ),
        "limitations": ["no external validation", unknown],
        "update_schedule": "a new bundle version for every retraining",
    }
