"""The ``gshap`` command: train, bundle, groups, figures, serve, sign, keygen, openapi, problems, explain-cohort.

Each sub-command is a thin shell around a library function, so that tests and integrators can call the
same code without a subprocess.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]


def _train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from service.model.spec import SpecError
    from service.training.data import spec_data_path
    from service.training.pipeline import save_result, set_default
    from service.training.train import TrainConfig, train

    try:
        spec = _train_spec(args)
    except (SpecError, OSError, ValueError) as exc:
        print(f"gshap train: {exc}", file=sys.stderr)
        return 2
    data = args.data or spec_data_path(spec, args.spec)
    if data is None:
        print(f"gshap train: the spec {args.spec} names no training.data; give --data FILE.csv", file=sys.stderr)
        return 2
    config = TrainConfig.from_spec(
        spec.training,
        seed=args.seed,
        max_epochs=args.epochs,
        learning_rate=args.lr,
        patience=args.patience,
        n_baselines=args.baselines,
    )
    t0 = time.perf_counter()
    bar = tqdm(total=config.max_epochs, desc="epochs", unit="epoch", file=sys.stderr, dynamic_ncols=True)

    def progress(row: dict[str, float]) -> None:
        bar.update(1)
        bar.set_postfix(train_loss=f"{row['train_loss']:.4f}", val_loss=f"{row['val_loss']:.4f}")

    def stage(msg: str) -> None:
        bar.write(f"· {msg}", file=sys.stderr)

    try:
        result = train(data, spec, config, progress=progress, stage=stage)
    except ValueError as exc:  # the CSV does not fit the spec: named column, rule and row
        bar.close()
        print(f"gshap train: {exc}", file=sys.stderr)
        return 2
    bar.close()
    stage("explaining the evaluation set and summarising the outcome groups")
    name, version = args.name or spec.name, args.version or spec.version
    folder = save_result(result, Path(args.out), name, version)
    if args.set_default:
        set_default(Path(args.out), name, version)
    print(_summary_table(result.metrics, result.best_epoch, len(result.history)))
    print(f"bundle written to {folder} in {time.perf_counter() - t0:.1f} s")
    return 0


def _train_spec(args: argparse.Namespace) -> Any:
    """The model spec ``gshap train`` trains: ``--spec`` (a YAML model spec, or the older FeatureSpec JSON,
    which gets the seed MLP), or a bare spec of ``--data``'s columns with ``--target``, or the Pima spec."""
    from service.model.features import FeatureSpec
    from service.model.spec import load_spec, spec_from_dict, spec_from_legacy_manifest
    from service.training.data import DEFAULT_SPEC

    if args.spec:
        text = Path(args.spec).read_text()
        if Path(args.spec).suffix == ".json" and '"target_column"' in text:  # a FeatureSpec.to_dict() file
            legacy = {"name": args.name or "model", "version": args.version or "1.0.0", "features": json.loads(text)}
            return spec_from_dict(spec_from_legacy_manifest(legacy))
        return load_spec(args.spec)
    if args.data and args.target:
        import pandas as pd

        cols = [c for c in pd.read_csv(args.data, nrows=0).columns if c != args.target]
        features = FeatureSpec.from_columns(cols, args.target, missing_zero=args.missing_zero or ())
        stem = "".join(c if c.isalnum() else "-" for c in Path(args.data).stem.lower()).strip("-") or "model"
        legacy = {"name": args.name or stem, "version": args.version or "1.0.0", "features": features.to_dict()}
        return spec_from_dict(spec_from_legacy_manifest(legacy))
    return load_spec(DEFAULT_SPEC)


def _bundle(args: argparse.Namespace) -> int:
    from service.model.spec import SpecError, load_spec
    from service.training.package import PackageError, package

    try:
        spec = load_spec(args.spec)
        folder = package(
            spec,
            Path(args.weights),
            Path(args.reference),
            Path(args.evaluation),
            validation=Path(args.validation) if args.validation else None,
            calibrate=args.calibrate,
            out=Path(args.out),
        )
    except (SpecError, PackageError) as exc:
        print(f"gshap bundle: {exc}", file=sys.stderr)
        return 2
    if args.set_default:
        from service.training.pipeline import set_default

        set_default(Path(args.out), spec.name, spec.version)
    print(f"bundle written to {folder} (verified: checksums, and the spec's network against the weights)")
    return 0


