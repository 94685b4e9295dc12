"""Operations: the Prometheus metrics (:mod:`service.observe.metrics`) and input/output drift monitoring against
the evaluation set (:mod:`service.observe.drift`). No web framework; the runtime records, the web layer serves."""
