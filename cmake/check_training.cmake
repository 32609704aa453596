# CTest script: pre-training end to end through a dsx-<model> tool on the built-in corpus.
#   cmake -DTOOL=<dsx-model> -DWORK=<scratch folder> -DMAX_FINAL_LOSS=<nats> [-DPRECISION=f32|bf16|fp8]
#         -P check_training.cmake
# Runs 100 steps straight and 50 + 50 steps with --resume in --precision PRECISION (f32 by default), then
# requires: the last loss is below MAX_FINAL_LOSS and below the first, the balance loss and max load ratio
# are present and finite, the resumed run's losses equal the straight run's at every step (bit-identical
# JSON numbers), and the checkpoint records the policy's storage types (bf16: BF16 weights, F32 master
# weights; fp8: the same, with F8_E4M3 Linear GEMMs).
file(REMOVE_RECURSE "${WORK}")
if(NOT DEFINED PRECISION)
  set(PRECISION f32)
endif()
set(flags --lr 3e-3 --warmup 10 --decay 90 --mtp-switch-step 70 --batch 4 --seq 32 --seed 5 --precision ${PRECISION})

function(run)
  execute_process(COMMAND "${TOOL}" train ${ARGN} ${flags} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "train ${ARGN} failed (${rc}):\n${out}\n${err}")
  endif()
endfunction()

run(--steps 100 --out "${WORK}/straight")
run(--steps 50 --out "${WORK}/resumed")
run(--steps 100 --out "${WORK}/resumed" --resume)

function(read_losses dir out_losses)
  file(STRINGS "${dir}/metrics.jsonl" lines)
  set(losses "")
  foreach(line IN LISTS lines)
    string(JSON loss GET "${line}" loss)
    list(APPEND losses "${loss}")
  endforeach()
  set(${out_losses} "${losses}" PARENT_SCOPE)
endfunction()

read_losses("${WORK}/straight" straight)
read_losses("${WORK}/resumed" resumed)
list(LENGTH straight n)
if(NOT n EQUAL 100)
  message(FATAL_ERROR "expected 100 metrics lines, found ${n}")
endif()
if(NOT straight STREQUAL resumed)
  message(FATAL_ERROR "the resumed run's losses differ from the straight run's:\n${straight}\n${resumed}")
endif()

list(GET straight 0 first)
list(GET straight 99 last)
file(STRINGS "${WORK}/straight/metrics.jsonl" lines)
list(GET lines 99 final)
string(JSON balance GET "${final}" balance_loss)
string(JSON ratio GET "${final}" max_load_ratio)
foreach(value first last balance ratio)
  if(NOT "${${value}}" MATCHES "^[0-9.eE+-]+$")
    message(FATAL_ERROR "${value} is not a finite number: ${${value}}")
  endif()
endforeach()
if(NOT (last LESS first AND last LESS MAX_FINAL_LOSS))  # numeric comparisons
  message(FATAL_ERROR "the loss did not fall below ${MAX_FINAL_LOSS}: first ${first}, last ${last}")
endif()
file(READ "${WORK}/resumed/checkpoint/trainer_state.json" state)
string(JSON param_dtype GET "${state}" param_dtype)
string(JSON master_dtype GET "${state}" master_dtype)
string(JSON linear_dtype GET "${state}" linear_dtype)
if(PRECISION STREQUAL "bf16")
  set(expected "BF16/F32/BF16")
elseif(PRECISION STREQUAL "fp8")
  set(expected "BF16/F32/F8_E4M3")
else()
  set(expected "F32/none/F32")
endif()
if(NOT "${param_dtype}/${master_dtype}/${linear_dtype}" STREQUAL expected)
  message(FATAL_ERROR "--precision ${PRECISION}: the checkpoint holds weights/master/Linear GEMM inputs "
                      "${param_dtype}/${master_dtype}/${linear_dtype}, expected ${expected}")
endif()
message(STATUS "${PRECISION}: loss ${first} -> ${last}; balance_loss ${balance}; max_load_ratio ${ratio}; "
               "resume bit-identical; weights/master/Linear GEMM inputs ${param_dtype}/${master_dtype}/${linear_dtype}")
