"""Benchmark implementations (one module per benchmark); the CLI lives in htx.cli.bench_cmd."""
