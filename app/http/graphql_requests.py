"""What ``/graphql`` answers a request that is not a well-formed GraphQL-over-HTTP request
(https://graphql.github.io/graphql-over-http/): a JSON body ``{"errors": [{"message",
"extensions": {"code"}}]}`` with the status the spec names, never plain text or a 500.

- a body that is not JSON, not UTF-8, nested absurdly deep, ``null`` or not an object, a
  missing ``query``, a batch (a JSON array): 400 ``BAD_REQUEST``;
- a NUL character in any string of the request (document literals, variables, their keys):
  400 ``BAD_REQUEST`` before anything runs (no column, key or label may hold one, and
  PostgreSQL refuses them in text); over the websocket the same check answers the
  operation with a ``BAD_REQUEST`` error (``nul_problem``);
- a body that is not ``application/json``: 415 ``UNSUPPORTED_MEDIA_TYPE``;
- a method other than GET and POST, or a mutation over GET: 405 ``METHOD_NOT_ALLOWED`` with
  ``Allow``;
- a subscription over HTTP (they run over the websocket): 400 ``BAD_REQUEST``.

``GraphQLOverHTTP`` is Strawberry's ASGI view with these answers; the app's view extends it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from cross_web import AsyncHTTPRequestAdapter, HTTPException
from graphql import GraphQLError, StringValueNode, Visitor, parse, visit
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from strawberry.asgi import GraphQL
from strawberry.exceptions import MissingQueryError
from strawberry.http import GraphQLRequestData
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from app import json_codec

CODES = {400: "BAD_REQUEST", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
         415: "UNSUPPORTED_MEDIA_TYPE"}
NUL_ESCAPE = b"\\u0000"  # how JSON writes a NUL inside a string


class GraphQLOverHTTP(GraphQL[Any, None]):
    """Strawberry's ASGI view answering every malformed request in JSON with a code, reading
    JSON with ``app.json_codec``, executing queries and mutations (never subscriptions)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        try:  # Strawberry answers these in plain text; GraphQL over HTTP wants JSON
            response: Response = await self.run(Request(scope, receive))
        except HTTPException as exc:
            response = error_response(exc)
        await response(scope, receive, send)

    def parse_json(self, data: str | bytes) -> object:
        return read_json(data, self.decode_json)

    async def parse_http_body(self, request: AsyncHTTPRequestAdapter
                              ) -> GraphQLRequestData | list[GraphQLRequestData]:
        if request.method == "POST" and not _is_json(request.content_type):
            raise HTTPException(415, "send the request as JSON with the header Content-Type: "
                                f"application/json (got {request.content_type or 'none'!r})")
        data = await super().parse_http_body(request)
        if isinstance(data, GraphQLRequestData):
            check_document(data.query, data.operation_name)
        return data

    async def execute_single(self, request: Any, request_adapter: AsyncHTTPRequestAdapter,
                             sub_response: Any, context: Any, root_value: Any,
                             request_data: GraphQLRequestData) -> ExecutionResult:
        # Strawberry's, minus subscriptions: executed as a query, a subscription's generator
        # would fail as an internal error.
        allowed = OperationType.from_http(request_adapter.method) - {OperationType.SUBSCRIPTION}
        try:
            return await self.schema.execute(
                request_data.query, root_value=root_value,
                variable_values=request_data.variables, context_value=context,
                operation_name=request_data.operation_name, allowed_operation_types=allowed,
                operation_extensions=request_data.extensions)
        except InvalidOperationTypeError as exc:
            raise _wrong_method(exc, request_adapter.method) from None
        except CannotGetOperationTypeError as exc:
            raise HTTPException(400, exc.as_http_error_reason()) from None
        except MissingQueryError:
            raise HTTPException(400, "No GraphQL query found in the request") from None

    def decode_json(self, data: str | bytes) -> object:
        try:
            return json_codec.loads(data)
        except RecursionError:  # a websocket message too: an unreadable message, not a crash
            raise json.JSONDecodeError("nested too deeply to read", "", 0) from None

    def encode_json(self, data: object) -> str:
        # Text, not bytes: Strawberry sends bytes over a websocket as binary frames.
        return json_codec.dumps(data)