def _summary_table(metrics: dict[str, Any], best_epoch: int, epochs: int) -> str:
    rows = ["accuracy", "roc_auc", "sensitivity", "specificity", "precision", "f1", "brier"]
    m, lr = metrics["mlp"], metrics["logistic_regression"]

    def cell(d: dict[str, float]) -> str:
        return f"{d['value']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"

    lines = [
        f"{metrics['evaluation_set']}; 95% bootstrap intervals; best epoch {best_epoch} of {epochs} run",
        f"{'metric':<12} {'MLP':<24} {'logistic regression':<24}",
    ]
    lines += [f"{r:<12} {cell(m[r]):<24} {cell(lr[r]):<24}" for r in rows]
    cv = metrics["cross_validation"]
    lines.append(
        f"{'cv roc_auc':<12} {cv['mlp_roc_auc']['mean']:.3f} ± {cv['mlp_roc_auc']['std']:.3f}{'':<11}"
        f"{cv['logistic_roc_auc']['mean']:.3f} ± {cv['logistic_roc_auc']['std']:.3f}  ({cv['folds']}-fold)"
    )
    lines.append(f"{'threshold':<12} {m['threshold']:<24.4f} {lr['threshold']:<24.4f}")
    c, cl = m["confusion_matrix"], lr["confusion_matrix"]
    lines.append(f"{'confusion':<12} {_cm(c):<24} {_cm(cl):<24}")
    cal = metrics.get("calibration")
    if cal:
        for name, shown in (("ece", "ECE"), ("mean_predicted", "mean risk")):
            before_after = [
                f"{cal[k]['before'][name]['value']:.3f} → {cal[k]['after'][name]['value']:.3f}"
                for k in ("mlp", "logistic_regression")
            ]
            lines.append(f"{shown:<12} {before_after[0]:<24} {before_after[1]:<24} (before → after calibration)")
        prevalence = cal["mlp"]["after"]["observed_prevalence"]
        lines.append(f"{'prevalence':<12} {cell(prevalence):<24}")
    return "\n".join(lines)


def _cm(c: dict[str, int]) -> str:
    return f"TN {c['tn']} FP {c['fp']} FN {c['fn']} TP {c['tp']}"


def _groups(args: argparse.Namespace) -> int:
    from service.model.store import load_bundle, write_groups
    from service.training.pipeline import compute_groups

    bundle = load_bundle(args.model)
    write_groups(bundle.path, compute_groups(bundle))
    print(f"group summaries rewritten in {bundle.path / 'groups.json'}")
    return 0


def _figures(args: argparse.Namespace) -> int:
    from service.training.figures import write_figures

    for path in write_figures(args.model, Path(args.out), record=args.record):
        print(path)
    return 0


def _serve(args: argparse.Namespace) -> int:
    # The cyclic GC stays off while the server starts: the app's lifespan collects once, freezes what is alive and
    # turns it back on before /readyz answers 200 (service.api.app._start); until then its automatic full
    # collections only scanned the same start-up objects again (two of ~30 and ~65 ms, ~0.1 s of the cold start).
    gc.disable()
    from service.api.app import serve
    from service.api.cds_auth import JwksSourceError
    from service.config import Settings

    # --model X (repeatable): NAME[@VERSION] from the store, or a bundle folder when X contains a "/"
    paths = [m for m in args.model or () if "/" in m or m in (".", "..")]
    choices = [m for m in args.model or () if m not in paths]
    if len(paths) > 1 or (paths and choices):
        print(
            "gshap serve: give one bundle folder, or NAME[@VERSION] choices from the store, not both", file=sys.stderr
        )
        return 2
    overrides = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "workers": args.workers,
            "model_path": paths[0] if paths else None,
            "models": choices or None,
        }.items()
        if v is not None
    }
    try:
        return serve(Settings(**overrides))
    except JwksSourceError as exc:  # a CDS client's JWK Set that is not there: refused before anything starts
        print(f"gshap serve: {exc}", file=sys.stderr)
        return 2


