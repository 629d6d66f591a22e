"""Fault injection for the worker's tests: a TCP proxy that can take a service away,
worker processes to kill and restart, test plugins, message streams and the checks
every fault must pass."""
