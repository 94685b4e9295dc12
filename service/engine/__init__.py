"""The numerical core: GradientSHAP estimators (``gradient_shap``), the compiled exact kernel (``exact_kernel`` and
``_exact.c``), exact interventional Shapley values (``shapley``) and the baseline distribution (``baselines``).
No web framework."""
