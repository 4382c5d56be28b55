"""Where an OTLP exporter sends each signal, by the OpenTelemetry specification's rules.

Exporter knowledge, kept beside the exporters (:mod:`bitnet_obs._export` builds them) and out
of the settings: :mod:`bitnet_obs._config` reads ``OTEL_EXPORTER_OTLP_*`` and asks here what
URL they mean, so ``Settings.otlp_metrics.endpoint`` is the very URL the exporter posts to.

- No endpoint set: ``http://localhost:4318`` for http/protobuf, ``http://localhost:4317`` for
  gRPC.
- http/protobuf with the shared ``OTEL_EXPORTER_OTLP_ENDPOINT``: the base URL gets the
  signal's path, ``/v1/metrics`` or ``/v1/traces``; a per-signal endpoint is used as it is.
- gRPC: the endpoint as it is; ``http://`` means a connection without TLS.
"""

from __future__ import annotations

DEFAULT_PORTS = {"grpc": 4317, "http/protobuf": 4318}


def signal_endpoint(protocol: str, endpoint: str | None, signal: str, specific: bool) -> str:
    """The URL a ``signal`` (``metrics``, ``traces``) exporter uses; ``specific``: the
    endpoint came from the signal's own variable."""
    if endpoint is None:
        endpoint = f"http://localhost:{DEFAULT_PORTS.get(protocol, 4318)}"
    if protocol == "http/protobuf" and not specific:
        return endpoint.rstrip("/") + "/v1/" + signal.lower()
    return endpoint


def insecure(endpoint: str) -> bool:
    """A gRPC connection without TLS (the endpoint's scheme is ``http``)."""
    return endpoint.startswith("http://")
