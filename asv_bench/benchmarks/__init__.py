"""asv benchmarks for dynflow; run from ``asv_bench/`` (see ``asv_bench/asv.conf.json``)."""
