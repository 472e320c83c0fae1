"""Harnesses for siprecd's own tests, benchmarks and fuzzing; not installed.

These modules drive real things from this source tree: a siprecd daemon in
a subprocess or its service tree in-process (:mod:`harness.daemon`,
:mod:`harness.inprocess`), peers and neighbours (sipp, Kamailio, the
example remote ASR server, an HTTPS webhook receiver), throwaway
certificate authorities, the failure drills, and the seeds and hypothesis
strategies the fuzzers start from. Several of them need the test-only
extras (hypothesis) or files that only the source tree has (contrib/,
scripts/), so the wheel leaves this package out; the editable install puts
the repository root on ``sys.path``, which is how tests/, bench/ and fuzz/
import it.

- :mod:`harness.daemon` -- a real daemon in a subprocess, waited on through
  its log lines; loopback configs and free ports.
- :mod:`harness.inprocess` -- the daemon's service tree in the test's own
  process.
- :mod:`harness.api` -- an HTTPS client of the API and a provisioned app.
- :mod:`harness.sipp` -- sipp runs as a real SIP peer.
- :mod:`harness.kamailio` -- Kamailio as a dispatcher in front of nodes.
- :mod:`harness.asr_server` -- the example remote ASR server in a
  subprocess.
- :mod:`harness.receiver` -- a real HTTPS webhook receiver and OAuth2
  token endpoint.
- :mod:`harness.pki` -- throwaway certificate authorities and certificates.
- :mod:`harness.waiting` -- waiting, bounded, for state no event reports.
- :mod:`harness.model_server` -- a Vosk-style model host (model list and
  zips) over HTTP or HTTPS on loopback, for model fetching.
- :mod:`harness.without` -- a siprecd command run as if some packages were
  not installed (the base install, or one extra missing).
- :mod:`harness.drills` -- what the failure drills (tests/drills) need.
- :mod:`harness.fuzz` -- SIP seeds and mutations for the fuzzers.
- :mod:`harness.sip_strategies` -- hypothesis strategies for SIP messages.

The test doubles a plug-in author can reuse are shipped, in
:mod:`siprecd.testing`.
"""
