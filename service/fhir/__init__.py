"""FHIR R4 input and CDS Hooks 2.0 output: no web framework here (the routes in ``service.api.routes.cds`` and
``service.api.routes.fhir`` translate HTTP to these functions and back).

- :mod:`service.fhir.resources`: parsing of Bundles, Patients and Observations (``fhir.resources`` R4B models,
  which read R4 data for these resources) with problems that name the field;
- :mod:`service.fhir.extract`: from a Patient and Observations to a model record with provenance per value, the
  units converted by the feature specification's table (:mod:`service.model.features`);
- :mod:`service.fhir.cdshooks`: the CDS Hooks 2.0 wire models, the discovery document (prefetch templates derived
  from the feature specification) and the JSON rules (no null, no empty string/array/object);
- :mod:`service.fhir.card`: the card (risk, drivers with value, unit, date and direction, missing inputs, warnings,
  population, completeness);
- :mod:`service.fhir.server`: the outgoing FHIR search calls (allow-listed base URLs, bearer token, timeout, cap);
- :mod:`service.fhir.feedback`: the durable feedback store (SQLite; no patient values).
"""
