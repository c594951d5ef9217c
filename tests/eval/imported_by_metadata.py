"""A module a store's metadata names as env_id "tests.eval.imported_by_metadata:Nope-v0" (see test_cli):
it must never be imported because a store said so."""
