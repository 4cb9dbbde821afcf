// The col2im step of the classic GEMM + col2im transposed convolution (Caffe's
// col2im_gpu_kernel, Chainer's col2im_gpu), a peer in the GPU benchmark.
//
// The GEMM before it computes, per sample and group, col = W^T x: for every
// output channel co, kernel tap k and input pixel i, col[co, k, i] = sum over
// the group's input channels of w[ci, co, k] * x[ci, i]. This kernel then
// gathers, one thread per output element, every col entry whose tap and input
// pixel land on it: o = i*stride - padding + k*dilation, testing each tap for
// divisibility as the classic kernels do.
//
// Layouts (C-contiguous): col (N, C_out, k0*k1*k2, in0*in1*in2),
// y (N, C_out, out0, out1, out2). Indices are 32-bit (the benchmark splits the
// batch so that col stays below 2**31 elements).

#include "conv_transpose.cu"

namespace gpu_tconv {

template <typename T>
__global__ void col2im(const T* __restrict__ col, T* __restrict__ y, const int total,
                       const int in0, const int in1, const int in2,
                       const int out0, const int out1, const int out2,
                       const int k0, const int k1, const int k2,
                       const int stride0, const int stride1, const int stride2,
                       const int pad0, const int pad1, const int pad2,
                       const int dil0, const int dil1, const int dil2) {
    typedef typename accumulator<T>::type Acc;
    const int taps = k0 * k1 * k2;
    const int in_plane = in0 * in1 * in2;
    for (int index = blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += blockDim.x * gridDim.x) {
        const int o2 = index % out2;
        const int o1 = index / out2 % out1;
        const int o0 = index / out2 / out1 % out0;
        const int plane = index / out2 / out1 / out0;  // n * C_out + co
        const T* col_p = col + (long long)plane * taps * in_plane;
        Acc acc = 0;
        for (int a = 0; a < k0; ++a) {
            const int r0 = o0 + pad0 - a * dil0;
            if (r0 < 0 || r0 % stride0 != 0 || r0 / stride0 >= in0) continue;
            for (int b = 0; b < k1; ++b) {
                const int r1 = o1 + pad1 - b * dil1;
                if (r1 < 0 || r1 % stride1 != 0 || r1 / stride1 >= in1) continue;
                for (int c = 0; c < k2; ++c) {
                    const int r2 = o2 + pad2 - c * dil2;
                    if (r2 < 0 || r2 % stride2 != 0 || r2 / stride2 >= in2) continue;
                    const int tap = (a * k1 + b) * k2 + c;
                    const int pixel = (r0 / stride0 * in1 + r1 / stride1) * in2 + r2 / stride2;
                    acc += to_acc(col_p[(long long)tap * in_plane + pixel]);
                }
            }
        }
        y[index] = from_acc<T>(acc);
    }
}

}  // namespace gpu_tconv
