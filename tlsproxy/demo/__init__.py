"""The demo and its tooling, kept out of the product's top level.

* run.py: ``tlsproxy demo`` (run_demo), the whole product on an embedded default;
* localdb.py and mariadb.py: a throw-away local MariaDB with TLS (start_mariadb, MariaDBServer), also
  used by the integration tests and the benchmarks;
* pki.py: a throw-away PKI (CertificateAuthority), also used by the tests and the benchmarks.

This package may import the product; nothing in the product imports it, except cli.py for ``tlsproxy demo``.
"""