def _sign(args: argparse.Namespace) -> int:
    from service.model.signing import SigningKeyError, load_private_key, sign_bundle
    from service.model.store import load_bundle

    try:
        key = load_private_key(args.key)
    except SigningKeyError as exc:
        print(f"gshap sign: {exc}", file=sys.stderr)
        return 2
    for folder in args.bundle:
        load_bundle(folder)  # only a bundle that verifies is signed (BundleError: exit 2)
        signature = sign_bundle(folder, key)
        print(f"signed {folder} with {signature.key}")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from service.model.signing import SigningKeyError, generate_key

    try:
        key = generate_key(Path(args.out))
    except SigningKeyError as exc:
        print(f"gshap keygen: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out} (private: keep it off the servers) and {args.out}.pub (trust it: GSHAP_TRUSTED_KEYS); {key}"
    )
    return 0


def _explain_cohort(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.cohort import CohortInputError, inspect_input
    from service.cohort.engines import CohortStoppedError, run_cohort
    from service.cohort.table import check_output
    from service.contract import MIN_N_SAMPLES
    from service.model.store import BundleError, load_bundle
    from service.runtime.inference import ExplainOptions
    from service.schemas import ExplainSettings

    try:  # the columns, the default method and the methods offered are the served model's
        args.model = _model_folder(args.model)
        served = load_bundle(args.model)
    except BundleError as exc:
        print(f"gshap explain-cohort: {exc}", file=sys.stderr)
        return 2
    method = args.method or served.default_method
    if method not in served.methods:
        offered = ", ".join(served.methods)
        print(
            f"gshap explain-cohort: --method {method} does not apply to this model (it offers {offered})",
            file=sys.stderr,
        )
        return 2
    try:  # the settings follow the API's rules (ExplainSettings, and the method's least n_samples)
        chosen = {"method": method, "n_samples": args.n_samples, "seed": args.seed, "output": args.output}
        settings = ExplainSettings.model_validate(chosen)
    except ValidationError as exc:
        bad = "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        print(f"gshap explain-cohort: {bad}", file=sys.stderr)
        return 2
    low = MIN_N_SAMPLES[settings.method]
    if settings.n_samples is not None and settings.n_samples < low:
        print(f"gshap explain-cohort: --n-samples must be at least {low} for --method {method}", file=sys.stderr)
        return 2
    if args.engine == "local" and (args.ray_address or args.num_cpus or args.ray_workers):
        print("gshap explain-cohort: --ray-address, --num-cpus and --ray-workers need --engine ray", file=sys.stderr)
        return 2
    try:
        inp = inspect_input(args.input, served.spec, drop=args.drop or ())
    except CohortInputError as exc:
        print(f"gshap explain-cohort: {exc}", file=sys.stderr)
        return 2
    try:
        check_output(args.out)
    except CohortInputError as exc:
        print(f"gshap explain-cohort: {exc}", file=sys.stderr)
        return 2
    options = ExplainOptions(
        method=settings.method, n_samples=settings.n_samples, seed=settings.seed, output=settings.output
    )
    try:
        result = run_cohort(
            inp,
            args.out,
            engine=args.engine,
            model_path=args.model,
            options=options,
            batch_size=args.batch_size,
            ray_address=args.ray_address,
            num_cpus=args.num_cpus,
            workers=args.ray_workers,
            progress=not args.no_progress,
        )
    except CohortStoppedError as exc:  # the rows explained before the stop are kept in OUTPUT.partial
        print(f"gshap explain-cohort: {exc}", file=sys.stderr)
        return 2
    print(
        f"{result.rows} rows ({result.rows - result.refused} explained, {result.refused} refused) in "
        f"{result.seconds:.1f} s, {result.records_per_second:.0f} records/s, engine {result.engine} "
        f"({result.workers} worker{'s' if result.workers != 1 else ''}) -> {result.output}"
    )
    return 1 if result.refused else 0


def _model_folder(choice: str | None) -> str | None:
    """``--model``: a bundle folder (a path with a ``/``, or an existing folder) as it is, or ``NAME[@VERSION]``
    from the store (GSHAP_MODEL_STORE) resolved to its bundle folder (NAME alone: its default version)."""
    if choice is None or "/" in choice or Path(choice).is_dir():
        return choice
    from service.config import Settings
    from service.model.repository import parse_choice, plan_store

    name, version = parse_choice(choice)
    plan = plan_store(Settings().model_store, [choice])
    model = plan.models[name]
    return str(model.versions[version or model.default_version])


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _write_or_check(out: Path, text: str, *, check: bool, source: str, command: str) -> int:
    """Write a generated file, or with ``check`` say whether it equals ``text`` (exit 1 if not)."""
    if check:
        if not out.is_file() or out.read_text() != text:
            print(f"{out} differs from {source}; run: {command}", file=sys.stderr)
            return 1
        print(f"{out} matches {source}")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def _openapi(args: argparse.Namespace) -> int:
    from service.api.app import openapi_yaml

    return _write_or_check(
        Path(args.out), openapi_yaml(), check=args.check, source="the spec the app serves", command="gshap openapi"
    )


def _problems(args: argparse.Namespace) -> int:
    from service.api.errors import problems_markdown

    return _write_or_check(
        Path(args.out),
        problems_markdown(),
        check=args.check,
        source="the service's problem types",
        command="gshap problems",
    )


def _db(args: argparse.Namespace) -> int:
    """``gshap db upgrade`` and ``gshap db import SQLITE_FILE``: the CDS state database of GSHAP_DATABASE_URL (else
    the SQLite file), migrated under its lock; an import moves an SQLite feedback store into PostgreSQL."""
    from service.config import Settings
    from service.fhir.feedback import import_sqlite
    from service.fhir.state import StoreUnavailableError, migrate, open_database

    settings = Settings()
    url = settings.database_url.get_secret_value() if settings.database_url is not None else None
    if args.db_command == "import" and url is None:
        print(
            "gshap db import: set GSHAP_DATABASE_URL (postgresql://...) to the database to import into", file=sys.stderr
        )
        return 2
    try:
        db = open_database(
            url, settings.feedback_db_path(), pool_size=1, timeout=max(settings.database_timeout_seconds, 10.0)
        )
        try:
            before, after = migrate(db)
            print(f"{db.describe}: schema version {before} -> {after}")
            if args.db_command == "import":
                counts = import_sqlite(db, Path(args.sqlite_file), max_rows=settings.cds_feedback_max_rows)
                print(
                    f"imported {counts['copied']} feedback rows and {counts['cards']} cards from {args.sqlite_file} "
                    f"({counts['reasons_dropped']} override reasons not among the service's codes dropped, "
                    f"{counts['skipped']} rows skipped: unreadable or past GSHAP_CDS_FEEDBACK_MAX_ROWS)"
                )
        finally:
            db.close()
    except (StoreUnavailableError, OSError, ValueError) as exc:
        print(f"gshap db {args.db_command}: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gshap", description="GradientSHAP explanation service")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model spec's network on a CSV and write its bundle")
    p.add_argument(
        "--spec",
        default=None,
        help="model spec YAML (docs/MODEL_SPEC.md; default: model_store/specs/pima-diabetes.yaml); "
        "a FeatureSpec JSON file still works and gets the seed MLP",
    )
    p.add_argument("--data", default=None, help="CSV with a header row (default: the spec's training.data)")
    p.add_argument("--out", default="model_store", help="store folder; the bundle goes to OUT/NAME/VERSION")
    p.add_argument("--seed", type=int, default=None, help="seed of every draw (default: the spec's, else 42)")
    p.add_argument("--name", default=None, help="store name (default: the spec's name)")
    p.add_argument("--version", default=None, help="version (default: the spec's version)")
    p.add_argument("--target", default=None, help="target column, for a CSV without a --spec")
    p.add_argument("--missing-zero", nargs="*", default=None, help="columns whose 0 means not measured")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience in epochs")
    p.add_argument("--baselines", type=int, default=None, help="size of the baseline distribution")
    p.add_argument("--set-default", action="store_true", help="point OUT/DEFAULT at the new bundle")
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "bundle",
        help="package a network trained elsewhere (safetensors state dict + model spec) into a bundle",
        description=(
            "Package a torch.nn.Sequential trained elsewhere. The weights are its state dict saved with safetensors "
            "(a .pt pickle is refused, with the command that converts it). The reference CSV gives the imputation "
            "medians and the baseline distribution; the validation CSV, when given, fits the calibration and the "
            "threshold (without it: calibration none, threshold 0.5); the evaluation CSV, with the outcome "
            "column, gives the metrics and the outcome groups."
        ),
    )
    p.add_argument("--spec", required=True, help="model spec YAML whose network describes the weights")
    p.add_argument("--weights", required=True, help="MODEL.safetensors: the Sequential's state dict")
    p.add_argument("--reference", required=True, help="REFERENCE.csv: feature columns (the training data's)")
    p.add_argument("--evaluation", required=True, help="EVALUATION.csv: feature columns and the outcome column")
    p.add_argument("--validation", default=None, help="VALIDATION.csv: feature and outcome columns")
    p.add_argument(
        "--calibrate",
        choices=["platt", "none"],
        default=None,
        help="calibration fitted on --validation (default: platt with --validation, none without)",
    )
    p.add_argument("--out", default="model_store", help="store folder; the bundle goes to OUT/NAME/VERSION")
    p.add_argument("--set-default", action="store_true", help="point OUT/DEFAULT at the new bundle")
    p.set_defaults(func=_bundle)

    p = sub.add_parser("groups", help="recompute the outcome-group summaries of an existing bundle")
    p.add_argument("--model", default=None, help="bundle folder or store (default: the served default)")
    p.set_defaults(func=_groups)

    p = sub.add_parser("figures", help="write PNG and SVG figures for a bundle")
    p.add_argument("--model", default=None, help="bundle folder or store (default: the served default)")
    p.add_argument("--out", default="docs/figures")
    p.add_argument("--record", type=int, default=0, help="evaluation-set index of the waterfall's record")
    p.set_defaults(func=_figures)

    p = sub.add_parser("serve", help="serve the REST API with uvicorn")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="NAME[@VERSION]",
        help="serve this model (every version) or version from the store (GSHAP_MODEL_STORE), repeatable; or one "
        "bundle folder (a path with a /) served alone. Default: every version of every model in the store",
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser("sign", help="sign bundles' SHA256SUMS with an Ed25519 key (writes SIGNATURE)")
    p.add_argument("bundle", nargs="+", metavar="BUNDLE", help="bundle folder(s), verified before signing")
    p.add_argument("--key", required=True, help="Ed25519 private key file (PEM or OpenSSH, no passphrase)")
    p.set_defaults(func=_sign)

    p = sub.add_parser("keygen", help="make an Ed25519 key pair for gshap sign (OUT and OUT.pub)")
    p.add_argument("--out", required=True, help="private key file to write (mode 0600); the public key is OUT.pub")
    p.set_defaults(func=_keygen)

    p = sub.add_parser(
        "explain-cohort",
        help="explain every row of a CSV/Parquet file (or a folder of Parquet files) into a Parquet file",
        description=(
            "Explain every row of INPUT (CSV, Parquet, or a folder of Parquet files; columns: the API's feature "
            "names and an optional id) into the Parquet file OUTPUT, with the numbers of POST /explain/batch. A "
            "refused row gets its problem in the error column and the job goes on. Exit status: 0 all rows "
            "explained, 1 some refused, 2 the job could not run."
        ),
    )
    p.add_argument("input", metavar="INPUT", help="a .csv file, a Parquet file or a folder of *.parquet files")
    p.add_argument("out", metavar="OUTPUT", help="the Parquet file to write (replaced when the job completes)")
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: stream in this process "
        "(default); ray: Ray Data over a local Ray started here, or the cluster at --ray-address",
    )
    p.add_argument("--ray-address", default=None, metavar="ADDR", help="join this Ray cluster (e.g. HOST:6379)")
    p.add_argument("--num-cpus", type=_positive_int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--ray-workers", type=_positive_int, default=None, help="Ray actors (default: the cluster's CPUs)")
    p.add_argument("--batch-size", type=_positive_int, default=1024, metavar="N", help="rows per engine call")
    p.add_argument(
        "--method", choices=["exact", "sampled", "quadrature"], default=None, help="default: the model's default method"
    )
    p.add_argument("--n-samples", type=int, default=None, help="samples per record (sampled, quadrature)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws (method sampled)")
    p.add_argument("--output", choices=["logit", "probability"], default="logit", help="what attributions add up to")
    p.add_argument(
        "--model",
        default=None,
        metavar="NAME[@VERSION]|FOLDER",
        help="a model (its default version) or version of the store (GSHAP_MODEL_STORE), or a bundle folder "
        "(default: the store's default model)",
    )
    p.add_argument("--drop", nargs="*", default=None, metavar="COLUMN", help="input columns to ignore")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_explain_cohort)

    p = sub.add_parser("openapi", help="write (or --check) openapi.yaml from the app")
    p.add_argument("--out", default="openapi.yaml")
    p.add_argument("--check", action="store_true")
    p.set_defaults(func=_openapi)

    p = sub.add_parser("problems", help="write (or --check) docs/PROBLEMS.md, the problem types, from the error tree")
    p.add_argument("--out", default="docs/PROBLEMS.md")
    p.add_argument("--check", action="store_true")
    p.set_defaults(func=_problems)

    p = sub.add_parser("db", help="the CDS state database (GSHAP_DATABASE_URL, else the SQLite file)")
    db_sub = p.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="migrate the schema to this version (under a lock; replicas also do it at start)")
    q = db_sub.add_parser("import", help="move an SQLite feedback store into the PostgreSQL of GSHAP_DATABASE_URL")
    q.add_argument("sqlite_file", metavar="SQLITE_FILE")
    p.set_defaults(func=_db)
    return parser


