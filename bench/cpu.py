"""CPU benchmark of the NumPy backend against PyTorch; see gpu_tconv/bench_cpu.py."""

from gpu_tconv.bench_cpu import main

if __name__ == "__main__":
    main()
