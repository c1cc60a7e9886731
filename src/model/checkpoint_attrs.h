// checkpoint_attrs.h: the parts of the "frugal-ckpt-v1" format (see checkpoint.h) shared by the
// single-process checkpoint (src/model/checkpoint.cpp) and the sharded one over parallel HDF5
// (sharding/shard_checkpoint.cpp): root attributes, parameter names and their order, and the
// validation of a file's tensors against the model's. Both writers and readers use these, so the
// two cannot drift apart and a file written by one loads with the other.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "src/model/checkpoint.h"
#include "src/model/optim.h"
#include "src/io/h5.h"

namespace frugal {

// Fails (naming `where`) unless `name` can be an HDF5 dataset name below /params/.
void check_checkpoint_param_name(const std::string& name, const std::string& where);

// Fails naming `where` and the dataset unless the optimizer's state parts (Optimizer::state_parts)
// can be stored: dataset-safe names, each /optim/<state>/<tensor> once, and ranges inside the
// stored tensor with data where they are not empty. whole: a single process, which must hold and
// write every part entirely ([0, numel) both).
void check_optim_parts(const std::vector<OptimStatePart>& parts, const std::string& where, bool whole);

// The LoRA settings stored with a checkpoint: st.lora when st.has_lora, else the [lora] section of
// st.recipe_toml (the recipe stores it expanded and validated). Returns false when there are none.
// A recipe that is not valid TOML fails naming `where`.
bool checkpoint_lora(const TrainState& st, const std::string& where, LoraConfig* out);

// Writes every root attribute: format, the TrainState fields, param_order (= `order`, '\n'-joined)
// and, when lora is given, lora_rank/alpha/dropout/rslora/target_modules.
void write_checkpoint_attrs(h5::H5File& f, const TrainState& st, const std::vector<std::string>& order,
                            const LoraConfig* lora);

// Checks the 'format' attribute, then reads the root attributes into a TrainState.
TrainState read_checkpoint_state(const h5::H5File& f);

// The tensors under /params in the saved list order (param_order), validated against the group.
std::vector<std::string> checkpoint_param_names(const h5::H5File& f);

// Fails naming `path` and the tensor when the file's names (in_file) and the model's (wanted)
// differ: a missing tensor first, else an unexpected one.
void check_checkpoint_names(const std::string& path, const std::vector<std::string>& in_file,
                            const std::vector<std::string>& wanted);

// Fails naming `path` and the dataset unless dataset `ds` is float32 with exactly `shape`.
void check_checkpoint_tensor(const h5::H5File& f, const std::string& path, const std::string& ds,
                             const std::vector<int64_t>& shape);

}  // namespace frugal
