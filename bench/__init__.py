"""Benchmarks of the product's hot paths against the naive patterns they replace.

Run `python -m bench` from the project folder; `python -m bench --help` lists the
options. Every server a benchmark starts listens on 127.0.0.1, and
`bench.loopback.install_guard` rejects any connection to another address.
"""