# The extra each command needs (pyproject.toml's optional dependencies), and the top-level packages it brings.
EXTRAS: dict[str, str] = {
    "train": "train",
    "bundle": "train",
    "groups": "train",
    "figures": "train",
    "serve": "server",
    "openapi": "server",
    "problems": "server",
    "db": "server",
    "explain-cohort": "cluster",
    "sign": "server",
    "keygen": "server",
}
_EXTRA_PACKAGES: dict[str, frozenset[str]] = {
    "server": frozenset(
        {
            "torch",
            "numpy",
            "fastapi",
            "starlette",
            "uvicorn",
            "pydantic_settings",
            "safetensors",
            "orjson",
            "yaml",
            "psycopg",
            "psycopg_pool",
            "jsonschema",
        }
    ),
    "train": frozenset({"pandas", "sklearn", "matplotlib", "tqdm", "captum", "scipy"}),
    "cluster": frozenset({"pyarrow", "ray", "tqdm"}),
}


def _missing_extra(command: str, exc: ModuleNotFoundError) -> str | None:
    """The one-line message for a command whose extra is not installed, or whose compiled exact kernel is not
    built (service.engine.exact_kernel's hint), or None if ``exc`` is something else."""
    if exc.name == "service.engine._exact":
        return f"gshap {command}: {exc.args[0] if exc.args else exc}"
    top = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(command)
    needed = _EXTRA_PACKAGES["server"] | (_EXTRA_PACKAGES[extra] if extra in ("train", "cluster") else frozenset())
    if extra is None or top not in needed:
        return None
    return f"gshap {command}: needs the '{extra}' extra ({top} is not installed): pip install 'gshap-service[{extra}]'"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from service.model.store import BundleError

        try:
            code = int(args.func(args))
        except BundleError as exc:
            print(f"gshap: {exc}", file=sys.stderr)
            return 2
    except ModuleNotFoundError as exc:
        message = _missing_extra(args.command, exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
