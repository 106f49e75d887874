"""The alarm bench's trace breakdown (``bench/sos_trace_report.py``) on a trace written by hand."""

from __future__ import annotations

from pathlib import Path

from bench.sos_trace_report import breakdown


def _line(at: float, thread: str, what: str, detail: str = "-", cpu: str = "- -") -> str:
    return f"{at:.6f} 100 {thread} {what} {detail} {cpu}\n"


def test_an_sos_is_split_into_its_steps_and_what_overlapped_it(tmp_path: Path) -> None:
    t = 1000.0
    trace = tmp_path / "trace.log"
    trace.write_text(
        "".join(
            [
                _line(t + 0.002, "paho-net", "recv", "LW-1"),
                _line(t + 0.003, "alarm-worker", "handle", "LW-1", "1000000 2000000"),
                _line(t + 0.004, "uvloop_3", "gc", "2"),
                _line(t + 0.009, "uvloop_3", "gced", "2"),
                _line(t + 0.011, "alarm-worker", "publish", "LW-1"),
                _line(t + 0.012, "alarm-worker", "handled", "LW-1", "5000000 3000000"),
                _line(t + 0.013, "alarm-make-whole", "whole"),
                _line(t + 0.030, "alarm-make-whole", "wholed"),
                # another SOS, quicker
                _line(t + 0.501, "paho-net", "recv", "LW-2"),
                _line(t + 0.502, "alarm-worker", "handle", "LW-2", "6000000 3000000"),
                _line(t + 0.505, "alarm-worker", "publish", "LW-2"),
                _line(t + 0.506, "alarm-worker", "handled", "LW-2", "8000000 3000000"),
            ]
        )
    )
    sos = [
        {"device": "LW-1", "sent": t, "ack_s": 0.014, "committed": t + 0.010},
        {"device": "LW-2", "sent": t + 0.5, "ack_s": 0.007},
        {"device": "LW-3", "sent": t + 1.0, "ack_s": None},  # unacknowledged: left out
    ]
    result = breakdown(sos, trace, [(t + 0.001, 0.003), (t + 0.6, 0.050)], slowest_share=0.5)

    assert result["sos_traced"] == 2
    [slow] = result["slowest"]
    assert slow["device"] == "LW-1"
    assert slow["to_network_thread"] == 2.0
    assert slow["to_worker"] == 1.0
    assert slow["transaction"] == 9.0
    assert slow["transaction_on_cpu"] == 4.0
    assert slow["transaction_waiting_for_cpu"] == 1.0
    assert slow["commit_stamp_after_handle"] == 7.0
    assert slow["ack_out"] == 3.0
    assert slow["overlap_gc"] == 5.0
    assert slow["overlap_making_whole"] == 1.0  # 13 → 14 ms of a span that ended at the ack
    assert slow["raw_round_trip_max_meanwhile"] == 3.0  # the later ping was sent after the ack
    assert result["gc_longest_ms"] == 5.0
    assert result["making_whole_ms_p50_max"] == [17.0, 17.0]
