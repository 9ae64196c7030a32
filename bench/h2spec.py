"""HTTP/2 conformance of the native front end: h2spec (https://github.com/summerwind/h2spec) against it, over
plaintext (h2c, prior knowledge) and TLS.

    go install github.com/summerwind/h2spec/cmd/h2spec@latest    # v2.2.1 when this was written
    python -m bench.h2spec [--h2spec PATH] [--strict]

The front end runs on its own, as the server runs it (same HTTP/2 settings, defaults of server.settings), with
a Python dispatch that answers every call; h2spec's requests are not gRPC calls (GET, or POST without a gRPC
content-type), so they are answered 405 / 415 before any gRPC handling, which is all h2spec needs: it tests
framing, streams, flow control, HPACK and error handling. Prints the failed cases and ``RESULT {json}`` last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from server import front
from server.settings import ServerSettings


def _answer(index: int, data: bytes, metadata: Any, timeout_s: float | None) -> tuple[int, str, bytes]:
    return 0, "", b""


def _front(tls: tuple[bytes, bytes] | None) -> Any:
    assert front.ig_front is not None, "the native front end is not built: run `make setup`"
    settings = ServerSettings()
    methods = [("/bench.v1.H2spec/Call", False, 0)]
    return front.ig_front.TonicFront(
        "127.0.0.1",
        0,
        False,
        9,  # nothing is forwarded: every request is refused or answered first
        _answer,
        methods,
        2,
        settings.max_concurrent_rpcs,
        settings.max_message_bytes,
        settings.io_threads,
        tls=tls,
        max_concurrent_streams=settings.h2_max_concurrent_streams,
        max_header_list_bytes=settings.h2_max_header_list_bytes,
        keepalive_interval_s=settings.h2_keepalive_interval_s,
        keepalive_timeout_s=settings.h2_keepalive_timeout_s,
        max_pending_accept_reset_streams=settings.h2_max_pending_accept_reset_streams,
        max_local_error_reset_streams=settings.h2_max_local_error_reset_streams,
    )


def run_h2spec(h2spec: str, port: int, tls: bool, strict: bool, work: Path) -> dict[str, Any]:
    report = work / f"h2spec-{port}.xml"
    command = [h2spec, "-h", "127.0.0.1", "-p", str(port), "-o", "5", "-j", str(report)]
    command += ["-t", "-k"] if tls else []
    command += ["-S"] if strict else []
    subprocess.run(command, capture_output=True, text=True, timeout=900)
    cases = ET.parse(report).getroot().iter("testcase")
    passed, failed, skipped = 0, [], 0
    for case in cases:
        if case.find("failure") is not None or case.find("error") is not None:
            problem = case.find("failure") if case.find("failure") is not None else case.find("error")
            failed.append(f"{case.get('package', '')} {case.get('classname', '')}: {case.get('name', '')}".strip())
            failed[-1] += f" ({(problem.text or problem.get('message') or '').strip()[:200]})" if problem is not None else ""
        elif case.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
    return {"passed": passed, "failed": len(failed), "skipped": skipped, "failures": failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--h2spec", default=shutil.which("h2spec") or os.path.expanduser("~/go/bin/h2spec"))
    parser.add_argument("--strict", action="store_true", help="h2spec -S: also the cases of SHOULD-level rules")
    args = parser.parse_args()
    import trustme  # dev dependency: a certificate for the TLS run

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    pems = (b"".join(blob.bytes() for blob in cert.cert_chain_pems), cert.private_key_pem.bytes())
    version = subprocess.run([args.h2spec, "--version"], capture_output=True, text=True).stdout.strip()
    results: dict[str, Any] = {"h2spec": version, "strict": args.strict}
    with tempfile.TemporaryDirectory(prefix="ig-h2spec-") as work:
        for name, tls in (("tonic_h2c", None), ("tonic_tls", pems)):
            server = _front(tls)
            server.start()
            try:
                results[name] = run_h2spec(args.h2spec, server.port, tls is not None, args.strict, Path(work))
            finally:
                server.stop(1.0)
            r = results[name]
            print(f"{name}: {r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped")
            for failure in r["failures"]:
                print(f"  FAILED {failure}")
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
