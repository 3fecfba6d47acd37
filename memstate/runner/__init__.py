"""Running a network: scenarios (TOML), the bundled digits, variants (bugs on demand), the registry of
implementations, the harness that trains one and records its trace, and checkpoint runs for bisect."""
