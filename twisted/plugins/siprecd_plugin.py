"""twistd plugin: makes `twistd siprecd -c FILE` available.

Kept to the IServiceMaker alone; everything else is imported lazily by
ServiceMaker from siprecd.tap when the plugin is used.
"""

from twisted.application.service import ServiceMaker

siprecd = ServiceMaker(
    "siprecd",
    "siprecd.tap",
    "SIPREC recording server that transcribes calls as they happen",
    "siprecd",
)
