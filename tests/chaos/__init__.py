"""Chaos tests: real worker subprocesses and real servers, killed, frozen and cut off."""
