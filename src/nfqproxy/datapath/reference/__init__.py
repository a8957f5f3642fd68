"""The reference data path: plain Python, the executable specification of the contract."""
