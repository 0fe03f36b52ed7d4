// GPU ranks' collectives through NCCL on one GPU (label gpu): stories260K as a
// tensor-parallel rank of a world of one, its sums and logits gather going
// through an NCCL communicator on the CUDA backend's stream, against the same
// model run plainly on that GPU. World size 1 still runs every sharded step:
// the vocabulary-parallel embedding and its all-reduce, the two all-reduces per
// layer, lm_head over the rank's vocabulary plus the zero row, the padded
// all-gather and its unpacking on the device. Several GPUs are checked by
// scripts/gpu-tp-check (mpirun over real ranks).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <vector>

#include "dist/communicator.h"
#include "dist/nccl_communicator.h"
#include "engine/decoder_model.h"
#include "gpu_test_util.h"
#include "kernels/cuda/cuda_backend.h"
#include "loader/llama2c.h"
#include "loader/model_source.h"
#include "loader/tensor_shard.h"
#include "../unit/model_steps.h"
#include "../unit/test_util.h"

namespace nibble {
namespace {

class NcclGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_testing::gpu_available()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(NcclGpu, OneRankThroughTheShardedPathMatchesThePlainGpuRun) {
  testing::TempDir dir;
  const auto stories = std::filesystem::path(NIBBLE_SHARED_DIR) / "models/stories260K";
  convert_llama2c(stories / "stories260K.bin", stories / "tok512.bin", dir.path());
  kernels::cuda::CudaBackend gpu(0);
  const ModelSource source = open_model(dir.path());
  engine::DecoderModel plain(source, gpu);

  // The NCCL unique id travels over the bootstrap group: the identity for one rank.
  const auto bootstrap = dist::make_single_rank_communicator();
  const auto nccl = dist::make_nccl_communicator(*bootstrap, gpu.device_index(), gpu.stream());
  ASSERT_TRUE(nccl->device_memory());
  const TensorShardLayout layout = plan_tensor_shard(source.config, 0, 1);
  engine::ModelOptions options;
  options.tensor_shard = layout;
  options.tensor_group = nccl.get();
  const ModelSource shard = shard_model_source(open_model(dir.path()), layout);
  engine::DecoderModel sharded(shard, gpu, options);

  const auto want = testing::run_model_steps(plain);
  const auto got = testing::run_model_steps(sharded);
  ASSERT_EQ(got.size(), want.size());
  double worst = 0, scale = 0;
  for (std::size_t s = 0; s < want.size(); ++s) {
    ASSERT_EQ(got[s].size(), want[s].size()) << "step " << s;
    for (std::size_t i = 0; i < want[s].size(); ++i) {
      ASSERT_TRUE(std::isfinite(got[s][i])) << "step " << s << " logit " << i;
      worst = std::max(worst, std::abs(static_cast<double>(got[s][i]) - want[s][i]));
      scale = std::max(scale, std::abs(static_cast<double>(want[s][i])));
    }
  }
  // A sum over one rank is the identity and the gather a copy; only lm_head's
  // one extra (zero) row may change the GEMM's algorithm and so its summation order.
  EXPECT_LT(worst / std::max(scale, 1e-30), 1e-5);

  // The collectives went through NCCL: per step one all-reduce for the
  // embedding and two per layer, and one all-gather of the logits.
  nccl->barrier();
  const auto& stats = nccl->stats();
  const auto steps = static_cast<std::uint64_t>(want.size());
  EXPECT_EQ(stats[dist::Collective::AllReduce].calls,
            steps * (1 + 2 * static_cast<std::uint64_t>(source.config.num_layers)));
  EXPECT_EQ(stats[dist::Collective::AllGather].calls, steps);
}

}  // namespace
}  // namespace nibble
