"""Helpers and test doubles that siprecd's tests (and plug-in authors') reuse.

Every double here is named as one and implements the real interface.
"""
