#!/usr/bin/env bash
# Validates openapi.yaml (OpenAPI 3.1) and checks it against the contract of API.md.
#
# The contract's routes and error codes are embedded below (API.md lives outside the repo, in
# ../shared, which CI does not always have). When API.md changes, change the lists here, the spec,
# and the implementation in the same commit.
#
# Checks:
#   1. openapi-spec-validator accepts the document.
#   2. The operations are exactly the contract's (method, path) pairs plus the known additions
#      (ADDITION_OPERATIONS): none missing, none extra.
#   3. The Error schema's `error` enum holds exactly the codes of API.md's error table plus the
#      known additions (ADDITION_CODES).
#   4. Every operation has a camelCase operationId (unique) and a known tag; every response
#      declares X-Caucus-Node; every route with {group} answers 400 (invalid_group_id) and 404;
#      every operation with a request body answers 413; every route that takes ?forward= answers
#      307, 421, 503, 504 and 508; exactly the operations that can answer `500 internal` list 500.
#   5. Every example in a media type or schema validates against its schema.
#   6. Authentication: the bearerAuth scheme (http bearer) is required globally; every operation
#      names its role in x-caucus-role, as the contract's ROLES below (the gateway's
#      Route.Name.permission); the open ones (/healthz, /ui) have `security: []` and no 401/403, every
#      other answers 401, and every one a token can be too weak or scoped wrong for answers 403.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
spec="$repo_root/openapi.yaml"

# The system's Python when it has openapi-spec-validator; else a virtual environment in .build
# (a stock Debian refuses pip installs into its own Python: PEP 668's externally-managed rule).
python=python3
if ! python3 -c 'import openapi_spec_validator' 2>/dev/null; then
  venv="$repo_root/.build/openapi-python"
  if ! "$venv/bin/python3" -c 'import openapi_spec_validator' 2>/dev/null; then
    python3 -m venv "$venv" 2>/dev/null || { "$repo_root/scripts/install-deps.sh" python3-venv && python3 -m venv "$venv"; }
    "$venv/bin/python3" -m pip install --quiet openapi-spec-validator
  fi
  python="$venv/bin/python3"
fi

"$python" - "$spec" <<'PYTHON'
import re
import sys

from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

spec_path = sys.argv[1]
spec, _ = read_from_filename(spec_path)
try:
    validate(spec)
except Exception as error:  # the validator's own message names the failing node
    print(f"openapi.yaml: invalid: {error}", file=sys.stderr)
    sys.exit(1)

