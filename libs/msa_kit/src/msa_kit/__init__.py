"""msa_kit: the plumbing every process of the sandbox shares.

A service reads like a description of its business; discovery, config, resilient calls, events, tracing and
errors are one import away. Nothing here imports a service.
"""
