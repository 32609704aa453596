// Two translation units that both include the whole CUDA backend must link into one program: every
// kernel defined in a header is a template or has internal linkage. This file and link_b.cu are the test.
#include "dsx/backend/cuda/all.cuh"

int dsx_nvcc_link_b();

int main() { return dsx_nvcc_link_b(); }
