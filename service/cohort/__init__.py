"""Cohort explanations: every record of a CSV or Parquet file (or a folder of Parquet files) explained into Parquet.

``gshap explain-cohort INPUT OUTPUT`` (:mod:`service.cli`) drives this package:

- :mod:`service.cohort.table` reads the input's layout (:func:`inspect_input`), and turns one Arrow table of
  input rows into one Arrow table of output rows (:class:`CohortExplainer`): each row is validated with the HTTP
  API's own rule (:class:`service.schemas.PatientRecord`), refused rows carry the API's problem document in
  ``error``, and the valid rows go through :meth:`service.runtime.inference.InferenceRuntime.explain`, the
  runtime behind ``POST /explain/batch``, so the numbers are the service's, bit for bit;
- :mod:`service.cohort.engines` runs that per-batch function over the whole input: ``local`` streams the input
  in batches in this process (flat memory, a tqdm progress bar), ``ray`` maps it over a Ray Data dataset
  (``map_batches`` with a callable class: the bundle and the engine load once per Ray worker), on a local Ray
  that it starts or on a cluster (``--ray-address``). Both write one Parquet file, in input order, through
  :class:`CohortWriter` (to ``OUTPUT.partial``, renamed when complete).

A refused row's problem is the same document the API answers (:func:`service.problems.problem_body`); the package
imports nothing of the web layer and no web framework (a contract in pyproject.toml), so Ray workers load neither.
The columns, the record rule and the feature order follow the bundle explained (its ``spec``), never a constant.
"""

from service.cohort.table import (
    CohortExplainer,
    CohortInput,
    CohortInputError,
    CohortWriter,
    inspect_input,
    output_schema,
)

__all__ = [
    "CohortExplainer",
    "CohortInput",
    "CohortInputError",
    "CohortWriter",
    "inspect_input",
    "output_schema",
]