def _wrong_method(error: InvalidOperationTypeError, method: str) -> HTTPException:
    if error.operation_type == OperationType.SUBSCRIPTION:
        return HTTPException(400, "subscriptions run over a websocket (graphql-transport-ws) "
                             "on this same URL, not over HTTP")
    return HTTPException(405, f"{error.as_http_error_reason(method)}; send it with POST")


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").partition(";")[0].strip().lower()
    return media_type == "application/json"


def error_response(error: HTTPException, allow: str = "GET, POST") -> JSONResponse:
    """The JSON answer to a request refused before it reached the schema."""
    code = CODES.get(error.status_code, "BAD_REQUEST")
    headers = {"Allow": allow} if error.status_code == 405 else None
    return JSONResponse({"errors": [{"message": error.reason, "extensions": {"code": code}}]},
                        status_code=error.status_code, headers=headers)


def read_json(text: str | bytes, decode: Callable[[str | bytes], object]) -> object:
    """A request body (or a ``variables``/``extensions`` URL parameter) as a JSON object or
    array, or ``HTTPException(400)`` saying what is wrong with it."""
    try:
        value = decode(text)
    except UnicodeDecodeError as exc:
        raise HTTPException(400, f"the request body is not valid UTF-8 (byte {exc.start}); "
                            "send JSON encoded as UTF-8") from None
    except RecursionError:  # a decoder that does not turn it into a JSONDecodeError itself
        raise HTTPException(400, "the request body's JSON is nested too deeply to read") from None
    except ValueError as exc:
        raise HTTPException(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict | list):
        raise HTTPException(400, "a GraphQL request is a JSON object such as "
                            f'{{"query": "{{ me {{ name }} }}"}}, not {_kind(value)}')
    if (NUL_ESCAPE in text if isinstance(text, bytes) else "\x00" in text or "\\u0000" in text):
        refuse_nul(nul_path(value))
    return value


def check_document(query: str | None, operation_name: object) -> None:
    """Refuses a NUL in the document's string literals (written ``\\u0000`` or ``\\u{0}``),
    in its raw text, or in the operation name; the document is parsed only when it holds an
    escape that could be one."""
    if isinstance(operation_name, str) and "\x00" in operation_name:
        refuse_nul("operationName")
    if query is None:
        return
    if "\x00" in query:
        refuse_nul("query")
    if "\\u" in query and _literal_with_nul(query):
        refuse_nul("a string literal of the query")


def nul_problem(query: str | None, variables: object, operation_name: object) -> str | None:
    """Why an operation that did not come over HTTP (a websocket's) must be refused for a
    NUL character, as ``read_json`` and ``check_document`` refuse one over HTTP; or None."""
    try:
        check_document(query, operation_name)
        refuse_nul(nul_path(variables) if variables else None)
    except HTTPException as exc:
        return exc.reason
    return None


def refuse_nul(where: str | None) -> None:
    if where is not None:
        raise HTTPException(400, f"a string holds a NUL character (\\u0000) at {where}; "
                            "no name, key, label or comment may contain one")


def nul_path(value: object) -> str | None:
    """Where the first string (or object key) holding a NUL is, e.g. ``variables.i[3].name``;
    None when none does. Iterative: the JSON may be as deep as the decoder allows."""
    stack: list[tuple[str, object]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return path or "the body"
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in str(key):
                    return f"{path} (an object key)" if path else "an object key"
                stack.append((f"{path}.{key}" if path else str(key), child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(item))
    return None


def _literal_with_nul(query: str) -> bool:
    try:
        document = parse(query)
    except (GraphQLError, RecursionError):
        return False  # the schema answers a document that does not parse
    found = False

    class Literals(Visitor):
        def enter_string_value(self, node: StringValueNode, *_: Any) -> None:
            nonlocal found
            found = found or "\x00" in node.value

    visit(document, Literals())
    return found


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string"}.get(
        type(value), type(value).__name__)
