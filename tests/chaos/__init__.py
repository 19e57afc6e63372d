"""The chaos test: several ``kyc-sync run`` processes in one group under SIGKILLs, a broker restart
and injected warehouse faults, checked against an oracle (``driver.run_chaos``)."""
