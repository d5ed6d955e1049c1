"""Tooling apart from the runtime: the local stack, the benchmark, the bank test, the load generator and the seeder. Installed by the `dev` extra; production never imports it."""
