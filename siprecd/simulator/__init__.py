"""A SIPREC call simulator (the ``siprecd-src`` command): plays the part of
an SBC's session recording client against a recording server, to check a
deployment before a real SBC is pointed at it. See contrib/simulator/README.md.
"""

from siprecd.simulator.results import CallResult, StreamResult, Summary
from siprecd.simulator.rtp import Impairments
from siprecd.simulator.runner import CallSpec, Target, place_calls, prepare

__all__ = ["CallSpec", "Target", "Impairments", "place_calls", "prepare", "Summary",
           "CallResult", "StreamResult"]
