import os

# Many mid-sized parallel regions: with OpenMP's default busy-waiting, a second thread on a shared
# machine costs more than it gives (measured in docs/benchmarks.md). Users can still override it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tracer.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
