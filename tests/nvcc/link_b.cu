// The second translation unit of the link check (see link_a.cu).
#include "dsx/backend/cuda/all.cuh"

int dsx_nvcc_link_b() { return 0; }
