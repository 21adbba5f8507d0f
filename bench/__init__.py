"""bench/: what TLS to MySQL costs -- plaintext vs the client's own TLS vs through tlsproxy.

`python -m bench run --quick` (or `--full`); see README.md's "Benchmarks" section.
"""
