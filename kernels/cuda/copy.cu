// copy.cu: the bandwidth reference. The benchmark harness compares each
// kernel's achieved bytes/s with this plain copy on the same device, in the
// same run (read + write counted), over a working set larger than L2.

// dst, src: (n,) as 16-byte vectors
extern "C" __global__ void copy_f32x4(float4* dst, const float4* src, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        dst[i] = src[i];
}
