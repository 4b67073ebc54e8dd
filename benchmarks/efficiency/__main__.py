"""``python -m benchmarks.efficiency``: the benchmark's command line
(``benchmarks.efficiency.cli``); also what each worker process runs."""

from benchmarks.efficiency.cli import main

if __name__ == "__main__":
    main()
