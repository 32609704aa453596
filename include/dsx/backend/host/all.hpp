// Every primitive of the host backend.
#pragma once

#include "dsx/backend/host/host.hpp"
#include "dsx/backend/host/gemm.hpp"
#include "dsx/backend/host/rmsnorm.hpp"
#include "dsx/backend/host/rope.hpp"
#include "dsx/backend/host/swiglu.hpp"
#include "dsx/backend/host/embedding.hpp"
#include "dsx/backend/host/cross_entropy.hpp"
#include "dsx/backend/host/tensor_ops.hpp"
#include "dsx/backend/host/moe.hpp"
#include "dsx/backend/host/attention.hpp"
#include "dsx/backend/host/fp8.hpp"
