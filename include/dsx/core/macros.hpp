// Portability macros shared by host and CUDA code.
#pragma once

// DSX_HD marks functions written once for host and device (index math, routing, quantisation,
// online softmax). Under nvcc they compile for both sides and are force-inlined; elsewhere they are
// ordinary inline functions that the host compiler unit-tests.
#if defined(__CUDACC__)
#define DSX_HD __host__ __device__ __forceinline__
#define DSX_DEVICE_COMPILE 1
#else
#define DSX_HD inline
#define DSX_DEVICE_COMPILE 0
#endif
