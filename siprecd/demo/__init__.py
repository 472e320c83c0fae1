"""``siprecd demo``: the main job of siprecd shown end to end on one machine.

A daemon of its own (a subprocess, on free loopback ports, with a
temporary state directory), a local HTTPS webhook receiver, one SIPREC
call placed by the simulator with synthetic speech on both streams,
start-streaming and stop-streaming over HTTPS, each utterance printed as
its webhook arrives, then the call's transcript read back with GET
messages. See :mod:`siprecd.demo.cli`.

- :mod:`siprecd.demo.speech` -- which model and voice (English when an
  English Vosk model is on this machine, else the Korean model of the
  ``demo`` extra), and the speech made with espeak-ng;
- :mod:`siprecd.demo.receiver` -- the webhook receiver that prints.
"""
