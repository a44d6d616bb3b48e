"""Who may call what on a scheduler: one table, enforced by one interceptor.

Every method the scheduler serves is in POLICY with the roles that may call
it (orch/identity.py); a method missing from it is denied to everyone, so a
new RPC cannot ship unclassified (a unit test checks that every method of
every service is listed). The roles follow Kubernetes' built-in ones:

    admin    everything (cluster-admin)
    viewer   what `view` allows: reading apps, nodes, instances, events, logs
             and usage; nothing that changes the cluster, and no exec
    node     its own agent session only (the session checks the node's name)

A scheduler's certificate is not an API user: schedulers never call each
other. Without TLS (`--insecure`) there are no identities and everything is
allowed, as before.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from orch.identity import Role, role_of
from orch.tls import peer_identity

__all__ = ["POLICY", "Authorizer", "denial"]

ANYONE = frozenset(Role)
ADMIN = frozenset({Role.ADMIN})
READ = frozenset({Role.ADMIN, Role.VIEWER})
NODES = frozenset({Role.NODE})

POLICY: dict[str, frozenset[Role]] = {
    "/orch.v1.Orch/Apply": ADMIN,
    "/orch.v1.Orch/GetApp": READ,
    "/orch.v1.Orch/ListApps": READ,
    "/orch.v1.Orch/DeleteApp": ADMIN,
    "/orch.v1.Orch/Scale": ADMIN,
    "/orch.v1.Orch/ListNodes": READ,
    "/orch.v1.Orch/SetSchedulable": ADMIN,
    "/orch.v1.Orch/DeleteNode": ADMIN,
    "/orch.v1.Orch/Drain": ADMIN,
    "/orch.v1.Orch/ListInstances": READ,
    "/orch.v1.Orch/ListEvents": READ,
    "/orch.v1.Orch/Version": READ,
    "/orch.v1.Orch/Watch": READ,
    "/orch.v1.Orch/Explain": READ,
    "/orch.v1.Orch/Logs": READ,  # as `view` allows pods/log
    "/orch.v1.Orch/Top": READ,  # as `view` allows metrics
    "/orch.v1.Orch/Exec": ADMIN,
    "/orch.v1.Orch/CreateSecret": ADMIN,
    "/orch.v1.Orch/ListSecrets": READ,  # names, keys and users only: values never leave
    "/orch.v1.Orch/DeleteSecret": ADMIN,  # a shell in any container: never read-only (pods/exec is not in `view`)
    "/orch.v1.AgentSession/Session": NODES,
    "/grpc.health.v1.Health/Check": ANYONE,
    "/grpc.health.v1.Health/Watch": ANYONE,
    "/grpc.health.v1.Health/List": ANYONE,
}


def denial(method: str, identity: str | None, insecure: bool) -> str | None:
    """Why identity may not call method; None if it may."""
    if identity is None:
        return None if insecure else f"permission denied: no client certificate for {method.lstrip('/')}"
    allowed = POLICY.get(method)
    role = role_of(identity)
    if allowed is None:
        return f'permission denied: "{identity}" may not call {method.lstrip("/")}: the method is not in the policy'
    if role not in allowed:
        what = f"role {role.value}" if role else "no known role"
        return f'permission denied: "{identity}" ({what}) may not call {method.lstrip("/")}'
    return None


Behavior = Callable[..., Any]
if TYPE_CHECKING:  # generic only in the stubs
    Handler = grpc.RpcMethodHandler[Any, Any]


class Authorizer(grpc.aio.ServerInterceptor):
    """Checks POLICY before every call; the handler runs only if the caller may call it."""

    def __init__(self, insecure: bool) -> None:
        self._insecure = insecure

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)

        async def check(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            # The interceptor sees no peer; the identity is known only once the call runs.
            reason = denial(method, peer_identity(context), self._insecure)
            if reason is not None:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
            if handler is None:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"method {method.lstrip('/')} not implemented")

        if handler is None:  # denied (or unimplemented) without reading a request, whatever its shape
            return grpc.stream_stream_rpc_method_handler(_guard(check, _never, streaming=True))
        return _guarded(handler, check)


async def _never(request: Any, context: Any) -> AsyncIterator[Any]:
    return
    yield  # an async generator that yields nothing


def _guard(check: Callable[[Any], Awaitable[None]], inner: Behavior, streaming: bool) -> Behavior:
    if streaming and inspect.isasyncgenfunction(inner):

        async def gen(request: Any, context: Any) -> AsyncIterator[Any]:
            await check(context)
            async for item in inner(request, context):
                yield item

        return gen

    async def call(request: Any, context: Any) -> Any:
        await check(context)
        result = inner(request, context)
        return await result if inspect.isawaitable(result) else result

    return call


def _guarded(handler: Handler, check: Callable[[Any], Awaitable[None]]) -> Handler:
    """The same handler with check run first, for each of the four call shapes."""
    make: dict[tuple[bool, bool], tuple[Callable[..., Handler], Behavior | None]] = {
        (False, False): (grpc.unary_unary_rpc_method_handler, handler.unary_unary),
        (False, True): (grpc.unary_stream_rpc_method_handler, handler.unary_stream),
        (True, False): (grpc.stream_unary_rpc_method_handler, handler.stream_unary),
        (True, True): (grpc.stream_stream_rpc_method_handler, handler.stream_stream),
    }
    factory, inner = make[(handler.request_streaming, handler.response_streaming)]
    assert inner is not None
    return factory(
        _guard(check, inner, streaming=handler.response_streaming),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
