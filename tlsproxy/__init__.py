"""tlsproxy: plaintext MySQL in, verified TLS out."""

__version__ = "0.1.0"
