"""The site node: the Flower ClientApp a SuperNode runs at a partner site.

Every message Flower hands the node goes to the reference monitor (``client.monitor``), whatever
its type: the node registers no handler Flower could call around it. What the monitor lets
through is answered by ``client.handlers``; who the site is (data, policy, ledger) comes from
``client.site``.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from federation.client.monitor import Monitor
from federation.client.site import Resolver, settings_from_context


class SiteNode(ClientApp):
    """A ClientApp whose every call is the monitor's, with optional Flower ``mods`` around it
    (the fault-injection tests wrap it as an operator's mod would)."""

    def __init__(self, resolve: Resolver, mods: list[Mod] | None = None) -> None:
        super().__init__()
        call: Callable[[Message, Context], Message] = Monitor(resolve)
        for mod in reversed(mods or []):
            call = _wrapped(mod, call)
        self._monitored = call

    def __call__(self, message: Message, context: Context) -> Message:
        return self._monitored(message, context)


def _wrapped(mod: Mod, call: Callable[[Message, Context], Message]):
    def wrapped(message: Message, context: Context) -> Message:
        return mod(message, context, call)

    return wrapped


def make_client_app(
    resolve: Resolver = settings_from_context, mods: list[Mod] | None = None
) -> SiteNode:
    """The site node, its settings from ``resolve`` (deployment or simulation)."""
    return SiteNode(resolve, mods)


app = make_client_app()
