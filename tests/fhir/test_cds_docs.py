"""docs/CDS_HOOKS.md is what scripts/cds_docs.py writes now: the code tables and the real answers of a live server."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cds_docs_script", ROOT / "scripts" / "cds_docs.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cds_document_is_current() -> None:
    """The LOINC/UCUM table, the rules, the discovery document, a card, a 412 and feedback equal today's output."""
    text = (ROOT / "docs" / "CDS_HOOKS.md").read_text()
    assert _script().document(_script().live_examples()) == text, "stale: run python scripts/cds_docs.py"


def test_mapping_table_lists_every_feature_and_its_loinc_codes() -> None:
    """The table is derived from the feature spec: every feature, every LOINC code and the service's own code."""
    from service.model.store import load_bundle

    table = _script().mapping_table()
    for feature in load_bundle().spec:
        assert feature.fhir is not None
        assert f"`urn:gshap-service:feature\\|{feature.name}`" in table
        for code in feature.fhir.codes:
            assert f"LOINC {code.code} {code.display}" in table
    assert "`mmol/L` (× 18.016)" in table
    assert "`pmol/L` (× 0.166667)" in table
