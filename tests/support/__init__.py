"""Helpers the tests share that are not tests: the local Hub stand-in (hub_server) and the train.py fork server."""
