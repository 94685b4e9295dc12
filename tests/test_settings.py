"""The settings are grouped by concern while every GSHAP_* name stays GSHAP_<FIELD>."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import ENV_PREFIX, SETTING_GROUPS, Settings


def test_every_setting_is_in_exactly_one_group_in_the_class_order() -> None:
    """Each field of Settings belongs to one group, and the class lists the fields group after group."""
    grouped = [name for _, names in SETTING_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(Settings.model_fields), set(grouped) ^ set(Settings.model_fields)
    assert len(grouped) == len(set(grouped))
    assert grouped == list(Settings.model_fields)


def test_grouped_views_read_the_same_environment_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """GSHAP_<FIELD> still sets each field, and the group objects carry those values."""
    env = {
        "ENGINE_THREADS": "3",
        "ENGINE_PROCESSES": "2",
        "MAX_COALESCE": "7",
        "BATCH_WINDOW_MS": "0.5",
        "TORCH_THREADS": "2",
        "PLOT_THREADS": "4",
        "MAX_BATCH_RECORDS": "9",
        "MAX_N_SAMPLES": "33",
        "MONITORING_WINDOW_SECONDS": "120",
        "MONITORING_MIN_RECORDS": "11",
        "METRICS_DIR": str(tmp_path),
        "CDS_FHIR_SERVERS": "https://a.example/fhir,https://b.example/fhir",
        "CDS_BASE_URL": "https://gshap.example",
        "FHIR_MAX_ENTRIES": "50",
        "FHIR_MAX_PAGES": "3",
        "MAX_HEADER_BYTES": "4096",
    }
    for name, value in env.items():
        monkeypatch.setenv(f"{ENV_PREFIX}{name}", value)
    s = Settings()
    assert (s.engine.threads, s.engine.processes, s.engine.max_coalesce) == (3, 2, 7)
    assert (s.engine.batch_window_ms, s.engine.torch_threads, s.engine.plot_threads) == (0.5, 2, 4)
    assert (s.limits.max_batch_records, s.limits.max_n_samples) == (9, 33)
    assert (s.monitoring.window_seconds, s.monitoring.min_records, s.monitoring.metrics_dir) == (120.0, 11, tmp_path)
    assert s.cds_fhir.fhir_servers == ("https://a.example/fhir", "https://b.example/fhir")
    assert (s.cds_fhir.base_url, s.cds_fhir.fhir_max_entries, s.cds_fhir.fhir_max_pages) == (
        "https://gshap.example",
        50,
        3,
    )
    assert s.limits.max_header_bytes == 4096
    # and the flat names are the same values (the rest of the service reads them)
    assert (s.engine_threads, s.max_batch_records, s.monitoring_min_records) == (3, 9, 11)
