"""xDS over REST-JSON: the sans-IO protocol core (``protocol``: config sources, the ACK/NACK
state of a subscription, validation of every resource type) and the client (``client``) that
long-polls the control plane and applies validated updates to the running server.

Modules here may import ``proxy.config`` (resource parsers), ``proxy.http`` (the codec and
client, the transport), ``proxy.errors``, and for type hints ``proxy.stats`` and
``proxy.upstream``; never the server itself: the client drives it through the
``XdsTarget`` protocol.
"""
from proxy.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "proxy.xds.protocol": ("Subscription", "ConfigSource", "XdsError"),
    "proxy.xds.client": ("XdsClient", "ApplyError"),
})
