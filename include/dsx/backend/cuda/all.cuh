// Every primitive of the CUDA backend (the counterpart of backend/host/all.hpp). Include from .cu
// files only; host-only code never sees this folder.
#pragma once

#include "dsx/backend/cuda/cuda.cuh"
#include "dsx/backend/cuda/gemm.cuh"
#include "dsx/backend/cuda/rmsnorm.cuh"
#include "dsx/backend/cuda/rope.cuh"
#include "dsx/backend/cuda/swiglu.cuh"
#include "dsx/backend/cuda/embedding.cuh"
#include "dsx/backend/cuda/cross_entropy.cuh"
#include "dsx/backend/cuda/tensor_ops.cuh"
#include "dsx/backend/cuda/attention.cuh"
#include "dsx/backend/cuda/moe.cuh"
#include "dsx/backend/cuda/fp8.cuh"
#include "dsx/backend/cuda/adamw.cuh"
