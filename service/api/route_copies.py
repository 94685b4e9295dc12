"""Copies of built FastAPI routes under another path, with dependencies in front, without analysing them again.

The per-model routes (``/models/{name}/...``, a CDS service of another version) are the root routes' modules
copied under a prefix, pinned to a model (:func:`service.api.app._per_model_routes`). Built with
``APIRoute(...)``, every copy is analysed by FastAPI from scratch: the endpoint's signature, and one pydantic
``TypeAdapter`` per parameter, per response model and per problem answer (1,300 of them for the shipped store,
~0.35 s of a 1.5 s cold start). Nothing in that analysis depends on the path or the operation id but names and the
``path`` FastAPI notes for its error messages, so :func:`pinned_copy` builds the copy from the route already
built: the same fields under their new names (sharing their ``TypeAdapter``), the same dependency tree with the
pin's dependency in front, and the request handler FastAPI would build for those.

This reads FastAPI's internals (pinned: fastapi==0.165.0 in constraints.txt). :func:`analysed_copy` is the same
copy built by FastAPI itself; tests/api/test_route_copies.py checks that both agree attribute by attribute and over
HTTP, and fails when the internals read here change (a FastAPI upgrade breaks the tests, not the answers).
Where a route is outside what the copy handles (a prefix with path parameters, a streamed answer), or an
``APIRoute`` does not have the attributes this module sets, :func:`pinned_copy` falls back to
:func:`analysed_copy`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
from collections.abc import Sequence
from typing import Any

from fastapi import params
from fastapi._body_limit import wrap_app_with_body_limit
from fastapi._compat import ModelField, lenient_issubclass
from fastapi._form_limits import _validate_form_limits
from fastapi.datastructures import Default, DefaultPlaceholder
from fastapi.dependencies.models import Dependant, _is_async_gen_callable, _is_gen_callable
from fastapi.dependencies.utils import (
    _get_body_field,
    _get_flat_body_params,
    _should_embed_body_fields,
    get_parameterless_sub_dependant,
)
from fastapi.routing import APIRoute, request_response
from fastapi.sse import EventSourceResponse
from fastapi.utils import generate_unique_id, is_body_allowed_for_status_code
from starlette.routing import compile_path

__all__ = ["ROUTE_ATTRIBUTES", "analysed_copy", "copy_arguments", "pinned_copy"]

ROUTE_ATTRIBUTES = frozenset(
    {
        "form_limits",
        "path",
        "endpoint",
        "stream_item_type",
        "summary",
        "response_description",
        "deprecated",
        "operation_id",
        "response_model_include",
        "response_model_exclude",
        "response_model_by_alias",
        "response_model_exclude_unset",
        "response_model_exclude_defaults",
        "response_model_exclude_none",
        "include_in_schema",
        "response_class",
        "dependency_overrides_provider",
        "callbacks",
        "openapi_extra",
        "generate_unique_id_function",
        "strict_content_type",
        "max_body_size",
        "tags",
        "responses",
        "name",
        "path_regex",
        "path_format",
        "param_convertors",
        "methods",
        "unique_id",
        "status_code",
        "dependencies",
        "description",
        "response_fields",
        "dependant",
        "_embed_body_fields",
        "body_field",
        "is_sse_stream",
        "is_json_stream",
        "response_model",
        "response_field",
        "stream_item_field",
        "app",
    }
)
"""Every attribute ``APIRoute.__init__`` sets (FastAPI 0.165), all of which :func:`pinned_copy` sets."""


def copy_arguments(
    route: APIRoute,
    *,
    path: str,
    operation_id: str | None,
    tags: Sequence[Any],
    prepend: Sequence[params.Depends],
    dependency_overrides_provider: Any = None,
) -> dict[str, Any]:
    """The arguments of ``APIRoute(...)`` for ``route`` at ``path``, with ``prepend`` before its dependencies, as
    ``APIRouter().add_api_route`` passes them (a router with no prefix, tags, dependencies or responses of its
    own) for the route's settings: ``route``'s own, but its callbacks, its stream item type, its body size and
    form limits, its unique id function and strict content type (the router's defaults)."""
    return {
        "path": path,
        "endpoint": route.endpoint,
        "response_model": route.response_model,
        "status_code": route.status_code,
        "tags": list(tags),
        "dependencies": [*prepend, *route.dependencies],
        "summary": route.summary,
        "description": route.description,
        "response_description": route.response_description,
        "responses": dict(route.responses),
        "deprecated": route.deprecated or None,
        "methods": sorted(route.methods or ()),
        "operation_id": operation_id,
        "response_model_include": route.response_model_include,
        "response_model_exclude": route.response_model_exclude,
        "response_model_by_alias": route.response_model_by_alias,
        "response_model_exclude_unset": route.response_model_exclude_unset,
        "response_model_exclude_defaults": route.response_model_exclude_defaults,
        "response_model_exclude_none": route.response_model_exclude_none,
        "include_in_schema": route.include_in_schema,
        "response_class": route.response_class,
        "name": route.name,
        "dependency_overrides_provider": dependency_overrides_provider,
        "callbacks": [],
        "openapi_extra": route.openapi_extra,
        "generate_unique_id_function": Default(generate_unique_id),
        "strict_content_type": Default(True),
        "max_body_size": None,
    }


def analysed_copy(
    route: APIRoute,
    *,
    path: str,
    operation_id: str | None,
    tags: Sequence[Any],
    prepend: Sequence[params.Depends],
    dependency_overrides_provider: Any = None,
) -> APIRoute:
    """The copy (:func:`copy_arguments`) as FastAPI builds it: analysed from scratch."""
    return APIRoute(
        **copy_arguments(
            route,
            path=path,
            operation_id=operation_id,
            tags=tags,
            prepend=prepend,
            dependency_overrides_provider=dependency_overrides_provider,
        )
    )


def pinned_copy(
    route: APIRoute,
    *,
    path: str,
    operation_id: str | None,
    tags: Sequence[Any],
    prepend: Sequence[params.Depends],
    dependency_overrides_provider: Any = None,
) -> APIRoute:
    """:func:`analysed_copy`'s route, built from ``route``'s analysis instead of a new one.

    Each step follows FastAPI's ``_populate_api_route_state`` and ``APIRoute.__init__`` in their order; what
    they would compute again from the same inputs is taken from ``route``:

    - the dependant (the endpoint's parameters and sub-dependencies): the same tree with ``path`` set to the new
      path in every node (FastAPI's ``get_dependant`` passes it down), when the new path has the same path
      parameters (otherwise the parameters could differ); the sub-dependants of ``prepend`` are built as FastAPI's
      ``get_parameterless_sub_dependant`` builds them, in front;
    - the response fields (the answer and each ``responses`` model): the same type and mode, named after the new
      unique id (``Response_<unique id>``, ``Response_<code>_<unique id>``), sharing their ``TypeAdapter``;
    - the body field, the embedding and the streaming flags: FastAPI's own functions on the new dependant (they
      build nothing for a single JSON body);
    - the ASGI app: ``request_response(get_route_handler())`` behind the body size limit, as ``APIRoute``."""
    kwargs = {
        "path": path,
        "operation_id": operation_id,
        "tags": tags,
        "prepend": prepend,
        "dependency_overrides_provider": dependency_overrides_provider,
    }
    args = copy_arguments(route, **kwargs)
    path_regex, path_format, param_convertors = compile_path(path)
    own = route.dependencies
    if (
        type(route) is not APIRoute
        or not _fastapi_shape_known()
        or route.dependant.call is not route.endpoint
        or [d.call for d in route.dependant.dependencies[: len(own)]] != [d.dependency for d in own]
        or set(param_convertors) != set(route.param_convertors)
        or route.stream_item_type is not None
        or set(route.response_fields) != {code for code, r in route.responses.items() if r.get("model")}
        or bool(route.response_model) != (route.response_field is not None)
    ):
        return analysed_copy(route, **kwargs)
    new = APIRoute.__new__(APIRoute)
    new.form_limits = _validate_form_limits(None)
    # _populate_api_route_state, in its order
    new.path = path
    new.endpoint = endpoint = args["endpoint"]
    new.stream_item_type = None
    new.summary = args["summary"]
    new.response_description = args["response_description"]
    new.deprecated = args["deprecated"]
    new.operation_id = operation_id
    new.response_model_include = args["response_model_include"]
    new.response_model_exclude = args["response_model_exclude"]
    new.response_model_by_alias = args["response_model_by_alias"]
    new.response_model_exclude_unset = args["response_model_exclude_unset"]
    new.response_model_exclude_defaults = args["response_model_exclude_defaults"]
    new.response_model_exclude_none = args["response_model_exclude_none"]
    new.include_in_schema = args["include_in_schema"]
    new.response_class = response_class = args["response_class"]
    new.dependency_overrides_provider = dependency_overrides_provider
    new.callbacks = args["callbacks"]
    new.openapi_extra = args["openapi_extra"]
    new.generate_unique_id_function = args["generate_unique_id_function"]
    new.strict_content_type = args["strict_content_type"]
    new.max_body_size = args["max_body_size"]
    new.tags = args["tags"]
    new.responses = args["responses"]
    new.name = args["name"]
    new.path_regex, new.path_format, new.param_convertors = path_regex, path_format, param_convertors
    new.methods = {method.upper() for method in args["methods"]}
    new.unique_id = operation_id or generate_unique_id(new)
    new.status_code = args["status_code"]
    new.dependencies = list(args["dependencies"])
    description = args["description"] or inspect.cleandoc(endpoint.__doc__ or "")
    new.description = description.split("\f")[0].strip()
    new.response_fields = {
        code: _renamed(route.response_fields[code], f"Response_{code}_{new.unique_id}")
        for code, response in new.responses.items()
        if response.get("model")
    }
    for code in new.response_fields:
        assert is_body_allowed_for_status_code(code), f"Status code {code} must not have a response body"
    dependant = _with_path(route.dependant, path_format)
    for depends in list(prepend)[::-1]:
        dependant.dependencies.insert(0, get_parameterless_sub_dependant(depends=depends, path=path_format))
    new.dependant = dependant
    body_params = _get_flat_body_params(dependant)
    new._embed_body_fields = _should_embed_body_fields(body_params)
    new.body_field = _get_body_field(
        body_params=body_params, name=new.unique_id, embed_body_fields=new._embed_body_fields
    )
    is_generator = _is_async_gen_callable(dependant.call) or _is_gen_callable(dependant.call)
    new.is_sse_stream = is_generator and lenient_issubclass(response_class, EventSourceResponse)
    new.is_json_stream = is_generator and isinstance(response_class, DefaultPlaceholder)
    new.response_model = args["response_model"]
    if new.response_model:
        assert is_body_allowed_for_status_code(new.status_code), (
            f"Status code {new.status_code} must not have a response body"
        )
        assert route.response_field is not None
        new.response_field = _renamed(route.response_field, "Response_" + new.unique_id)
    else:
        new.response_field = None
    new.stream_item_field = None
    # APIRoute.__init__, after _populate_api_route_state
    new.app = wrap_app_with_body_limit(request_response(new.get_route_handler()), new.max_body_size)
    return new


@functools.cache
def _fastapi_shape_known() -> bool:
    """Whether ``APIRoute.__init__`` sets exactly :data:`ROUTE_ATTRIBUTES` (else a copy would miss some)."""

    async def probe() -> None:
        pass

    return set(vars(APIRoute("/", probe))) == ROUTE_ATTRIBUTES


def _renamed(field: ModelField, name: str) -> ModelField:
    """``field`` under another name: the same field info and mode, and so the same ``TypeAdapter`` (built from
    those alone, in ``ModelField.__post_init__``), which the copy shares instead of building it again."""
    out = copy.copy(field)
    out.name = name
    return out


def _with_path(dependant: Dependant, path: str) -> Dependant:
    """``dependant`` and its sub-dependants as ``get_dependant`` builds them for ``path`` (same parameters)."""
    return dataclasses.replace(
        dependant,
        path=path,
        path_params=list(dependant.path_params),
        query_params=list(dependant.query_params),
        header_params=list(dependant.header_params),
        cookie_params=list(dependant.cookie_params),
        body_params=list(dependant.body_params),
        dependencies=[_with_path(d, path) for d in dependant.dependencies],
    )