# The contract: every (method, path) of API.md. `GET /` is listed in API.md's conventions as an
# operational path; its shape is an addition documented in the spec.
CONTRACT = {
    ("GET", "/"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/node"),
    ("GET", "/v1/cluster"),
    ("POST", "/v1/cluster/nodes"),
    ("POST", "/v1/cluster/rebalance"),
    ("POST", "/v1/node/groups"),
    ("DELETE", "/v1/node/groups/{group}"),
    ("GET", "/v1/groups"),
    ("POST", "/v1/groups"),
    ("GET", "/v1/groups/{group}"),
    ("DELETE", "/v1/groups/{group}"),
    ("POST", "/v1/groups/{group}/peers"),
    ("PUT", "/v1/groups/{group}/peers"),
    ("DELETE", "/v1/groups/{group}/peers/{nodeId}"),
    ("GET", "/v1/groups/{group}/leader"),
    ("POST", "/v1/groups/{group}/leader"),
    ("POST", "/v1/groups/{group}/snapshot"),
    ("GET", "/v1/groups/{group}/kv"),
    ("GET", "/v1/groups/{group}/kv/{key}"),
    ("PUT", "/v1/groups/{group}/kv/{key}"),
    ("DELETE", "/v1/groups/{group}/kv/{key}"),
    ("POST", "/v1/groups/{group}/write"),
    ("POST", "/v1/groups/{group}/read"),
    ("GET", "/v1/groups/{group}/watch"),
}

# Operations beyond API.md (each documented as an addition in the spec).
ADDITION_OPERATIONS = {
    ("GET", "/v1/groups/{group}/snapshot"),  # the backup export (caucus backup / restore)
    ("GET", "/ui"),  # the dashboard page
}

# The role each operation needs (Route.Name.permission in Sources/Gateway/Route.swift). /metrics
# and /readyz need `read` only when a node is started so (their security makes the token optional).
ROLES = {
    ("GET", "/"): "read", ("GET", "/healthz"): "open", ("GET", "/readyz"): "read", ("GET", "/metrics"): "read",
    ("GET", "/v1/node"): "read", ("GET", "/v1/cluster"): "read", ("POST", "/v1/cluster/nodes"): "admin",
    ("POST", "/v1/cluster/rebalance"): "admin", ("POST", "/v1/node/groups"): "admin",
    ("DELETE", "/v1/node/groups/{group}"): "admin", ("GET", "/v1/groups"): "read", ("POST", "/v1/groups"): "admin",
    ("GET", "/v1/groups/{group}"): "read", ("DELETE", "/v1/groups/{group}"): "admin",
    ("POST", "/v1/groups/{group}/peers"): "admin", ("PUT", "/v1/groups/{group}/peers"): "admin",
    ("DELETE", "/v1/groups/{group}/peers/{nodeId}"): "admin", ("GET", "/v1/groups/{group}/leader"): "read",
    ("POST", "/v1/groups/{group}/leader"): "admin", ("POST", "/v1/groups/{group}/snapshot"): "admin",
    ("GET", "/v1/groups/{group}/kv"): "read", ("GET", "/v1/groups/{group}/kv/{key}"): "read",
    ("PUT", "/v1/groups/{group}/kv/{key}"): "write", ("DELETE", "/v1/groups/{group}/kv/{key}"): "write",
    ("POST", "/v1/groups/{group}/write"): "write", ("POST", "/v1/groups/{group}/read"): "read",
    ("GET", "/v1/groups/{group}/watch"): "read", ("GET", "/v1/groups/{group}/snapshot"): "read",
    ("GET", "/ui"): "open",
}
# Operations no token can fail by role or scope (any token reaches them): they answer 401, not 403.
NEVER_FORBIDDEN = {("GET", "/")}

ERROR_CODES = {
    "bad_request", "invalid_json", "invalid_group_id", "invalid_key", "illegal_peer_num",
    "unauthorized", "forbidden",
    "group_not_found", "key_not_found", "peer_not_in_group", "not_found",
    "method_not_allowed",
    "group_already_exists", "group_limit_reached", "peer_already_in_group", "node_already_exists", "rebalance_in_progress",
    "compacted",
    "precondition_failed",
    "payload_too_large", "uri_too_long", "headers_too_large",
    "not_leader",
    "no_leader", "not_ready", "overloaded",
    "timeout",
    "forward_loop",
    "insufficient_storage",
    "internal",
}

# The operations whose handler can answer `500 internal` (Sources/Gateway: `.internal(`, the
# gateway's own invariants on the state machine's answers): each lists 500, and no other does.
INTERNAL_OPERATIONS = {
    ("GET", "/v1/groups/{group}/kv"), ("GET", "/v1/groups/{group}/kv/{key}"), ("PUT", "/v1/groups/{group}/kv/{key}"),
    ("DELETE", "/v1/groups/{group}/kv/{key}"), ("POST", "/v1/groups/{group}/write"), ("POST", "/v1/groups/{group}/read"),
    ("GET", "/v1/groups/{group}/snapshot"),
}

# Codes the implementation answers beyond API.md's table (documented as additions in the spec):
# the HTTP layer's own 408, 501 and 505.
ADDITION_CODES = {"request_timeout", "not_implemented", "http_version_not_supported"}

TAGS = {"data", "groups", "membership", "node", "operations"}
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")

failures = []


def resolve(node):
    """Follows local $refs ('#/a/b') until a node without $ref."""
    while isinstance(node, dict) and "$ref" in node:
        target = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def error_codes_of(response):
    """The `error` codes a JSON error response may carry: its allOf narrowing of Error, if any."""
    schema = resolve(resolve(response).get("content", {}).get("application/json", {}).get("schema", {}))
    narrowings = [part for part in schema.get("allOf", []) if "$ref" not in part] or [schema]
    codes = set()
    for part in narrowings:
        error = resolve(part).get("properties", {}).get("error", {})
        codes.update(error.get("enum", []))
        if "const" in error:
            codes.add(error["const"])
    return codes


operations = set()
operation_ids = {}
for path, item in spec["paths"].items():
    path_parameters = [resolve(p) for p in item.get("parameters", [])]
    for method in METHODS:
        if method not in item:
            continue
        operation = item[method]
        label = f"{method.upper()} {path}"
        operations.add((method.upper(), path))

        operation_id = operation.get("operationId", "")
        if not re.fullmatch(r"[a-z][a-zA-Z0-9]*", operation_id):
            failures.append(f"{label}: operationId {operation_id!r} is not camelCase")
        if operation_id in operation_ids:
            failures.append(f"{label}: operationId {operation_id!r} also used by {operation_ids[operation_id]}")
        operation_ids[operation_id] = label
        tags = operation.get("tags", [])
        if not tags or not set(tags) <= TAGS:
            failures.append(f"{label}: tags {tags} must be among {sorted(TAGS)}")

        responses = operation.get("responses", {})
        for status, response in responses.items():
            if "X-Caucus-Node" not in resolve(response).get("headers", {}):
                failures.append(f"{label}: response {status} does not declare X-Caucus-Node")

        parameters = path_parameters + [resolve(p) for p in operation.get("parameters", [])]
        names = {(p["in"], p["name"]) for p in parameters}
        if ("path", "group") in names:
            if "invalid_group_id" not in error_codes_of(responses.get("400", {})):
                failures.append(f"{label}: a group route must answer 400 invalid_group_id")
            if "404" not in responses:
                failures.append(f"{label}: a group route must answer 404")
        if "requestBody" in operation and "413" not in responses:
            failures.append(f"{label}: accepts a body but does not answer 413")
        role = operation.get("x-caucus-role")
        if role != ROLES.get((method.upper(), path)):
            failures.append(f"{label}: x-caucus-role is {role!r}, the contract says {ROLES.get((method.upper(), path))!r}")
        if role == "open":
            if operation.get("security") != []:
                failures.append(f"{label}: an open operation has `security: []`")
            for status in ("401", "403"):
                if status in responses:
                    failures.append(f"{label}: an open operation does not answer {status}")
        else:
            if "401" not in responses:
                failures.append(f"{label}: needs a token with tokens configured, so answers 401")
            if "403" not in responses and (method.upper(), path) not in NEVER_FORBIDDEN:
                failures.append(f"{label}: a token may be too weak or scoped elsewhere, so answers 403")
            if path in ("/metrics", "/readyz") and {} not in operation.get("security", []):
                failures.append(f"{label}: open by default, so its security makes the token optional ({{}})")
        if ((method.upper(), path) in INTERNAL_OPERATIONS) != ("500" in responses):
            failures.append(f"{label}: answers 500 internal exactly when its handler can (INTERNAL_OPERATIONS)")
        if "500" in responses and error_codes_of(responses["500"]) != {"internal"}:
            failures.append(f"{label}: its 500 is the `internal` error")
        if ("query", "forward") in names:
            for status in ("307", "421", "503", "504", "508"):
                if status not in responses:
                    failures.append(f"{label}: takes ?forward= but does not answer {status}")

schemes = spec.get("components", {}).get("securitySchemes", {})
if schemes.get("bearerAuth", {}).get("type") != "http" or schemes.get("bearerAuth", {}).get("scheme") != "bearer":
    failures.append("components.securitySchemes.bearerAuth must be an http bearer scheme")
if {"bearerAuth": []} not in spec.get("security", []):
    failures.append("the document's security must require bearerAuth")

for method, path in sorted(CONTRACT - operations):
    failures.append(f"{method} {path}: in API.md but missing from openapi.yaml")
for method, path in sorted(ADDITION_OPERATIONS - operations):
    failures.append(f"{method} {path}: an addition (ADDITION_OPERATIONS) missing from openapi.yaml")
for method, path in sorted(operations - CONTRACT - ADDITION_OPERATIONS):
    failures.append(f"{method} {path}: in openapi.yaml but not in API.md (add it to both, and to this list)")

enum = set(spec["components"]["schemas"]["Error"]["properties"]["error"]["enum"])
for code in sorted(ERROR_CODES - enum):
    failures.append(f"Error.error: code {code!r} of API.md is missing from the enum")
for code in sorted(ADDITION_CODES - enum):
    failures.append(f"Error.error: added code {code!r} is missing from the enum")
for code in sorted(enum - ERROR_CODES - ADDITION_CODES):
    failures.append(f"Error.error: code {code!r} is neither in API.md nor a known addition (add it to ADDITION_CODES)")

# Examples validate against their schemas (OpenAPI 3.1 = JSON Schema 2020-12 + the OAS vocabulary).
try:
    from openapi_schema_validator import OAS31Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    base = "urn:caucus:openapi"
    registry = Registry().with_resource(base, Resource(contents=spec, specification=DRAFT202012))

    def pointer(parts):
        return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)

    def check_example(parts, example):
        """Validates `example` against the schema found at `parts` in the document."""
        validator = OAS31Validator({"$ref": f"{base}#{pointer(parts)}"}, registry=registry)
        for error in validator.iter_errors(example):
            failures.append(f"{pointer(parts)}: example {example!r} does not match: {error.message}")

    def walk(node, parts):
        if isinstance(node, dict):
            if "schema" in node and "example" in node:
                check_example(parts + ["schema"], node["example"])
            if parts[:2] == ["components", "schemas"] and isinstance(node.get("examples"), list):
                for example in node["examples"]:
                    check_example(parts, example)
            for name, child in node.items():
                walk(child, parts + [name])
        elif isinstance(node, list):
            for position, child in enumerate(node):
                walk(child, parts + [position])

    walk(spec, [])
except ImportError as error:  # openapi-spec-validator depends on both; keep going if not
    print(f"openapi.yaml: examples not checked ({error})", file=sys.stderr)

if failures:
    for failure in failures:
        print(f"openapi.yaml: {failure}", file=sys.stderr)
    print(f"openapi.yaml: {len(failures)} problem(s)", file=sys.stderr)
    sys.exit(1)

print(f"openapi.yaml: valid ({len(spec['paths'])} paths, {len(operations)} operations)")
PYTHON
