"""The docs' cost section is what ``bench/cost_section.py`` makes of the committed ``bench_cost.json``,
and ``bench/bench_cost.py`` takes its inputs from the bench JSONs' fields, else from named fallbacks."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))  # the bench scripts import each other by module name

import bench_cost  # noqa: E402
import cost_section  # noqa: E402


def test_the_committed_cost_section_is_generated_from_the_committed_json() -> None:
    (holder,) = cost_section.holders()
    text = holder.read_text(encoding="utf-8")
    expected = cost_section.replace_block(text, cost_section.render(json.loads(cost_section.RESULTS.read_text())))
    assert text == expected, f"{holder.name}: run `.venv/bin/python bench/cost_section.py` (or bench/bench_cost.py)"


def test_the_block_is_found_wherever_it_moved(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / ".venv").mkdir()
    (tmp_path / "README.md").write_text("# Title\nno block here\n")
    (tmp_path / "docs" / "operations.md").write_text(f"## Cost\n{cost_section.BEGIN}\nold\n{cost_section.END}\ntail\n")
    (tmp_path / ".venv" / "vendored.md").write_text(cost_section.BEGIN)
    (tmp_path / "docs" / "mentions.md").write_text(f"the block between `{cost_section.BEGIN}` and ...\n")
    assert cost_section.holders(tmp_path) == [tmp_path / "docs" / "operations.md"]


def test_only_the_block_is_replaced() -> None:
    text = f"head\n{cost_section.BEGIN}\nold\nlines\n{cost_section.END}\ntail\n"
    once = cost_section.replace_block(text, "new")
    assert once == f"head\n{cost_section.BEGIN}\nnew\n{cost_section.END}\ntail\n"
    assert cost_section.replace_block(once, "new") == once
    begin, end = cost_section.BEGIN, cost_section.END
    for broken in (
        "no markers",
        f"{end}\n{begin}",
        f"{begin}\n{begin}\n{end}",
        f"`{begin}` and `{end}`",
    ):
        with pytest.raises(ValueError):
            cost_section.replace_block(broken, "new")


def noop_doc(**fields: Any) -> dict[str, Any]:
    size = {
        "messages_on_server": 1000,
        "noop": {
            "aws_calls": {"dynamodb:GetItem": 1, "dynamodb:UpdateItem": 2, "dynamodb:PutItem": 1, "kms:Decrypt": 1},
            "bytes_up": 100,
            "bytes_down": 900,
        },
    }
    return {"parameters": {}, "results": [{**size, **fields}]}


def test_noop_inputs_prefer_the_measured_fields() -> None:
    inputs = bench_cost.Inputs()
    bench_cost.noop_inputs(inputs, noop_doc(cpu_ms=8.5, dynamodb_wru=0, dynamodb_rru=0.5, kms_calls=0))
    assert (inputs["noop_cpu_ms"], inputs["noop_dynamodb_wru"], inputs["noop_kms_calls"]) == (8.5, 0, 0)
    assert inputs.values["noop_dynamodb_wru"]["source"].startswith("bench_noop_sync.json: dynamodb_wru")


def test_noop_inputs_take_the_largest_mailbox_in_any_layout() -> None:
    small, large = {"cpu_ms": 4.0, "kms_calls": 0}, {"cpu_ms": 6.0, "kms_calls": 0}
    for results in ([small, large], {"sizes": [small, large]}, {"200": small, "20000": large}):
        inputs = bench_cost.Inputs()
        bench_cost.noop_inputs(inputs, {"parameters": {}, "results": results})
        assert inputs["noop_cpu_ms"] == 6.0, results


def test_noop_inputs_fall_back_to_the_call_counts_then_to_named_defaults() -> None:
    inputs = bench_cost.Inputs()
    bench_cost.noop_inputs(inputs, noop_doc())
    assert (inputs["noop_dynamodb_wru"], inputs["noop_dynamodb_rru"], inputs["noop_kms_calls"]) == (3, 1, 1)
    assert inputs["noop_wire_bytes"] == 1000
    assert "fallback" in inputs.values["noop_cpu_ms"]["source"]
    missing = bench_cost.Inputs()
    bench_cost.noop_inputs(missing, None)
    assert all("fallback" in v["source"] for v in missing.values.values())


def test_the_totals_are_the_sums_of_their_line_items() -> None:
    inputs = bench_cost.Inputs()
    bench_cost.noop_inputs(inputs, noop_doc(cpu_ms=10, dynamodb_wru=0, dynamodb_rru=0, kms_calls=0))
    bench_cost.throughput_inputs(inputs, {"parameters": {}, "results": {"accounts_per_cpu_second": 200}})
    for name, value in (
        ("send_batches_per_account", 0.001),
        ("scheduler_rru_per_account", 0.008),
        ("accounts_per_invocation", 100),
        ("worker_cpu_ms_per_message", 2),
        ("wru_per_message", 7),
        ("rru_per_message", 1),
    ):
        inputs.set(name, value, "test")
    r = bench_cost.model(inputs, polls_per_user=43_200, messages_per_user_day=50, message_kb=75, users=10_000)
    assert inputs["poll_cpu_seconds"] == 1 / 200
    assert r["polling_usd_per_1000_users_month"] == pytest.approx(
        sum(i["usd"] for i in r["polling_items"]) + r["fixed_usd_per_month"] / 10
    )
    assert r["messages_usd_per_1000_users_month"] == pytest.approx(sum(i["usd"] for i in r["messages_items"]))
    by_name = {i["item"]: i for i in r["polling_items"]}
    assert by_name["KMS"]["usd"] == 0 and by_name["DynamoDB writes"]["usd"] == 0
    assert by_name["Lambda requests, worker"]["quantity"] == pytest.approx(43_200 * 1000 / 100)
    assert r["messages_per_1000_users_month"] == 1_500_000


def test_a_poll_is_billed_the_invocations_memory_for_as_long_as_its_threads_or_cpu_take() -> None:
    inputs = bench_cost.Inputs()
    model = {"memory_mb": 1769, "threads": 16, "wall_per_account_s_assumed": 0.5, "lambda_cpu_slowdown_assumed": 2}
    doc = {"parameters": {}, "results": {"accounts_per_cpu_second": 200, "model": model}}
    bench_cost.throughput_inputs(inputs, doc)
    # 5 ms here, 10 ms on Lambda: one vCPU allows 100 polls a second; 16 threads of 0.5 s allow 32.
    assert bench_cost.poll_rate(inputs, 1769, 16) == (pytest.approx(32), "threads")
    assert bench_cost.poll_gb_seconds(inputs) == pytest.approx(1769 / 1024 / 32)
    assert bench_cost.poll_rate(inputs, 1769, 64) == (pytest.approx(100), "CPU")
    assert bench_cost.poll_gb_seconds(inputs, 1769, 64) == pytest.approx(1769 / 1024 / 100)
    # Half the memory, half the vCPU: the same GB-seconds when the CPU bounds it.
    assert bench_cost.poll_gb_seconds(inputs, 884.5, 64) == pytest.approx(1769 / 1024 / 100)
