// testing_ptx.cu — kernels for tests/emulator_ptx.rs: the PTX rules the emulator must
// follow where a kernel could otherwise pass in `cargo test` and fail on a GPU. Not
// used by the model.
//
// test_lane_bits   shuffles whose lane or offset operand is 32 or more (or negative):
//                  shfl.sync reads only the operand's low five bits, b[4:0].
// test_bounded     compiled for at most 64 threads a block (__launch_bounds__): a
//                  launch of more is refused, by the driver and by the emulator.
#include "common.cuh"

// out[8·tid + k]: v = 3·tid + 1 read through shuffles with lane operands past 31.
// Any number of whole warps.
KERNEL(test_lane_bits)(float* out) {
    const int tid = threadIdx.x, lane = tid & 31;
    const float v = (float)(3 * tid + 1);
    const u32 full = 0xffffffffu;
    float* o = out + 8 * tid;
    o[0] = __shfl_sync(full, v, lane + 33);       // lane (lane + 1) % 32
    o[1] = __shfl_sync(full, v, 39, 8);           // lane 7 of this 8-lane segment
    o[2] = __shfl_sync(full, v, -1);              // lane 31
    o[3] = __shfl_xor_sync(full, v, 33);          // lane ^ 1
    o[4] = __shfl_down_sync(full, v, 34);         // lane + 2, or its own value
    o[5] = __shfl_up_sync(full, v, 35);           // lane - 3, or its own value
    o[6] = __shfl_down_sync(full, v, 32);         // an offset of 0: its own value
    o[7] = (float)__shfl_sync(full, lane, 64 + 5);  // lane 5
}

// out[t] = t for the block's threads.
KERNEL_BOUNDS(test_bounded, 64)(float* out) { out[threadIdx.x] = (float)threadIdx.x; }

// The entry points of this file (build.rs reads this list: the NVRTC entry-point table
// and the emulator's exports are generated from it).
ENTRY_POINTS(test_lane_bits, test_bounded)
