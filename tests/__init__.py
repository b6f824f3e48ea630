"""Test package: makes ``tests.cvmfs_reader`` importable and puts the repo root on sys.path."""
