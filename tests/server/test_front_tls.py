"""TLS on the native front end (rustls): the server presents the configured certificate to the generated stubs,
forwarded calls (health) travel encrypted too, and a reload (what SIGHUP runs) swaps the certificate for new
handshakes, keeping the current one when the new files do not load."""

from __future__ import annotations

import logging

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proto.interest.v1 import interest_pb2 as pb
from proto.interest.v1 import interest_pb2_grpc as pb_grpc
from server import front
from server.app import reload_tls
from tests.server.conftest import base_settings, load_items, start_harness

pytestmark = pytest.mark.skipif(not front.available(), reason="the native front end is not built (`make setup`)")


def _issue(ca: trustme.CA, tmp_path) -> tuple:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return cert_file, key_file


def _similar(port: int, ca: trustme.CA) -> grpc.StatusCode:
    """A SimilarItems call over a new TLS connection trusting only ``ca``: its status code."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    # A subchannel of its own: one shared with an earlier channel may still be backing off from a failed handshake.
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        try:
            pb_grpc.InterestServiceStub(channel).SimilarItems(pb.SimilarItemsRequest(item_id="item-7", k=3), timeout=10)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def test_a_tls_server_answers_the_stubs_and_reloads_its_certificate(server_graph_settings, tmp_path, caplog) -> None:
    first, second = trustme.CA(), trustme.CA()
    cert_file, key_file = _issue(first, tmp_path)
    settings = base_settings(front="native", tls_cert_file=str(cert_file), tls_key_file=str(key_file))
    harness, stop = start_harness(settings, server_graph_settings, setup=load_items)
    try:
        assert isinstance(harness.server, front.FrontedServer) and harness.server.front.tls
        assert _similar(harness.port, first) == grpc.StatusCode.OK
        with grpc.insecure_channel(f"127.0.0.1:{harness.port}") as plain:  # no plaintext on a TLS port
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.InterestServiceStub(plain).SimilarItems(pb.SimilarItemsRequest(item_id="item-7", k=3), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        credentials = grpc.ssl_channel_credentials(root_certificates=first.cert_pem.bytes())
        with grpc.secure_channel(f"127.0.0.1:{harness.port}", credentials) as channel:  # forwarded to grpc's server
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert _similar(harness.port, second) == grpc.StatusCode.UNAVAILABLE  # not the CA it trusts

        _issue(second, tmp_path)  # the files now hold a certificate of the second CA
        reload_tls(harness.server, settings)
        assert _similar(harness.port, second) == grpc.StatusCode.OK
        assert _similar(harness.port, first) == grpc.StatusCode.UNAVAILABLE

        key_file.write_bytes(b"not a key")  # a broken reload keeps the certificate being served
        with caplog.at_level(logging.ERROR, logger="server.app"):
            reload_tls(harness.server, settings)
        assert "TLS certificate not reloaded" in caplog.text and "private key" in caplog.text
        assert _similar(harness.port, second) == grpc.StatusCode.OK
    finally:
        stop()
