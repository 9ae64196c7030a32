"""bench.drift at a tiny size, through the real stack it starts (Neo4j, Redis, Celery worker, gRPC server): its
RESULT carries the figures the issue asks for, with sane values. No assertion on timing. It runs as a user runs
it, as its own process, so the command line and its RESULT line are tested too."""

from __future__ import annotations

import json
import subprocess
import sys


def test_drift_bench_tiny(tmp_path):
    out = tmp_path / "drift.json"
    sizes = ["--shoppers", "120", "--interests", "4", "--items-per", "15", "--events-per", "12", "--drift-share", "0.1"]
    sizes += ["--controls", "20", "--timeout-s", "5", "--concurrency", "4", "--var", str(tmp_path / "var")]
    run = subprocess.run([sys.executable, "-m", "bench.drift", *sizes, "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(out.read_text())
    assert run.stdout.strip().splitlines()[-1] == "RESULT " + json.dumps(res)
    assert res["bench"] == "drift"
    assert res["drifted"] == 12 and res["sizes"]["shoppers"] == 120 and res["sizes"]["items"] == 60
    assert res["sizes"]["controls"] == 20 and res["control_queries"] >= 20
    for key in ("home_share", "new_share_after", "home_share_during", "drifted_home_share_after"):
        assert 0.0 <= res[key] <= 1.0, key
    # planted interests: the served model puts shoppers in theirs far above chance (popularity over 4 interests)
    assert res["home_share"] > res["popularity"]["home_share"]
    # every drifted shopper's vector was rewritten after their events (the path the shift depends on)
    assert res["vectors_updated"] == res["drifted"]
    assert 0 <= res["shifted_within_1s"] <= res["shifted"] <= res["drifted"]
    # a shift time exists exactly when enough shoppers shifted, and p50 <= p99
    if res["shifted"] == res["drifted"]:
        assert res["shift_p50_s"] is not None and res["shift_p99_s"] is not None
    if res["shift_p50_s"] is not None and res["shift_p99_s"] is not None:
        assert 0 <= res["shift_p50_s"] <= res["shift_p99_s"]
    if res["shifted"] == 0:
        assert res["shift_p50_s"] is None
    assert res["config"]["version"] and res["config"]["dim"] > 0
    assert 0.0 <= res["popularity"]["new_share"] <= 1.0
    # the item side: one new item per interest, 20 buyers each, 5 shoppers of the interest watched
    launched = res["new_items"]
    assert launched["items"] == 4 and launched["buyers_each"] == 20 and launched["asked"] == 4 * 5
    assert 0 <= launched["appeared_within_2s"] <= launched["appeared"] <= launched["asked"]
    # shoppers of the next interest asked whether a new item reached them (a flooding prior would show)
    assert launched["strangers_asked"] == 4 * 5 and 0 <= launched["stranger_hits"] <= launched["strangers_asked"]
    # the short-term interest's cost: every shopper (120 < 200) on both servers, 3 rounds
    cost = res["short_term_cost"]
    assert cost["shoppers"] == 120 and cost["on"]["calls"] == cost["off"]["calls"] == 3 * 120
    assert 0 <= cost["answers_differing"] <= cost["shoppers"] and cost["on"]["p50_ms"] > 0 and cost["off"]["p50_ms"] > 0
