"""Admission by capacity (siprecd.transcribe.admission): a start-streaming
the recognisers cannot keep in real time is refused with 500-201 and its
reason, while the calls themselves are answered and recorded.

The figures are checked sans-IO first (a costs double and windows double,
named as such); then through the daemon's service tree in this process:
two real SIPREC calls from the simulator (Korean speech, the real Korean
Vosk model), the HTTPS API over real TLS, a cost configured so that the
node keeps one call's two streams in real time.
"""

import re
import types

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads
from zope.interface import implementer

from harness.api import ApiClient, create_app
from harness.inprocess import CallWatcher, start_service_tree
from siprecd.interfaces import IRecognitionCosts
from siprecd.simulator import CallSpec, Target, place_calls
from siprecd.testing.asr import KO_LANGUAGE, korean_speech
from siprecd.transcribe.admission import Admission, AtCapacity


@implementer(IRecognitionCosts)
class CostsDouble:
    """TEST DOUBLE of a backend's recognition costs: fixed figures."""

    def __init__(self, threads=2, costs=None):
        self.threads = threads
        self.costs = dict(costs or {})

    def cost(self, language):
        return self.costs.get(language)


class WindowsDouble:
    """TEST DOUBLE of the open windows: (language, lag) per window."""

    def __init__(self):
        self.open = []

    def add(self, language, lag=0.0, opened_at=None):
        pipeline = types.SimpleNamespace(lag=lambda now=None: lag)
        self.open.append(types.SimpleNamespace(
            params=types.SimpleNamespace(language=language), pipeline=pipeline,
            leg_stream=types.SimpleNamespace(opened_at=opened_at)))

    def open_windows(self):
        return list(self.open)


def test_streams_are_admitted_up_to_the_budget_and_refused_beyond_it():
    windows = WindowsDouble()
    admission = Admission(CostsDouble(threads=4, costs={"ko": 0.2, "en-us": 0.1}), windows,
                          processors=2, target_load=0.8)
    # 2 processors (fewer than 4 threads) x 0.8 = 1.6; ko streams cost 0.2.
    assert admission.budget == pytest.approx(1.6)
    assert admission.capacity("ko") == 8 and admission.headroom("ko") == 8
    for _ in range(6):
        windows.add("ko")
    assert admission.headroom("ko") == 2 and admission.headroom("en-us") == 4
    with admission.reserve("ko", 2, "g1"):
        # Held while the start is in progress: nothing left for another.
        assert admission.headroom("ko") == 0
        with pytest.raises(AtCapacity) as refused:
            admission.reserve("en-us", 2, "g2")
    message = str(refused.value)
    assert "at capacity" in message and "room for 0" in message and "try another node" in message
    assert refused.value.code == "500-201"
    assert admission.headroom("en-us") == 4
    assert admission.refused == {"capacity": 1, "behind": 0}


def test_a_start_while_other_streams_are_new_counts_three_times_by_default():
    clock = task.Clock()
    windows = WindowsDouble()
    admission = Admission(CostsDouble(costs={"ko": 0.2}), windows, processors=2,
                          target_load=0.8, clock=clock)
    assert admission.burst_factor == 3.0
    # 1.6 to use; nothing new here, so a start counts double: 0.4 a stream.
    assert admission.capacity("ko") == 8 and admission.headroom("ko") == 4
    with admission.reserve("ko", 2, "g1"):
        # A start in progress: another counts three times (0.6 a stream).
        assert admission.headroom("ko") == 1
        with pytest.raises(AtCapacity) as refused:
            admission.reserve("ko", 2, "g2")
        message = str(refused.value)
        assert "2 times that during its first 10 s" in message
        assert "a start 3 times while another stream is in its first seconds" in message
    for _ in range(2):
        windows.add("ko", opened_at=clock.seconds())
    # Its streams are open and new (0.8 in all): still three times.
    assert admission.demand() == pytest.approx(0.8) and admission.headroom("ko") == 1
    with pytest.raises(AtCapacity):
        admission.reserve("ko", 2, "g2")
    clock.advance(10)
    # Settled (0.4 in all): a start counts double again, as many calls as
    # without the burst weight can be reached.
    assert admission.demand() == pytest.approx(0.4) and admission.headroom("ko") == 3
    admission.reserve("ko", 2, "g2").release()
    for _ in range(4):
        windows.add("ko", opened_at=clock.seconds() - 60)
    assert admission.headroom("ko") == 1
    steady = Admission(CostsDouble(costs={"ko": 0.2}), windows, processors=2,
                       target_load=0.8, clock=clock, burst_factor=2)
    assert steady.headroom("ko") == 1
    # Less than a new stream counts anyway is not taken.
    assert Admission(CostsDouble(costs={"ko": 0.2}), windows, processors=2, clock=clock,
                     burst_factor=1).burst_factor == 2.0


def test_a_streams_first_seconds_count_double():
    clock = task.Clock()
    windows = WindowsDouble()
    admission = Admission(CostsDouble(costs={"ko": 0.2}), windows, processors=2,
                          target_load=0.8, clock=clock, burst_factor=2)
    # 1.6 to use; a new stream counts 0.4 during its first ten seconds.
    assert admission.capacity("ko") == 8 and admission.headroom("ko") == 4
    for _ in range(2):
        windows.add("ko", opened_at=clock.seconds())
    assert admission.demand() == pytest.approx(0.8) and admission.headroom("ko") == 2
    with admission.reserve("ko", 2, "g1"):
        with pytest.raises(AtCapacity) as refused:
            admission.reserve("ko", 2, "g2")
    assert "room for 0;" in str(refused.value)
    assert "2 times that during its first 10 s" in str(refused.value)
    clock.advance(10)
    # Settled: the two count their cost, 0.4 in all.
    assert admission.demand() == pytest.approx(0.4) and admission.headroom("ko") == 3
    admission.reserve("ko", 2, "g3").release()


