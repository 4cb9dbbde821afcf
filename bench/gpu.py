"""GPU benchmark against cuDNN and GEMM + col2im; see gpu_tconv/bench_gpu.py."""

from gpu_tconv.bench_gpu import main

if __name__ == "__main__":
    main()