def test_an_idle_node_admits_a_start_whatever_the_figures_say():
    windows = WindowsDouble()
    # One stream would use more than there is; nothing else runs.
    admission = Admission(CostsDouble(costs={"ko": 0.6}), windows, processors=1,
                          target_load=0.85, clock=task.Clock())
    with admission.reserve("ko", 2, "g1"):
        with pytest.raises(AtCapacity):
            admission.reserve("ko", 1, "g2")
    windows.add("ko")
    with pytest.raises(AtCapacity):
        admission.reserve("ko", 1, "g3")
    assert admission.refused["capacity"] == 2


def test_no_new_stream_while_one_is_behind_real_time():
    windows = WindowsDouble()
    admission = Admission(CostsDouble(costs={"ko": 0.1}), windows, processors=2, max_lag=1.0)
    windows.add("ko", lag=0.4)
    admission.reserve("ko", 2).release()
    windows.add("ko", lag=2.5)
    with pytest.raises(AtCapacity) as refused:
        admission.reserve("ko", 2, "g")
    assert "behind real time on 1 stream(s) (up to 2.5 s)" in str(refused.value)
    assert admission.refused["behind"] == 1


def test_without_a_figure_or_costs_or_when_off_nothing_is_refused():
    windows = WindowsDouble()
    for _ in range(50):
        windows.add("ko")
    # Nothing measured yet and no seed: no figure, no limit.
    unknown = Admission(CostsDouble(costs={}), windows, processors=1)
    assert unknown.capacity("ko") is None
    unknown.reserve("ko", 2).release()
    # A backend that does not recognise on this machine (remote).
    remote = Admission(object(), windows, processors=1)
    assert not remote.enabled
    remote.reserve("ko", 2).release()
    off = Admission(CostsDouble(costs={"ko": 1.0}), windows, processors=1, enabled=False)
    off.reserve("ko", 2).release()


def call(client, method, *args, **kwargs):
    return threads.deferToThread(getattr(client, method), *args, **kwargs)


@pytest_twisted.ensureDeferred
async def test_a_start_beyond_capacity_is_refused_over_https_and_the_call_still_recorded(
        tmp_path):
    # Two processors, all of them for streams, 0.45 of a processor per
    # stream and twice that during a stream's first ten seconds (also for
    # a start while others are in theirs: asr.capacity.burst_factor): room for
    # two new streams, one call. The cost is learnt as the first call is
    # recognised; the figures hold for any learnt cost in (0.25, 0.5] (a
    # loaded machine measured 0.44). max_lag is wide so that the refusal
    # seen is the one for capacity, which this test is about.
    capacity = {"enabled": True, "cpus": 2, "target_load": 1.0, "cost": 0.45,
                "max_lag": "60s", "burst_factor": 2}
    root, written = await start_service_tree(tmp_path, reactor,
                                             asr={"capacity": capacity})
    cert = tmp_path / "state" / "tls" / "api-selfsigned.crt"
    app = ApiClient(written["api"]["port"], cert,
                    *create_app(tmp_path / "siprecd.yaml", label="admission"))
    watcher = CallWatcher(root)
    speech = korean_speech("안녕하세요 카드 번호를 알려 주세요", tmp_path / "ko.wav")
    target = Target("127.0.0.1", written["sip"]["udp"]["port"])
    placed = place_calls(reactor, target,
                         [CallSpec(customer=speech, duration=12), CallSpec(customer=speech,
                                                                           duration=12)],
                         media_host="127.0.0.1", local_host="127.0.0.1")
    ko = {"language": KO_LANGUAGE}
    try:
        first = (await watcher.offered.get()).guid.value
        second = (await watcher.offered.get()).guid.value
        transcription = root.node.transcription
        assert transcription.capacity()["languages"]["ko"]["headroom"] == 2

        started = await call(app, "start", first, autotranscribeParams=ko)
        assert started.status == 200, started.body
        refused = await call(app, "start", second, autotranscribeParams=ko)
        assert (refused.status, refused.code) == (500, "500-201")
        message = refused.body["error"]["message"]
        # Room for fewer than the call's two streams (none at the seed's
        # figure; one at a learnt cost below 1/3).
        assert "at capacity" in message and re.search(r"room for [01];", message), message
        assert "during its first 10 s" in message and "try another node or later" in message
        figures = transcription.capacity()
        assert figures["languages"]["ko"]["headroom"] < 2
        assert figures["refused"]["capacity"] == 1

        # Once the first is stopped there is room again.
        stopped = await call(app, "stop", first)
        assert stopped.status == 200, stopped.body
        started = await call(app, "start", second, autotranscribeParams=ko)
        assert started.status == 200, started.body
        summary = await placed
        placed = None
    finally:
        if placed is not None:
            for s in list(root.node.sip_server.calls.values()):
                root.node.sip_server.hang_up(s, "test over")
        await root.stopService()
        if placed is not None:
            await placed
    # Both INVITEs were answered and both calls recorded: recording needs
    # no recogniser.
    assert [c.status for c in summary.calls] == [200, 200]
    assert all(c.answered for c in summary.calls)
